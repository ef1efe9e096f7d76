"""The Mistral config: LLaMA's modules with a sliding attention window on every layer."""

from __future__ import annotations

import dataclasses

from zojax.models.llama.config import UNSUPPORTED, LlamaConfig


@dataclasses.dataclass(frozen=True)
class MistralConfig(LlamaConfig):
    """A Mistral architecture: `LlamaConfig` fields; `sliding_window` (None: full attention)
    applies to every layer, as in transformers' `MistralModel`."""

    model_type = "mistral"
    architecture = "MistralForCausalLM"

    @classmethod
    def _unsupported(cls) -> dict:
        return UNSUPPORTED

    @classmethod
    def _fields(cls, d: dict) -> dict:
        return cls._common(d) | dict(sliding_window=d.get("sliding_window"))

    def to_hf(self) -> dict:
        return self._hf_common() | {"sliding_window": self.sliding_window}
