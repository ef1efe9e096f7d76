"""The decoder driver shared by all architectures: forward pass, KV-cache generation, `Model`.

An architecture is a frozen config dataclass with these methods, all pure:

- `embed(p, input_ids, positions) -> (h, aux)`: token (and position) embeddings; `aux` is
  anything the layers need besides their parameters (LLaMA: RoPE tables).
- `qkv(lp, h, aux) -> (q, k, v)`: the layer up to attention, `q [B, T, N, D]`,
  `k, v [B, T, K, D]` (K divides N: grouped-query attention).
- `finish(lp, h, o) -> h`: the rest of the layer, `o [B, T, N * D]` being the attention output.
- `logits(p, h) -> [B, T, V] float32`.

and a property `kv_shape = (K, D)` for the KV cache.

`p` is the top-level parameter dict (without 'layers'), `lp` one layer's slice of
`params['layers']`. Positions come from the attention mask: the i-th non-pad token of a row has
position i, so a sequence gets the same logits whether it is left-padded, right-padded or alone.

Two optional extras in a layer's parameters carry `zojax.peft` adapters: a Dense dict with
`lora_a` [in, r] and `lora_b` [r, out] adds `(x @ lora_a) @ lora_b` (see `dense`), and
`lp['prefix'] = {'key', 'value'}: [P, K, D]` is prepended to the layer's keys and values and
attended by every query (see `_run_layers`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ParamHook = Callable[[tuple[str, ...], Any, Any], Any]


def rms_norm(x, scale, eps):
    """RMSNorm computed in float32 and cast back before the scale (as in transformers)."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return x32.astype(x.dtype) * scale


