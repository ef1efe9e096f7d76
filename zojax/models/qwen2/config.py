"""The Qwen2/Qwen2.5 config: LLaMA's modules with q/k/v biases and optional sliding windows."""

from __future__ import annotations

import dataclasses

from zojax.models.base import refuse_unsupported
from zojax.models.llama.config import UNSUPPORTED, LlamaConfig

LAYER_TYPES = ("full_attention", "sliding_attention")


def sliding_layers(cls, d: dict) -> dict:
    """`sliding_window` and `layer_types` as transformers' Qwen2/Qwen3 configs derive them: the
    window only with `use_sliding_window`, on layers `max_window_layers` and up unless
    `layer_types` says otherwise. Unknown layer types are refused."""
    n = d["num_hidden_layers"]
    window = d.get("sliding_window") if d.get("use_sliding_window") else None
    types = d.get("layer_types")
    if types is None:
        low = d.get("max_window_layers", 28)
        types = ["sliding_attention" if window is not None and i >= low else "full_attention" for i in range(n)]
    refuse_unsupported(cls.model_type, {"layer_types": types}, {"layer_types": lambda v: set(v) <= set(LAYER_TYPES)})
    if len(types) != n:
        raise ValueError(f"{cls.model_type} config: layer_types has {len(types)} entries for {n} layers")
    return {"sliding_window": window, "layer_types": tuple(types) if window is not None else None}


def hf_sliding_layers(c) -> dict:
    n = c.num_hidden_layers
    return {
        "use_sliding_window": c.sliding_window is not None,
        "sliding_window": c.sliding_window,
        "max_window_layers": n,
        "layer_types": list(c.layer_types or ("full_attention",) * n),
    }


@dataclasses.dataclass(frozen=True)
class Qwen2Config(LlamaConfig):
    """A Qwen2 / Qwen2.5 architecture: `LlamaConfig` fields with `qkv_bias=True` (q, k and v
    projections have biases, the output projection none), tied or untied embeddings."""

    qkv_bias: bool = True
    model_type = "qwen2"
    architecture = "Qwen2ForCausalLM"

    @classmethod
    def _unsupported(cls) -> dict:
        return UNSUPPORTED

    @classmethod
    def _fields(cls, d: dict) -> dict:
        return cls._common(d) | dict(qkv_bias=True, **sliding_layers(cls, d))

    def to_hf(self) -> dict:
        return self._hf_common() | hf_sliding_layers(self)
