"""LLaMA-family decoders as `flax.nnx` modules: RMSNorm, SwiGLU MLP, rotate-half RoPE, grouped-query
attention; with a config's flags, also Mistral (sliding window), Qwen2 (q/k/v biases) and Qwen3
(q/k RMSNorm). Parameter names follow transformers' (see `zojax.models.llama.params`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from zojax.models.base import forward
from zojax.models.llama.config import LlamaConfig
from zojax.models.nn import Dense, Embed, RMSNorm, attention, rope_tables, rotate, stacked


class LlamaAttention(nnx.Module):
    """q/k/v projections (optional biases, optional per-head q/k RMSNorm), RoPE, output projection."""

    def __init__(self, c: LlamaConfig, *, dtype=jnp.float32, rngs=None):
        h, q, kv = c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        self.q_proj = Dense(h, q, ("embed", "heads"), bias=c.qkv_bias, dtype=dtype, rngs=rngs)
        self.k_proj = Dense(h, kv, ("embed", "heads"), bias=c.qkv_bias, dtype=dtype, rngs=rngs)
        self.v_proj = Dense(h, kv, ("embed", "heads"), bias=c.qkv_bias, dtype=dtype, rngs=rngs)
        self.o_proj = Dense(q, h, ("heads", "embed"), bias=c.o_bias, dtype=dtype, rngs=rngs)
        norm = lambda: RMSNorm(c.head_dim, c.rms_norm_eps, dtype=dtype, rngs=rngs) if c.qk_norm else None
        self.q_norm, self.k_norm = norm(), norm()
        self.shape = (c.num_attention_heads, c.num_key_value_heads, c.head_dim)

    def qkv(self, x, rope):
        """q [B, T, N, D], k, v [B, T, K, D] (q and k rotated)."""
        b, t, _ = x.shape
        n, kh, d = self.shape
        q = self.q_proj(x).reshape(b, t, n, d)
        k = self.k_proj(x).reshape(b, t, kh, d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return rotate(q, rope), rotate(k, rope), self.v_proj(x).reshape(b, t, kh, d)


class LlamaMLP(nnx.Module):
    """`down(silu(gate(x)) * up(x))`."""

    def __init__(self, c: LlamaConfig, *, dtype=jnp.float32, rngs=None):
        h, f, b = c.hidden_size, c.intermediate_size, c.mlp_bias
        self.gate_proj = Dense(h, f, ("embed", "mlp"), bias=b, dtype=dtype, rngs=rngs)
        self.up_proj = Dense(h, f, ("embed", "mlp"), bias=b, dtype=dtype, rngs=rngs)
        self.down_proj = Dense(f, h, ("mlp", "embed"), bias=b, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nnx.Module):
    """Pre-norm block: `h + attn(norm(h))`, then `h + mlp(norm(h))`. The attention itself (with
    masks, KV cache and prefixes) is run by `zojax.models.base` between `qkv` and `finish`, with
    scores scaled by `attention_scale` (None: `head_dim ** -0.5`)."""

    attention_scale = None

    def __init__(self, c: LlamaConfig, *, dtype=jnp.float32, rngs=None):
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, dtype=dtype, rngs=rngs)
        self.self_attn = LlamaAttention(c, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, dtype=dtype, rngs=rngs)
        self.mlp = LlamaMLP(c, dtype=dtype, rngs=rngs)
        self.prefix = nnx.data(None)

    def qkv(self, h, rope):
        return self.self_attn.qkv(self.input_layernorm(h), rope)

    def finish(self, h, o):
        h = h + self.self_attn.o_proj(o)
        return h + self.mlp(self.post_attention_layernorm(h))

    def __call__(self, h, rope, mask):
        """The layer on its own: `h` [B, T, H], `rope` from `LlamaForCausalLM.embed`, `mask`
        [B, T, T] (True = may attend)."""
        return self.finish(h, attention(*self.qkv(h, rope), mask, self.attention_scale))


class LlamaForCausalLM(nnx.Module):
    """A LLaMA-family causal LM: `model(input_ids, attention_mask=None, *, param_hook=None)` ->
    float32 logits (see `zojax.models.forward`). Layers are stacked (`nnx.vmap`) and scanned."""

    def __init__(self, config: LlamaConfig, *, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        c = self.config = config
        self.embed_tokens = Embed(c.vocab_size, c.hidden_size, dtype=dtype, rngs=rngs)
        self.layers = stacked(c.num_hidden_layers, lambda r: LlamaDecoderLayer(c, dtype=dtype, rngs=r), rngs)
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, dtype=dtype, rngs=rngs)
        self.lm_head = None if c.tie_word_embeddings else Dense(
            c.hidden_size, c.vocab_size, ("embed", "vocab"), dtype=dtype, rngs=rngs
        )

    def embed(self, input_ids, positions, tables, length=None):
        """Token embeddings and the RoPE tables the layers use (positions below `length`,
        default T)."""
        h = self.embed_tokens(input_ids, tables.get("embed_tokens"))
        inv_freq = self.config.inv_freq(positions, length or positions.shape[-1])
        return h, rope_tables(inv_freq, positions, h.dtype)

    def logits(self, h, tables):
        x = self.norm(h)
        if self.lm_head is None:
            return self.embed_tokens.attend(x, tables.get("embed_tokens"))
        return jnp.einsum("btd,dv->btv", x, self.lm_head.kernel[...], preferred_element_type=jnp.float32)

    def __call__(self, input_ids, attention_mask=None, *, param_hook=None, at=None):
        return forward(self, input_ids, attention_mask, param_hook=param_hook, at=at)