def layer_norm(x, p, eps=1e-5):
    """LayerNorm with `p = {'scale', 'bias'}`, statistics in float32."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]
    return y.astype(x.dtype)


def dense(x, p):
    """`x @ kernel (+ bias)` with Flax layout: `p = {'kernel': [in, out], 'bias'?: [out]}`, plus
    the low-rank term `(x @ lora_a) @ lora_b` when `p` also holds `lora_a` [in, r] and `lora_b`
    [r, out] (LoRA with its scale already in `lora_b`; the kernel is never added to)."""
    y = x @ p["kernel"]
    if "lora_a" in p:
        y = y + (x @ p["lora_a"]) @ p["lora_b"]
    return y + p["bias"] if "bias" in p else y


class HookedTable(NamedTuple):
    """An embedding table entry `{'embedding': [N, H]}` read through a parameter hook's row form
    (see `forward`): `rows(ids)` -> the entry with only rows `ids` (any int array), perturbed."""

    params: dict
    rows: Callable[[Any], dict]


def lookup(p, name: str, ids):
    """Rows `ids` of the table `p[name]['embedding']`: shape `ids.shape + [H]`."""
    entry = p[name]
    return entry.rows(ids)["embedding"] if isinstance(entry, HookedTable) else entry["embedding"][ids]


def unembed(h, p, tied: bool, chunk: int = 8192):
    """Float32 logits from the tied `embed_tokens/embedding` [V, H] or `lm_head/kernel` [H, V].
    A tied table read through a hook is used `chunk` rows at a time, so its perturbed rows
    exist for one chunk only."""
    if not tied:
        return jnp.einsum("btd,dv->btv", h, p["lm_head"]["kernel"], preferred_element_type=jnp.float32)
    table = p["embed_tokens"]
    if not isinstance(table, HookedTable):
        return jnp.einsum("btd,vd->btv", h, table["embedding"], preferred_element_type=jnp.float32)
    vocab = table.params["embedding"].shape[0]
    chunk = min(chunk, vocab)

    def part(start, size):
        rows = table.rows(start + jnp.arange(size))["embedding"]
        return jnp.einsum("btd,vd->btv", h, rows, preferred_element_type=jnp.float32)

    n, rest = divmod(vocab, chunk)
    logits = jnp.zeros((*h.shape[:2], vocab), jnp.float32)
    fill = lambda i, out: jax.lax.dynamic_update_slice_in_dim(out, part(i * chunk, chunk), i * chunk, axis=2)
    logits = jax.lax.fori_loop(0, n, fill, logits)
    return logits.at[..., n * chunk :].set(part(n * chunk, rest)) if rest else logits


def attention(q, k, v, mask):
    """Softmax attention with grouped queries.

    q [B, T, N, D], k, v [B, S, K, D], mask [B, T, S] (True = may attend) -> [B, T, N * D].
    Scores and softmax are float32. A row with nothing to attend to (a padding query) gets a
    uniform average instead of NaN, so it cannot poison later layers.
    """
    b, t, n, d = q.shape
    kh = k.shape[2]
    q = q.reshape(b, t, kh, n // kh, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = jnp.where(mask[:, None, None], scores * d**-0.5, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, n * d)


def positions_from_mask(mask):
    """Position of each token among the non-pad tokens of its row; pads get -1."""
    mask = mask.astype(jnp.int32)
    return jnp.cumsum(mask, axis=1) * mask - 1


def _no_hook(path, subtree, layer):
    return subtree


def _with_prefix(prefix, k, v, mask):
    """Prepend a layer's `prefix = {'key', 'value'}: [P, K, D]` to `k, v` [B, S, K, D]; every
    query may attend to it, whatever the causal and padding mask [B, T, S] says."""
    b, t = mask.shape[:2]
    grow = lambda p, x: jnp.concatenate([jnp.broadcast_to(p.astype(x.dtype), (b, *p.shape)), x], axis=1)
    seen = jnp.ones((b, t, prefix["key"].shape[0]), bool)
    return grow(prefix["key"], k), grow(prefix["value"], v), jnp.concatenate([seen, mask], axis=2)


def _run_layers(config, layers, h, aux, mask, param_hook, cache=None, start=0):
    """Scan the stacked layers. With a cache `{'k', 'v'}: [L, B, S, K, D]`, this call's keys and
    values are written at slots `start:start + T` and attention reads the whole cache. A layer's
    `prefix` keys and values (not cached) come before the others."""
    n_layers = jax.tree.leaves(layers)[0].shape[0]

    def body(carry, xs):
        h, cache = carry
        lp, layer = xs
        lp = param_hook(("layers",), lp, layer)
        q, k, v = config.qkv(lp, h, aux)
        if cache is not None:
            cache = {
                c: jax.lax.dynamic_update_slice(cache[c], x[None], (layer, 0, start, 0, 0))
                for c, x in (("k", k), ("v", v))
            }
            k, v = cache["k"][layer], cache["v"][layer]
        attend = mask
        if "prefix" in lp:
            k, v, attend = _with_prefix(lp["prefix"], k, v, mask)
        return (config.finish(lp, h, attention(q, k, v, attend)), cache), None

    (h, cache), _ = jax.lax.scan(body, (h, cache), (layers, jnp.arange(n_layers, dtype=jnp.int32)))
    return h, cache


def forward(config, params, input_ids, attention_mask=None, *, param_hook: ParamHook | None = None):
    """Logits `[B, T, V]` (float32) of a causal decoder.

    `attention_mask` [B, T] (1 = token, 0 = padding; None = no padding) hides padded keys and
    sets positions: a token's position is the number of non-pad tokens before it in its row. For
    OPT this is what transformers computes too; transformers' LLaMA forward uses `arange(T)`
    unless given `position_ids` (its `generate` passes the mask-derived ones, as here), so the two
    differ on left-padded rows only. `param_hook(path, subtree, layer)` is called once per top-level entry `k`
    other than 'layers' as `param_hook((k,), params[k], None)`, and once per layer inside the
    scan as `param_hook(('layers',), params['layers'] at l, l)` with `l` an int32 scalar; what it
    returns is used in place of the subtree. None means identity. A hook with a row form
    `param_hook.rows(path, subtree, ids)` (rows `ids` of each leaf, as the hook would turn them;
    see `zojax.perturb.make_param_hook`) is not called on embedding tables (entries
    `{'embedding': [N, H]}`): they are read through it, the rows a lookup needs or, for tied
    logits, a chunk of rows at a time (see `HookedTable`, `unembed`).
    """
    rows = getattr(param_hook, "rows", None)
    param_hook = param_hook or _no_hook
    b, t = input_ids.shape
    mask = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
    slots = jnp.arange(t)
    attend = mask[:, None, :] & (slots[None, :] <= slots[:, None])[None]

    def top(k, v):
        if rows is not None and isinstance(v, Mapping) and list(v) == ["embedding"]:
            return HookedTable(v, functools.partial(rows, (k,), v))
        return param_hook((k,), v, None)

    p = {k: top(k, v) for k, v in params.items() if k != "layers"}
    h, aux = config.embed(p, input_ids, positions_from_mask(mask))
    h, _ = _run_layers(config, params["layers"], h, aux, attend, param_hook)
    return config.logits(p, h)


_forward = jax.jit(forward, static_argnums=0, static_argnames="param_hook")


def keys_values(config, params, input_ids):
    """Every layer's attention keys and values for unpadded `input_ids` [B, T], as a KV cache
    holds them after reading the tokens (LLaMA keys after RoPE, positions 0..T-1):
    `{'k', 'v'}: [L, B, T, K, D]`."""
    b, t = input_ids.shape
    p = {k: v for k, v in params.items() if k != "layers"}
    h, aux = config.embed(p, input_ids, jnp.broadcast_to(jnp.arange(t), (b, t)))
    n_layers = jax.tree.leaves(params["layers"])[0].shape[0]
    cache = {c: jnp.zeros((n_layers, b, t, *config.kv_shape), h.dtype) for c in ("k", "v")}
    causal = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
    return _run_layers(config, params["layers"], h, aux, causal, _no_hook, cache)[1]


@functools.partial(jax.jit, static_argnums=0, static_argnames=("max_new_tokens", "eos_token_id"))
def _generate(config, params, input_ids, attention_mask, *, max_new_tokens, eos_token_id):
    b, t = input_ids.shape
    s = t + max_new_tokens
    mask = attention_mask.astype(bool)
    n_prompt = mask.sum(axis=1)
    key_valid = jnp.concatenate([mask, jnp.ones((b, max_new_tokens), bool)], axis=1)
    causal = jnp.arange(s)[None, :] <= jnp.arange(s)[:, None]
    p = {k: v for k, v in params.items() if k != "layers"}

    h, aux = config.embed(p, input_ids, positions_from_mask(mask))
    n_layers = jax.tree.leaves(params["layers"])[0].shape[0]
    cache = {c: jnp.zeros((n_layers, b, s, *config.kv_shape), h.dtype) for c in ("k", "v")}

    attend = key_valid[:, None, :] & causal[None, :t]
    h, cache = _run_layers(config, params["layers"], h, aux, attend, _no_hook, cache, 0)
    last = jnp.max(jnp.where(mask, jnp.arange(t), 0), axis=1)
    first = jnp.argmax(config.logits(p, h[jnp.arange(b), last][:, None])[:, 0], axis=-1)

    eos = jnp.asarray(eos_token_id if eos_token_id else (-1,), jnp.int32)
    fill = eos[0] if eos_token_id else 0
    out = jnp.full((b, max_new_tokens), fill, jnp.int32).at[:, 0].set(first)

    def cond(state):
        i, _, done, _ = state
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(state):
        i, cache, done, out = state
        slot = t + i - 1
        tok = jax.lax.dynamic_slice_in_dim(out, i - 1, 1, axis=1)
        h, aux = config.embed(p, tok, (n_prompt + i - 1)[:, None])
        attend = key_valid[:, None, :] & jax.lax.dynamic_slice_in_dim(causal, slot, 1)[None]
        h, cache = _run_layers(config, params["layers"], h, aux, attend, _no_hook, cache, slot)
        nxt = jnp.argmax(config.logits(p, h)[:, 0], axis=-1).astype(jnp.int32)
        nxt = jnp.where(done, fill, nxt)
        return (
            i + 1,
            cache,
            done | jnp.isin(nxt, eos),
            jax.lax.dynamic_update_slice_in_dim(out, nxt[:, None], i, axis=1),
        )

    state = (jnp.int32(1), cache, jnp.isin(first, eos), out)
    return jax.lax.while_loop(cond, body, state)[3]


def generate(
    config,
    params,
    input_ids,
    attention_mask,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None = None,
):
    """Greedy decoding with a KV cache, jit-compiled: the new token ids `[B, max_new_tokens]`.

    Prompts may be left- or right-padded. A row stops at its first token in `eos_token_id`
    (an id or a list of ids; None = never) and is filled with the first of those ids after it;
    the loop ends early once every row has stopped.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if isinstance(eos_token_id, int | np.integer):
        eos_token_id = (int(eos_token_id),)
    eos_token_id = tuple(int(e) for e in eos_token_id) if eos_token_id is not None else ()
    if attention_mask is None:
        attention_mask = jnp.ones(jnp.shape(input_ids), jnp.int32)
    return _generate(
        config,
        params,
        jnp.asarray(input_ids, jnp.int32),
        jnp.asarray(attention_mask),
        max_new_tokens=int(max_new_tokens),
        eos_token_id=eos_token_id,
    )


