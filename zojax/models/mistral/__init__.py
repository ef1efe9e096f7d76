"""Mistral family: the LLaMA modules and conversion table (`zojax.models.llama`) with a
sliding attention window."""

from zojax.models.mistral.config import MistralConfig
from zojax.models.mistral.modeling import MistralForCausalLM

__all__ = ["MistralConfig", "MistralForCausalLM"]
