"""The LLaMA-family config: Llama 1/2/3.x and SmolLM2, and the flags that Mistral, Qwen2 and Qwen3
set on the same modules (q/k/v and output biases, MLP biases, q/k RMSNorm, sliding windows)."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from zojax.models.base import HFTensor, hf_config_dict, refuse_unsupported, token_ids

# config.json attribute -> which values zojax implements (others are refused, naming them).
UNSUPPORTED = {
    "hidden_act": lambda v: v == "silu",
    "rope_interleaved": lambda v: not v,
    "partial_rotary_factor": lambda v: v in (None, 1, 1.0),
    "quantization_config": lambda v: not v,
    "attn_logit_softcapping": lambda v: v is None,
    "final_logit_softcapping": lambda v: v is None,
    "pretraining_tp": lambda v: v in (None, 1),
    "use_mrope": lambda v: not v,
}
UNSUPPORTED_ROPE = {
    "rope_type": lambda v: v in ("default", "linear", "dynamic", "llama3"),
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
class LinearRopeScaling:
    """`linear` RoPE scaling: inverse frequencies divided by `factor` (position interpolation)."""

    factor: float


@dataclasses.dataclass(frozen=True)
class DynamicRopeScaling:
    """`dynamic` NTK scaling: for a call whose largest position p reaches past
    `max_position_embeddings` M, the base becomes `theta * (factor * (p + 1) / M - (factor - 1))
    ** (d / (d - 2))`. Computed per call, as transformers does on a fresh model (transformers
    also keeps the grown frequencies for later calls shorter than the longest seen)."""

    factor: float

    def inv_freq(self, theta: float, max_position_embeddings: int, dim: int, lengths) -> np.ndarray:
        """The inverse frequencies [len(lengths), dim / 2] for each sequence length past
        `max_position_embeddings`, computed on the host in transformers' float32 operations and
        order (`_compute_dynamic_ntk_parameters`), each one in float64 and rounded to float32;
        its power of the stretch has a float64 exponent, as torch's power of a 0-d tensor."""
        r = lambda x: np.asarray(x, np.float64).astype(np.float32).astype(np.float64)
        m = max_position_embeddings
        stretch = r(r(r(self.factor) * r(lengths)) / r(m)) - r(self.factor - 1)
        base = r(r(theta) * r(r(stretch) ** (dim / (dim - 2))))
        exponents = r(r(np.arange(0, dim, 2)) / r(dim))
        return (1.0 / r(base[:, None] ** exponents)).astype(np.float32)