@dataclasses.dataclass(frozen=True)
class Model:
    """A loaded model: its config, parameters, tokenizer (or None) and pure functions.

    `apply(params, input_ids, attention_mask=None, *, param_hook=None)` -> float32 logits
    (`forward` bound to the config and jit-compiled with the hook as a static argument: call it
    inside your own jit, or reuse one hook object, so that a new hook does not mean a new compile);
    `generate(params, input_ids, attention_mask, max_new_tokens, eos_token_id=None)` -> new ids;
    `stacked[k]` tells whether `params[k]` has a leading layer axis.
    """

    config: Any
    params: dict
    tokenizer: Any = None

    @property
    def apply(self):
        return functools.partial(_forward, self.config)

    @property
    def generate(self):
        return functools.partial(generate, self.config)

    @property
    def stacked(self) -> dict[str, bool]:
        return {k: k == "layers" for k in self.params}


@dataclasses.dataclass(frozen=True)
class HFTensor:
    """One row of a conversion table: a transformers tensor and where it lives in zojax params.

    `hf_name` contains `{i}` for per-layer tensors, which are stacked along a leading axis under
    `params['layers']`; `hf_shape` is the torch shape; `transpose` turns a torch Linear weight
    `[out, in]` into a Flax kernel `[in, out]`.
    """

    hf_name: str
    path: tuple[str, ...]
    hf_shape: tuple[int, ...]
    transpose: bool = False

    def shape(self, n_layers: int) -> tuple[int, ...]:
        """The zojax shape (stacked, transposed)."""
        shape = self.hf_shape[::-1] if self.transpose else self.hf_shape
        return (n_layers, *shape) if self.path[0] == "layers" else shape


def hf_linear(name: str, path: tuple[str, ...], n_in: int, n_out: int, bias=False) -> list[HFTensor]:
    """Rows for the torch Linear `name` (weight [out, in], optional bias) as a Dense at `path`."""
    rows = [HFTensor(name + ".weight", (*path, "kernel"), (n_out, n_in), True)]
    return rows + [HFTensor(name + ".bias", (*path, "bias"), (n_out,))] if bias else rows


def hf_norm(name: str, path: tuple[str, ...], n: int, bias=False) -> list[HFTensor]:
    """Rows for the norm `name` (weight, optional bias) as `scale`/`bias` at `path`."""
    rows = [HFTensor(name + ".weight", (*path, "scale"), (n,))]
    return rows + [HFTensor(name + ".bias", (*path, "bias"), (n,))] if bias else rows


def hf_config_dict(cfg) -> dict:
    """A transformers config (object or dict, e.g. a parsed config.json) as a plain dict."""
    return dict(cfg) if isinstance(cfg, Mapping) else cfg.to_dict()


def refuse_unsupported(model_type: str, d: dict, supported: dict[str, Callable[[Any], bool]], prefix=""):
    """Raise one ValueError naming every attribute of `d` whose value zojax does not implement."""
    bad = [f"{prefix}{k}={d[k]!r}" for k, ok in supported.items() if k in d and not ok(d[k])]
    if bad:
        raise ValueError(f"unsupported {model_type} config attribute(s), not implemented: {', '.join(bad)}")


def token_ids(x):
    """A token-id config value (int, list or None) in hashable form."""
    return tuple(x) if isinstance(x, list | tuple) else x
