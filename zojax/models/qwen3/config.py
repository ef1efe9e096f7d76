"""The Qwen3 config: LLaMA's modules with per-head q/k RMSNorm and an explicit head_dim."""

from __future__ import annotations

import dataclasses

from zojax.models.llama.config import UNSUPPORTED, LlamaConfig
from zojax.models.qwen2.config import hf_sliding_layers, sliding_layers


@dataclasses.dataclass(frozen=True)
class Qwen3Config(LlamaConfig):
    """A Qwen3 (dense) architecture: `LlamaConfig` fields with `qk_norm=True`; `attention_bias`
    puts biases on all four attention projections."""

    qk_norm: bool = True
    model_type = "qwen3"
    architecture = "Qwen3ForCausalLM"

    @classmethod
    def _unsupported(cls) -> dict:
        return UNSUPPORTED

    @classmethod
    def _fields(cls, d: dict) -> dict:
        bias = bool(d.get("attention_bias", False))
        common = cls._common(d | {"head_dim": d.get("head_dim") or 128})  # transformers' Qwen3 default
        return common | dict(qkv_bias=bias, o_bias=bias, qk_norm=True, **sliding_layers(cls, d))

    def to_hf(self) -> dict:
        return self._hf_common() | {"attention_bias": self.qkv_bias} | hf_sliding_layers(self)