RopeScaling = Llama3RopeScaling | LinearRopeScaling | DynamicRopeScaling


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """A LLaMA architecture; field names follow transformers' `LlamaConfig`.

    Flags beyond LLaMA's own (set by the Mistral, Qwen2 and Qwen3 configs): `qkv_bias`,
    `o_bias` (attention biases), `mlp_bias`, `qk_norm` (RMSNorm over each head of q and k,
    before RoPE), `sliding_window` (a query attends to the `sliding_window` latest positions,
    itself included) on the layers whose `layer_types` entry is 'sliding_attention' (every
    layer when `layer_types` is None).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None

    model_type = "llama"
    architecture = "LlamaForCausalLM"

    @classmethod
    def from_hf(cls, hf_config) -> LlamaConfig:
        """From a transformers config or its dict; raises ValueError on anything not implemented
        (a family's own attributes come from its `_fields`, what it refuses from `_unsupported`)."""
        d = hf_config_dict(hf_config)
        cls._check_type(d)
        refuse_unsupported(cls.model_type, d, cls._unsupported())
        return cls(**cls._fields(d))

    @classmethod
    def _unsupported(cls) -> dict:
        return UNSUPPORTED | {"sliding_window": lambda v: v is None, "use_sliding_window": lambda v: not v}

    @classmethod
    def _fields(cls, d: dict) -> dict:
        bias = bool(d.get("attention_bias", False))
        return cls._common(d) | dict(qkv_bias=bias, o_bias=bias, mlp_bias=bool(d.get("mlp_bias", False)))

    @classmethod
    def _check_type(cls, d):
        if d.get("model_type") != cls.model_type:
            raise ValueError(f"not a {cls.model_type} config: model_type={d.get('model_type')!r}")

    @classmethod
    def _common(cls, d: dict) -> dict:
        # transformers 5 keeps RoPE settings in `rope_parameters`; older configs use `rope_theta`
        # and `rope_scaling` at the top level.
        rope = {
            "rope_theta": d.get("rope_theta", 10000.0),
            **(d.get("rope_scaling") or {}),
            **(d.get("rope_parameters") or {}),
        }
        rope["rope_type"] = rope.get("rope_type", rope.get("type", "default"))
        refuse_unsupported(cls.model_type, rope, UNSUPPORTED_ROPE, prefix="rope_parameters.")
        scaling = {
            "default": lambda: None,
            "linear": lambda: LinearRopeScaling(float(rope["factor"])),
            "dynamic": lambda: DynamicRopeScaling(float(rope["factor"])),
            "llama3": lambda: Llama3RopeScaling(
                float(rope["factor"]),
                float(rope["low_freq_factor"]),
                float(rope["high_freq_factor"]),
                int(rope["original_max_position_embeddings"]),
            ),
        }[rope["rope_type"]]()
        heads = d["num_attention_heads"]
        return dict(
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
        return self._hf_common() | {
            "attention_bias": self.qkv_bias,
            "mlp_bias": self.mlp_bias,
        }

    def _hf_common(self) -> dict:
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if s := self.rope_scaling:
            kind = {Llama3RopeScaling: "llama3", LinearRopeScaling: "linear", DynamicRopeScaling: "dynamic"}
            rope |= {"rope_type": kind[type(s)], **dataclasses.asdict(s)}
        eos = self.eos_token_id
        keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings",
                "max_position_embeddings", "bos_token_id", "pad_token_id")
        return {
            "model_type": self.model_type,
            "architectures": [self.architecture],
            **{k: getattr(self, k) for k in keys},
            "rope_parameters": rope,
            "eos_token_id": list(eos) if isinstance(eos, tuple) else eos,
            "hidden_act": "silu",
        }

    def hf_tensors(self) -> list[HFTensor]:
        """The conversion table (see `zojax.models.llama.params`)."""
        from zojax.models.llama.params import hf_tensors

        return hf_tensors(self)

    @property
    def kv_shape(self) -> tuple[int, int]:
        return self.num_key_value_heads, self.head_dim

    def layer_windows(self) -> tuple[int, ...] | None:
        """Each layer's sliding window (0: none), or None when no layer has one."""
        if self.sliding_window is None:
            return None
        types = self.layer_types or ("sliding_attention",) * self.num_hidden_layers
        windows = tuple(self.sliding_window if t == "sliding_attention" else 0 for t in types)
        return windows if any(windows) else None

    def inv_freq(self, positions, length):
        """RoPE inverse frequencies [head_dim / 2] (float32), scaled as configured. `dynamic`
        scaling depends on the call's largest position (`positions`, traced), each one below
        `length` (static)."""
        d, s = self.head_dim, self.rope_scaling
        exponents = np.arange(0, d, 2, dtype=np.float32) / d
        inv = 1.0 / self.rope_theta ** exponents  # float32 in transformers' order: the same values
        if isinstance(s, DynamicRopeScaling):
            # The run-time sequence length max(positions) + 1 is one of 1..length: a host table
            # of the unscaled frequencies (row 0, lengths up to max_position_embeddings M) and
            # of each length in (M, length], whose row is read on device.
            m = self.max_position_embeddings
            if length <= m:
                return inv.astype(np.float32)
            table = np.concatenate([inv[None], s.inv_freq(self.rope_theta, m, d, np.arange(m + 1, length + 1))])
            return jnp.asarray(table)[jnp.clip(jnp.max(positions) + 1 - m, 0, length - m)]
        if isinstance(s, LinearRopeScaling):
            inv = inv / s.factor
        elif isinstance(s, Llama3RopeScaling):
            low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
            high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
            wavelen = 2 * math.pi / inv
            smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
                s.high_freq_factor - s.low_freq_factor
            )
            medium = (1 - smooth) * inv / s.factor + smooth * inv
            inv = np.where(wavelen > low_wavelen, inv / s.factor, np.where(wavelen < high_wavelen, inv, medium))
        return inv.astype(np.float32)
