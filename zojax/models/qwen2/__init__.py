"""Qwen2 / Qwen2.5 family: the LLaMA modules and conversion table (`zojax.models.llama`) with
q/k/v biases and optional sliding-window layers."""

from zojax.models.qwen2.config import Qwen2Config
from zojax.models.qwen2.modeling import Qwen2ForCausalLM

__all__ = ["Qwen2Config", "Qwen2ForCausalLM"]
