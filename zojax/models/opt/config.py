"""The OPT config (all published sizes): pre-LN or post-LN (`do_layer_norm_before=False`,
OPT-350m), `project_in`/`project_out` when `word_embed_proj_dim != hidden_size`."""

from __future__ import annotations

import dataclasses

from zojax.models.base import HFTensor, hf_config_dict, refuse_unsupported, token_ids

POSITION_OFFSET = 2

UNSUPPORTED = {
    "activation_function": lambda v: v == "relu",
    "enable_bias": lambda v: v,
    "layer_norm_elementwise_affine": lambda v: v,
    "quantization_config": lambda v: not v,
}


@dataclasses.dataclass(frozen=True)
class OPTConfig:
    """An OPT architecture; field names follow transformers' `OPTConfig`."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    ffn_dim: int
    num_attention_heads: int
    max_position_embeddings: int
    word_embed_proj_dim: int
    do_layer_norm_before: bool = True
    remove_final_layer_norm: bool = False
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None

    model_type = "opt"

    @classmethod
    def from_hf(cls, hf_config) -> OPTConfig:
        """From a transformers config or its dict; raises ValueError on anything not implemented."""
        d = hf_config_dict(hf_config)
        if d.get("model_type") != "opt":
            raise ValueError(f"not an opt config: model_type={d.get('model_type')!r}")
        refuse_unsupported("opt", d, UNSUPPORTED)
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            num_hidden_layers=d["num_hidden_layers"],
            ffn_dim=d["ffn_dim"],
            num_attention_heads=d["num_attention_heads"],
            max_position_embeddings=d["max_position_embeddings"],
            word_embed_proj_dim=d.get("word_embed_proj_dim") or d["hidden_size"],
            do_layer_norm_before=d.get("do_layer_norm_before", True),
            remove_final_layer_norm=d.get("_remove_final_layer_norm", False),
            tie_word_embeddings=d.get("tie_word_embeddings", True),
            bos_token_id=token_ids(d.get("bos_token_id")),
            eos_token_id=token_ids(d.get("eos_token_id")),
            pad_token_id=d.get("pad_token_id"),
        )

    def to_hf(self) -> dict:
        """The transformers config.json contents."""
        d = dataclasses.asdict(self)
        d["_remove_final_layer_norm"] = d.pop("remove_final_layer_norm")
        eos = self.eos_token_id
        return {
            "model_type": "opt",
            "architectures": ["OPTForCausalLM"],
            **d,
            "eos_token_id": list(eos) if isinstance(eos, tuple) else eos,
            "activation_function": "relu",
            "enable_bias": True,
            "layer_norm_elementwise_affine": True,
        }

    @property
    def projects(self) -> bool:
        """Whether embeddings are projected in and out (`word_embed_proj_dim != hidden_size`)."""
        return self.word_embed_proj_dim != self.hidden_size

    @property
    def has_final_layer_norm(self) -> bool:
        return self.do_layer_norm_before and not self.remove_final_layer_norm

    def hf_tensors(self) -> list[HFTensor]:
        """The conversion table (see `zojax.models.opt.params`)."""
        from zojax.models.opt.params import hf_tensors

        return hf_tensors(self)

    @property
    def kv_shape(self) -> tuple[int, int]:
        return self.num_attention_heads, self.hidden_size // self.num_attention_heads

    def layer_windows(self) -> None:
        return None
