"""LLaMA-family decoders (Llama 1/2/3.x, SmolLM2): RMSNorm, SwiGLU, rotate-half RoPE, GQA.

Parameters (Flax layout; everything under 'layers' has a leading layer axis):

    embed_tokens/embedding [V, H]          norm/scale [H]          lm_head/kernel [H, V] (untied only)
    layers/input_layernorm/scale           layers/post_attention_layernorm/scale
    layers/self_attn/{q,k,v,o}_proj/kernel layers/mlp/{gate,up,down}_proj/kernel
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from zojax.models.base import (
    HFTensor,
    dense,
    hf_config_dict,
    hf_linear,
    hf_norm,
    lookup,
    refuse_unsupported,
    rms_norm,
    token_ids,
    unembed,
)

_UNSUPPORTED = {
    "hidden_act": lambda v: v == "silu",
    "attention_bias": lambda v: not v,
    "mlp_bias": lambda v: not v,
    "rope_interleaved": lambda v: not v,
    "partial_rotary_factor": lambda v: v in (None, 1, 1.0),
    "sliding_window": lambda v: v is None,
    "use_sliding_window": lambda v: not v,
    "quantization_config": lambda v: not v,
}
_UNSUPPORTED_ROPE = {
    "rope_type": lambda v: v in ("default", "llama3"),
    "partial_rotary_factor": lambda v: v in (None, 1, 1.0),
}


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
    """The `llama3` RoPE frequency scaling of Llama 3.1/3.2."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """A LLaMA architecture; field names follow transformers' `LlamaConfig`."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Llama3RopeScaling | None = None
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None

    @classmethod
    def from_hf(cls, hf_config) -> LlamaConfig:
        """From a transformers config or its dict; raises ValueError on anything not implemented."""
        d = hf_config_dict(hf_config)
        if d.get("model_type") != "llama":
            raise ValueError(f"not a llama config: model_type={d.get('model_type')!r}")
        refuse_unsupported("llama", d, _UNSUPPORTED)
        # transformers 5 keeps RoPE settings in `rope_parameters`; older configs use `rope_theta`
        # and `rope_scaling` at the top level.
        rope = {
            "rope_theta": d.get("rope_theta", 10000.0),
            **(d.get("rope_scaling") or {}),
            **(d.get("rope_parameters") or {}),
        }
        rope["rope_type"] = rope.get("rope_type", rope.get("type", "default"))
        refuse_unsupported("llama", rope, _UNSUPPORTED_ROPE, prefix="rope_parameters.")
        scaling = None
        if rope["rope_type"] == "llama3":
            scaling = Llama3RopeScaling(
                float(rope["factor"]),
                float(rope["low_freq_factor"]),
                float(rope["high_freq_factor"]),
                int(rope["original_max_position_embeddings"]),
            )
        heads = d["num_attention_heads"]
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope["rope_theta"]),
            rope_scaling=scaling,
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            bos_token_id=token_ids(d.get("bos_token_id")),
            eos_token_id=token_ids(d.get("eos_token_id")),
            pad_token_id=d.get("pad_token_id"),
        )

    def to_hf(self) -> dict:
        """The transformers config.json contents."""
        d = dataclasses.asdict(self)
        rope = {"rope_type": "default", "rope_theta": d.pop("rope_theta")}
        if scaling := d.pop("rope_scaling"):
            rope |= {"rope_type": "llama3", **scaling}
        eos = self.eos_token_id
        return {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            **d,
            "rope_parameters": rope,
            "eos_token_id": list(eos) if isinstance(eos, tuple) else eos,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
        }

    def hf_tensors(self) -> list[HFTensor]:
        """The conversion table."""
        h, v, f = self.hidden_size, self.vocab_size, self.intermediate_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        lay, att, mlp = "model.layers.{i}.", ("layers", "self_attn"), ("layers", "mlp")
        table = [
            HFTensor("model.embed_tokens.weight", ("embed_tokens", "embedding"), (v, h)),
            *hf_norm(lay + "input_layernorm", ("layers", "input_layernorm"), h),
            *hf_linear(lay + "self_attn.q_proj", (*att, "q_proj"), h, q),
            *hf_linear(lay + "self_attn.k_proj", (*att, "k_proj"), h, kv),
            *hf_linear(lay + "self_attn.v_proj", (*att, "v_proj"), h, kv),
            *hf_linear(lay + "self_attn.o_proj", (*att, "o_proj"), q, h),
            *hf_norm(lay + "post_attention_layernorm", ("layers", "post_attention_layernorm"), h),
            *hf_linear(lay + "mlp.gate_proj", (*mlp, "gate_proj"), h, f),
            *hf_linear(lay + "mlp.up_proj", (*mlp, "up_proj"), h, f),
            *hf_linear(lay + "mlp.down_proj", (*mlp, "down_proj"), f, h),
            *hf_norm("model.norm", ("norm",), h),
        ]
        if not self.tie_word_embeddings:
            table += hf_linear("lm_head", ("lm_head",), h, v)
        return table

    @property
    def kv_shape(self) -> tuple[int, int]:
        return self.num_key_value_heads, self.head_dim

    def inv_freq(self) -> np.ndarray:
        """RoPE inverse frequencies [head_dim / 2] (float32), with llama3 scaling if configured."""
        d = self.head_dim
        inv = 1.0 / self.rope_theta ** (np.arange(0, d, 2, dtype=np.float32) / d)
        if s := self.rope_scaling:
            low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
            high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
            wavelen = 2 * math.pi / inv
            smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
                s.high_freq_factor - s.low_freq_factor
            )
            medium = (1 - smooth) * inv / s.factor + smooth * inv
            inv = np.where(
                wavelen > low_wavelen, inv / s.factor, np.where(wavelen < high_wavelen, inv, medium)
            )
        return inv.astype(np.float32)

    def embed(self, p, input_ids, positions):
        h = lookup(p, "embed_tokens", input_ids)
        angles = positions[..., None].astype(jnp.float32) * self.inv_freq()
        angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
        return h, (jnp.cos(angles).astype(h.dtype), jnp.sin(angles).astype(h.dtype))

    def qkv(self, lp, h, rope):
        b, t, _ = h.shape
        x = rms_norm(h, lp["input_layernorm"]["scale"], self.rms_norm_eps)
        a = lp["self_attn"]
        q = dense(x, a["q_proj"]).reshape(b, t, self.num_attention_heads, self.head_dim)
        k = dense(x, a["k_proj"]).reshape(b, t, self.num_key_value_heads, self.head_dim)
        v = dense(x, a["v_proj"]).reshape(b, t, self.num_key_value_heads, self.head_dim)
        return _rotate(q, rope), _rotate(k, rope), v

    def finish(self, lp, h, o):
        h = h + dense(o, lp["self_attn"]["o_proj"])
        x = rms_norm(h, lp["post_attention_layernorm"]["scale"], self.rms_norm_eps)
        m = lp["mlp"]
        return h + dense(jax.nn.silu(dense(x, m["gate_proj"])) * dense(x, m["up_proj"]), m["down_proj"])

    def logits(self, p, h):
        x = rms_norm(h, p["norm"]["scale"], self.rms_norm_eps)
        return unembed(x, p, self.tie_word_embeddings)


def _rotate(x, rope):
    """Rotate-half RoPE: x * cos + [-x2, x1] * sin, on [B, T, heads, D]."""
    cos, sin = rope
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin
