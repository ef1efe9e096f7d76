"""Layers shared by the model families, as `flax.nnx` modules, and the attention math.

Parameters carry logical axis names (`nnx.Param(..., out_sharding=...)`), mapped to a device
mesh by `zojax.sharding.LOGICAL_RULES`:

    vocab   vocabulary rows of an embedding table or columns of an untied head
    embed   the model width (hidden size; OPT's `word_embed_proj_dim` for its projected tables)
    heads   attention projections' flattened heads (q/k/v output, o input)
    mlp     the MLP's intermediate size
    norm    a norm's scale or bias, a bias vector (replicated)
    layers  the leading axis of a stacked (scanned) layer's parameters (replicated)
    lora    a LoRA rank; prefix  prefix-tuning tokens; kv_heads, head_dim  a key/value shape

A `Dense` may hold LoRA factors `lora_a` [in, r] and `lora_b` [r, out] (`nnx.LoRAParam`, see
`zojax.peft`): it then computes `x @ kernel + (x @ lora_a) @ lora_b (+ bias)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Rows = Callable[[jax.Array], jax.Array]  # rows `ids` of a table, as a parameter hook turns them


def param(rngs: nnx.Rngs | None, init, shape, dtype, names: Sequence[str | None], cls=nnx.Param):
    """A parameter of `shape` from `init(key, shape, dtype)` with logical axis `names`."""
    key = rngs.params() if rngs is not None else jax.random.key(0)
    return cls(init(key, tuple(shape), dtype), out_sharding=tuple(names), eager_sharding=False)


def _normal(std):
    return nnx.initializers.normal(std)


class Dense(nnx.Module):
    """`x @ kernel [in, out] (+ bias [out])`, Flax layout (the transpose of a torch Linear)."""

    def __init__(self, n_in, n_out, names, *, bias=False, dtype=jnp.float32, std=0.02, rngs=None):
        self.kernel = param(rngs, _normal(std), (n_in, n_out), dtype, names)
        self.bias = param(rngs, nnx.initializers.zeros, (n_out,), dtype, ("norm",)) if bias else None
        self.lora_a = nnx.data(None)
        self.lora_b = nnx.data(None)

    def __call__(self, x):
        y = x @ self.kernel[...]
        if self.lora_a is not None:
            y = y + (x @ self.lora_a[...]) @ self.lora_b[...]
        return y if self.bias is None else y + self.bias[...]


class Embed(nnx.Module):
    """A table `embedding` [N, H]: rows for ids, and (tied) logits `h @ embedding.T`."""

    def __init__(self, n, features, names=("vocab", "embed"), *, dtype=jnp.float32, std=0.02, rngs=None):
        self.embedding = param(rngs, _normal(std), (n, features), dtype, names)

    def __call__(self, ids, rows: Rows | None = None):
        """`embedding[ids]`, or `rows(ids)` when the table is read through a parameter hook."""
        return self.embedding[...][ids] if rows is None else rows(ids)

    def attend(self, h, rows: Rows | None = None, chunk: int = 8192):
        """Float32 logits `h @ embedding.T`. A table read through a hook's `rows` is used `chunk`
        rows at a time, so its perturbed rows exist for one chunk only."""
        table = self.embedding[...]
        if rows is None:
            return jnp.einsum("btd,vd->btv", h, table, preferred_element_type=jnp.float32)
        vocab = table.shape[0]
        chunk = min(chunk, vocab)

        def part(start, size):
            return jnp.einsum("btd,vd->btv", h, rows(start + jnp.arange(size)), preferred_element_type=jnp.float32)

        n, rest = divmod(vocab, chunk)
        logits = jnp.zeros((*h.shape[:2], vocab), jnp.float32)
        fill = lambda i, out: jax.lax.dynamic_update_slice_in_dim(out, part(i * chunk, chunk), i * chunk, axis=2)
        logits = jax.lax.fori_loop(0, n, fill, logits)
        return logits.at[..., n * chunk :].set(part(n * chunk, rest)) if rest else logits


class RMSNorm(nnx.Module):
    """`x / rms(x) * scale`, statistics in float32, cast back before the scale (as transformers)."""

    def __init__(self, dim, eps, *, dtype=jnp.float32, rngs=None):
        self.scale = param(rngs, nnx.initializers.ones, (dim,), dtype, ("norm",))
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return x32.astype(x.dtype) * self.scale[...]


class LayerNorm(nnx.Module):
    """LayerNorm with `scale` and `bias`, statistics in float32."""

    def __init__(self, dim, eps=1e-5, *, dtype=jnp.float32, rngs=None):
        self.scale = param(rngs, nnx.initializers.ones, (dim,), dtype, ("norm",))
        self.bias = param(rngs, nnx.initializers.zeros, (dim,), dtype, ("norm",))
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        return ((x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]).astype(x.dtype)


class Prefix(nnx.Module):
    """Prefix-tuning keys and values `[P, K, D]` of one attention layer (see `zojax.peft.prefix`)."""

    def __init__(self, key, value):
        names = ("prefix", "kv_heads", "head_dim")
        self.key = nnx.Param(key, out_sharding=names, eager_sharding=False)
        self.value = nnx.Param(value, out_sharding=names, eager_sharding=False)


def stacked(n_layers: int, make: Callable[[nnx.Rngs], nnx.Module], rngs: nnx.Rngs | None) -> nnx.Module:
    """`make(rngs)` for `n_layers` layers, parameters stacked on a leading 'layers' axis."""

    @nnx.split_rngs(splits=n_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def build(rngs):
        return make(rngs)

    return build(rngs if rngs is not None else nnx.Rngs(0))


def attention(q, k, v, mask, scale=None):
    """Softmax attention `softmax(q k^T * scale + mask) v` with grouped queries, through
    `jax.nn.dot_product_attention`.

    q [B, T, N, D], k, v [B, S, K, D] (K divides N), mask [B, T, S] (True = may attend), `scale`
    None for `D ** -0.5` -> [B, T, N * D] in v's dtype. Scores and the softmax are float32 for
    16-bit inputs too. A query with nothing to attend to (a padding row) attends to every key
    instead, so its output is finite and cannot poison later layers.

    16-bit inputs on a single GPU go to cuDNN's fused attention where it takes them (cuDNN needs
    fp16/bf16 and a head size it fuses); everything else runs XLA's implementation: float32 on
    GPU, and meshes of several devices, where cuDNN's partitioning rules (no sharded head or
    sequence dimension) would fail at compile time, past any fallback. `implementation=None`
    in jax 0.10 always means XLA.
    """
    b, t, n, d = q.shape
    dtype = v.dtype
    mask = (mask | ~jnp.any(mask, axis=-1, keepdims=True))[:, None]  # [B, 1, T, S]
    gpu = jax.default_backend() == "gpu"
    if q.dtype in (jnp.bfloat16, jnp.float16) and gpu and jax.device_count() == 1:
        try:
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="cudnn")
            return out.reshape(b, t, n * d)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # no cuDNN, or a shape it does not fuse (raised while tracing, before any work)
    if dtype == jnp.float16 and not gpu:  # XLA's float16 attention asks for F16_F16_F32 dots, GPU only
        q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="xla")
    return out.astype(dtype).reshape(b, t, n * d)


def rope_tables(inv_freq, positions, dtype):
    """(cos, sin) [B, T, 1, D] of rotate-half RoPE at `positions` [B, T]."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def rotate(x, rope):
    """Rotate-half RoPE: x * cos + [-x2, x1] * sin, on [B, T, heads, D]."""
    cos, sin = rope
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin
