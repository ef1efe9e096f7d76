"""Qwen3 as `flax.nnx` modules: `LlamaForCausalLM` with per-head q/k RMSNorm."""

from zojax.models.llama.modeling import LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    """A Qwen3 causal LM (the LLaMA modules with `Qwen3Config`'s q/k norms)."""
