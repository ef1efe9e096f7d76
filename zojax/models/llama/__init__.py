"""LLaMA family: Llama 1/2/3.x, SmolLM2 (and the modules Mistral, Qwen2 and Qwen3 reuse)."""

from zojax.models.llama.config import (
    DynamicRopeScaling,
    LinearRopeScaling,
    Llama3RopeScaling,
    LlamaConfig,
)
from zojax.models.llama.modeling import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaMLP

__all__ = [
    "DynamicRopeScaling",
    "LinearRopeScaling",
    "Llama3RopeScaling",
    "LlamaAttention",
    "LlamaConfig",
    "LlamaDecoderLayer",
    "LlamaForCausalLM",
    "LlamaMLP",
]
