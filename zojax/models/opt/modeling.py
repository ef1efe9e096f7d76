"""OPT decoders as `flax.nnx` modules: learned positions (offset 2), pre-LN or post-LN, optional
`project_in`/`project_out`, ReLU MLP. Parameter names follow transformers' (see
`zojax.models.opt.params`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from zojax.models.base import forward
from zojax.models.nn import Dense, Embed, LayerNorm, attention, stacked
from zojax.models.opt.config import POSITION_OFFSET, OPTConfig


class OPTAttention(nnx.Module):
    """q/k/v/out projections with biases; q is scaled by `head_dim ** -0.5` after its projection
    (as in transformers' OPT), so the scores are not scaled again."""

    def __init__(self, c: OPTConfig, *, dtype=jnp.float32, rngs=None):
        h = c.hidden_size
        dense = lambda names: Dense(h, h, names, bias=True, dtype=dtype, rngs=rngs)
        self.q_proj, self.k_proj, self.v_proj = (dense(("embed", "heads")) for _ in range(3))
        self.out_proj = dense(("heads", "embed"))
        self.kv_shape = c.kv_shape

    def qkv(self, x):
        b, t, _ = x.shape
        q = self.q_proj(x) * self.kv_shape[1] ** -0.5
        return tuple(y.reshape(b, t, *self.kv_shape) for y in (q, self.k_proj(x), self.v_proj(x)))


class OPTDecoderLayer(nnx.Module):
    """Pre-LN (`h + attn(ln(h))`, `h + fc2(relu(fc1(ln(h))))`) or post-LN (the norms after each
    residual sum). The attention itself is run by `zojax.models.base` between `qkv` and `finish`,
    with scores scaled by `attention_scale` (1: q comes scaled from `qkv`)."""

    attention_scale = 1.0

    def __init__(self, c: OPTConfig, *, dtype=jnp.float32, rngs=None):
        h = c.hidden_size
        self.self_attn = OPTAttention(c, dtype=dtype, rngs=rngs)
        self.self_attn_layer_norm = LayerNorm(h, dtype=dtype, rngs=rngs)
        self.fc1 = Dense(h, c.ffn_dim, ("embed", "mlp"), bias=True, dtype=dtype, rngs=rngs)
        self.fc2 = Dense(c.ffn_dim, h, ("mlp", "embed"), bias=True, dtype=dtype, rngs=rngs)
        self.final_layer_norm = LayerNorm(h, dtype=dtype, rngs=rngs)
        self.pre_ln = c.do_layer_norm_before
        self.prefix = nnx.data(None)

    def qkv(self, h, aux):
        return self.self_attn.qkv(self.self_attn_layer_norm(h) if self.pre_ln else h)

    def finish(self, h, o):
        h = h + self.self_attn.out_proj(o)
        if not self.pre_ln:
            h = self.self_attn_layer_norm(h)
        x = self.final_layer_norm(h) if self.pre_ln else h
        h = h + self.fc2(jax.nn.relu(self.fc1(x)))
        return h if self.pre_ln else self.final_layer_norm(h)

    def __call__(self, h, mask):
        """The layer on its own: `h` [B, T, H], `mask` [B, T, T] (True = may attend)."""
        return self.finish(h, attention(*self.qkv(h, None), mask, self.attention_scale))


class OPTForCausalLM(nnx.Module):
    """An OPT causal LM: `model(input_ids, attention_mask=None, *, param_hook=None)` -> float32
    logits (see `zojax.models.forward`). Layers are stacked (`nnx.vmap`) and scanned."""

    def __init__(self, config: OPTConfig, *, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        c = self.config = config
        h, p = c.hidden_size, c.word_embed_proj_dim
        self.embed_tokens = Embed(c.vocab_size, p, dtype=dtype, rngs=rngs)
        self.embed_positions = Embed(c.max_position_embeddings + POSITION_OFFSET, h, (None, "embed"), dtype=dtype,
                                     rngs=rngs)
        self.project_in = Dense(p, h, (None, "embed"), dtype=dtype, rngs=rngs) if c.projects else None
        self.project_out = Dense(h, p, ("embed", None), dtype=dtype, rngs=rngs) if c.projects else None
        self.final_layer_norm = LayerNorm(h, dtype=dtype, rngs=rngs) if c.has_final_layer_norm else None
        self.layers = stacked(c.num_hidden_layers, lambda r: OPTDecoderLayer(c, dtype=dtype, rngs=r), rngs)
        self.lm_head = None if c.tie_word_embeddings else Dense(p, c.vocab_size, ("embed", "vocab"), dtype=dtype,
                                                                rngs=rngs)

    def embed(self, input_ids, positions, tables, length=None):
        x = self.embed_tokens(input_ids, tables.get("embed_tokens"))
        if self.project_in is not None:
            x = self.project_in(x)
        return x + self.embed_positions(positions + POSITION_OFFSET, tables.get("embed_positions")), None

    def logits(self, h, tables):
        if self.final_layer_norm is not None:
            h = self.final_layer_norm(h)
        if self.project_out is not None:
            h = self.project_out(h)
        if self.lm_head is None:
            return self.embed_tokens.attend(h, tables.get("embed_tokens"))
        return jnp.einsum("btd,dv->btv", h, self.lm_head.kernel[...], preferred_element_type=jnp.float32)

    def __call__(self, input_ids, attention_mask=None, *, param_hook=None, at=None):
        return forward(self, input_ids, attention_mask, param_hook=param_hook, at=at)
