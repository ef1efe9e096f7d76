"""Mistral as `flax.nnx` modules: `LlamaForCausalLM` with `MistralConfig`'s sliding window."""

from zojax.models.llama.modeling import LlamaForCausalLM


class MistralForCausalLM(LlamaForCausalLM):
    """A Mistral causal LM (the LLaMA modules; every layer attends within `sliding_window`)."""
