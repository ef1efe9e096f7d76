"""Qwen2 / Qwen2.5 as `flax.nnx` modules: `LlamaForCausalLM` with q/k/v biases."""

from zojax.models.llama.modeling import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    """A Qwen2 causal LM (the LLaMA modules with `Qwen2Config`'s biases and windows)."""
