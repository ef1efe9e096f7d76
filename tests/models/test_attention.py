"""`zojax.models.nn.attention` against a numpy transcription of softmax(q k^T * scale + mask) v."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zojax.models import nn


def reference(q, k, v, mask, scale):
    """float64 softmax(q k^T * scale, masked) v; query head h reads key/value head h // (N / K);
    a query whose mask row is all False attends to every key."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, n, d = q.shape
    group = n // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)  # [B, S, N, D]
    scores = np.einsum("btnd,bsnd->bnts", q, k) * (d**-0.5 if scale is None else scale)
    mask = np.asarray(mask, bool)
    mask = mask | ~mask.any(axis=-1, keepdims=True)
    scores = np.where(mask[:, None], scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    return np.einsum("bnts,bsnd->btnd", weights, v).reshape(b, t, n * d)


def inputs(dtype, b=2, t=5, n=6, kv=2, d=8, prefix=3, seed=0):
    """q [B, T, N, D], k, v [B, P + T, K, D] and a causal, padded mask [B, T, P + T] with P
    always-visible prefix keys on row 1; row 0 is left-padded by two, so its first two queries
    see nothing."""
    rng = np.random.default_rng(seed)
    s = prefix + t
    q = rng.normal(size=(b, t, n, d)) * 2
    k, v = rng.normal(size=(b, s, kv, d)) * 2, rng.normal(size=(b, s, kv, d))
    causal = np.tril(np.ones((t, t), bool))
    tokens = np.ones((b, t), bool)
    tokens[0, :2] = False
    mask = np.concatenate([np.zeros((b, t, prefix), bool), causal[None] & tokens[:, None, :]], axis=2)
    mask[1, :, :prefix] = True
    return [jnp.asarray(x, dtype) for x in (q, k, v)] + [jnp.asarray(mask)]


@pytest.mark.parametrize("scale", [None, 1.0, 0.3])
def test_float32_equals_numpy(scale):
    q, k, v, mask = inputs(jnp.float32)
    out = jax.jit(nn.attention, static_argnums=4)(q, k, v, mask, scale)
    assert out.shape == (2, 5, 6 * 8) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, reference(q, k, v, mask, scale), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_16_bit_inputs_equal_numpy_on_the_same_values(dtype):
    """16-bit q, k, v: the output keeps their dtype and is within a few of its roundings of the
    float64 reference on the same (rounded) inputs; float32 scores and softmax keep it there."""
    q, k, v, mask = inputs(dtype)
    out = jax.jit(nn.attention)(q, k, v, mask)
    assert out.dtype == dtype
    ref = reference(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), mask, None)
    ulp = float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(np.asarray(out, np.float64), ref, rtol=4 * ulp, atol=4 * ulp)


def test_query_with_nothing_to_attend_to_is_finite():
    q, k, v, mask = inputs(jnp.float32)
    assert not mask[0, 0].any()
    out = np.asarray(nn.attention(q, k, v, mask))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0, :2], reference(q, k, v, mask, None)[0, :2], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="needs a machine without cuDNN")
def test_16_bit_on_one_gpu_tries_cudnn_then_falls_back_to_xla(monkeypatch):
    """On one GPU, 16-bit inputs try cuDNN first; when it refuses while tracing (here: not
    installed), XLA's implementation answers. float32 goes to XLA directly."""
    q, k, v, mask = inputs(jnp.bfloat16)
    expected = nn.attention(q, k, v, mask)
    tried = []
    real = jax.nn.dot_product_attention

    def spy(*args, implementation, **kwargs):
        tried.append(implementation)
        return real(*args, implementation=implementation, **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "device_count", lambda: 1)
    np.testing.assert_array_equal(nn.attention(q, k, v, mask), expected)
    assert tried == ["cudnn", "xla"]
    nn.attention(*(x.astype(jnp.float32) for x in (q, k, v)), mask)
    assert tried == ["cudnn", "xla", "xla"]
