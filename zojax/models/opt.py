"""OPT decoders (all published sizes): learned positions (offset 2), pre-LN or post-LN
(`do_layer_norm_before=False`, OPT-350m), `project_in`/`project_out` when
`word_embed_proj_dim != hidden_size`, ReLU MLP.

Parameters (Flax layout; everything under 'layers' has a leading layer axis):

    embed_tokens/embedding [V, P]       embed_positions/embedding [max_pos + 2, H]
    project_in/kernel [P, H], project_out/kernel [H, P]     (only when P != H)
    final_layer_norm/{scale,bias}       (pre-LN only)       lm_head/kernel [P, V] (untied only)
    layers/self_attn/{q,k,v,out}_proj/{kernel,bias}         layers/fc1, layers/fc2
    layers/self_attn_layer_norm/{scale,bias}                layers/final_layer_norm
"""

from __future__ import annotations

import dataclasses

import jax

from zojax.models.base import (
    HFTensor,
    dense,
    hf_config_dict,
    hf_linear,
    hf_norm,
    layer_norm,
    lookup,
    refuse_unsupported,
    token_ids,
    unembed,
)

POSITION_OFFSET = 2

_UNSUPPORTED = {
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

    @classmethod
    def from_hf(cls, hf_config) -> OPTConfig:
        """From a transformers config or its dict; raises ValueError on anything not implemented."""
        d = hf_config_dict(hf_config)
        if d.get("model_type") != "opt":
            raise ValueError(f"not an opt config: model_type={d.get('model_type')!r}")
        refuse_unsupported("opt", d, _UNSUPPORTED)
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
        """The conversion table."""
        h, f, p = self.hidden_size, self.ffn_dim, self.word_embed_proj_dim
        dec, lay = "model.decoder.", "model.decoder.layers.{i}."
        table = [
            HFTensor(dec + "embed_tokens.weight", ("embed_tokens", "embedding"), (self.vocab_size, p)),
            HFTensor(
                dec + "embed_positions.weight",
                ("embed_positions", "embedding"),
                (self.max_position_embeddings + POSITION_OFFSET, h),
            ),
        ]
        if self.projects:
            table += hf_linear(dec + "project_in", ("project_in",), p, h)
            table += hf_linear(dec + "project_out", ("project_out",), h, p)
        if self.has_final_layer_norm:
            table += hf_norm(dec + "final_layer_norm", ("final_layer_norm",), h, bias=True)
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            table += hf_linear(lay + "self_attn." + name, ("layers", "self_attn", name), h, h, bias=True)
        table += hf_norm(lay + "self_attn_layer_norm", ("layers", "self_attn_layer_norm"), h, bias=True)
        table += hf_linear(lay + "fc1", ("layers", "fc1"), h, f, bias=True)
        table += hf_linear(lay + "fc2", ("layers", "fc2"), f, h, bias=True)
        table += hf_norm(lay + "final_layer_norm", ("layers", "final_layer_norm"), h, bias=True)
        if not self.tie_word_embeddings:
            table += hf_linear("lm_head", ("lm_head",), p, self.vocab_size)
        return table

    @property
    def kv_shape(self) -> tuple[int, int]:
        return self.num_attention_heads, self.hidden_size // self.num_attention_heads

    def embed(self, p, input_ids, positions):
        x = lookup(p, "embed_tokens", input_ids)
        if self.projects:
            x = dense(x, p["project_in"])
        return x + lookup(p, "embed_positions", positions + POSITION_OFFSET), None

    def qkv(self, lp, h, aux):
        b, t, _ = h.shape
        x = layer_norm(h, lp["self_attn_layer_norm"]) if self.do_layer_norm_before else h
        a = lp["self_attn"]
        return tuple(dense(x, a[n]).reshape(b, t, *self.kv_shape) for n in ("q_proj", "k_proj", "v_proj"))

    def finish(self, lp, h, o):
        h = h + dense(o, lp["self_attn"]["out_proj"])
        if not self.do_layer_norm_before:
            h = layer_norm(h, lp["self_attn_layer_norm"])
        x = layer_norm(h, lp["final_layer_norm"]) if self.do_layer_norm_before else h
        h = h + dense(jax.nn.relu(dense(x, lp["fc1"])), lp["fc2"])
        return h if self.do_layer_norm_before else layer_norm(h, lp["final_layer_norm"])

    def logits(self, p, h):
        if self.has_final_layer_norm:
            h = layer_norm(h, p["final_layer_norm"])
        if self.projects:
            h = dense(h, p["project_out"])
        return unembed(h, p, self.tie_word_embeddings)
