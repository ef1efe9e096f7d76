"""Qwen3 (dense) family: the LLaMA modules and conversion table (`zojax.models.llama`) with
per-head q/k RMSNorm."""

from zojax.models.qwen3.config import Qwen3Config
from zojax.models.qwen3.modeling import Qwen3ForCausalLM

__all__ = ["Qwen3Config", "Qwen3ForCausalLM"]
