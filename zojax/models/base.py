"""The decoder driver shared by all families: forward pass, KV-cache generation, `Model`.

A family's model is a `flax.nnx` module (`zojax.models.llama.LlamaForCausalLM`, ...) with

- `embed(input_ids, positions, tables, length=None) -> (h, aux)`: token (and position)
  embeddings; `aux` is anything the layers need besides their parameters (LLaMA: RoPE tables);
  every position is below `length` (static; None: T, as for positions from a mask);
- `layers`: one decoder layer whose parameters are stacked on a leading layer axis, with
  `qkv(h, aux) -> (q, k, v)` (`q [B, T, N, D]`, `k, v [B, T, K, D]`, K dividing N) and
  `finish(h, o) -> h` (`o [B, T, N * D]` the attention output), `attention_scale` (the scores'
  scale, None for `D ** -0.5`; see `zojax.models.nn.attention`) and an optional `prefix`;
- `logits(h, tables) -> [B, T, V] float32`, and `config` (`kv_shape`, `layer_windows()`).

`tables` maps the name of a top-level embedding table to its row reader when the model runs
under a parameter hook with a row form (see `forward`). The driver runs the layers under
`jax.lax.scan`: one layer is traced and compiled whatever the depth, and the hook is applied to
each layer's slice inside the scan body, where it is used.

Positions come from the attention mask: the i-th non-pad token of a row has position i, so a
sequence gets the same logits whether it is left-padded, right-padded or alone.

The optimizer sees `Model.params`, the plain pytree of the module's `nnx.Param` state
(`nnx.to_pure_dict`); `Model.module` is the nnx module over the same arrays.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zojax.models.nn import Prefix, attention
from zojax.perturb import ParamHook


def positions_from_mask(mask):
    """Position of each token among the non-pad tokens of its row; pads get -1."""
    mask = mask.astype(jnp.int32)
    return jnp.cumsum(mask, axis=1) * mask - 1


def _no_hook(path, subtree, layer):
    return subtree


def _with_prefix(prefix, k, v, mask):
    """Prepend a layer's `prefix` (keys and values [P, K, D]) to `k, v` [B, S, K, D]; every
    query may attend to it, whatever the causal and padding mask [B, T, S] says."""
    b, t = mask.shape[:2]
    grow = lambda p, x: jnp.concatenate([jnp.broadcast_to(p.astype(x.dtype), (b, *p.shape)), x], axis=1)
    seen = jnp.ones((b, t, prefix.key.shape[0]), bool)
    return grow(prefix.key[...], k), grow(prefix.value[...], v), jnp.concatenate([seen, mask], axis=2)


def _run_layers(model, layers, h, aux, mask, param_hook, positions, cache=None, start=0):
    """Scan the stacked layers (`layers`: the pure dict of `model.layers`' parameters).

    `positions = (query [B, T], key [B, S])` positions, for sliding windows. With a cache
    `{'k', 'v'}: [L, B, S, K, D]`, this call's keys and values are written at slots
    `start:start + T` and attention reads the whole cache. A layer's `prefix` keys and values
    (not cached) come before the others.
    """
    n_layers = jax.tree.leaves(layers)[0].shape[0]
    layer_def = nnx.graphdef(model.layers)
    windows = model.config.layer_windows()
    if windows is not None:
        qpos, kpos = positions
        distance = qpos[:, :, None] - kpos[:, None, :]

    def body(carry, xs):
        h, cache = carry
        lp, index, window = xs
        layer = nnx.merge(layer_def, param_hook(("layers",), lp, index))
        q, k, v = layer.qkv(h, aux)
        if cache is not None:
            cache = {
                c: jax.lax.dynamic_update_slice(cache[c], x[None], (index, 0, start, 0, 0))
                for c, x in (("k", k), ("v", v))
            }
            k, v = cache["k"][index], cache["v"][index]
        attend = mask if windows is None else mask & ((window == 0) | (distance < window))
        if layer.prefix is not None:
            k, v, attend = _with_prefix(layer.prefix, k, v, attend)
        return (layer.finish(h, attention(q, k, v, attend, layer.attention_scale)), cache), None

    xs = (layers, jnp.arange(n_layers, dtype=jnp.int32), jnp.asarray(windows or (0,) * n_layers, jnp.int32))
    (h, cache), _ = jax.lax.scan(body, (h, cache), xs)
    return h, cache


def _is_table(subtree) -> bool:
    return isinstance(subtree, Mapping) and list(subtree) == ["embedding"]


def decode(graphdef, params, input_ids, attention_mask=None, *, param_hook: ParamHook | None = None, at=None):
    """`forward` on a module given as `nnx.split`'s graph and the pure dict of its parameters."""
    rows = getattr(param_hook, "rows", None)
    param_hook = param_hook or _no_hook
    b, t = input_ids.shape
    mask = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
    slots = jnp.arange(t)
    attend = mask[:, None, :] & (slots[None, :] <= slots[:, None])[None]

    tables, top = {}, {}
    for k, v in params.items():
        if k == "layers":
            top[k] = v
        elif rows is not None and _is_table(v):
            tables[k] = functools.partial(lambda k, v, ids: rows((k,), v, ids)["embedding"], k, v)
            top[k] = v
        else:
            top[k] = param_hook((k,), v, None)
    model = nnx.merge(graphdef, top)
    positions = positions_from_mask(mask)
    h, aux = model.embed(input_ids, positions, tables)
    h, _ = _run_layers(model, params["layers"], h, aux, attend, param_hook, (positions, positions))
    if at is not None:
        h = jnp.take_along_axis(h, jnp.asarray(at, jnp.int32)[..., None], axis=1)
    return model.logits(h, tables)


def forward(model: nnx.Module, input_ids, attention_mask=None, *, param_hook: ParamHook | None = None, at=None):
    """Logits `[B, T, V]` (float32) of a family's causal LM module; with `at` (int [B, K]) those
    of the positions `at` only, `[B, K, V]`: the final norm and LM head run on K rows per
    sequence instead of T (for a 49k-token vocabulary the head is a fifth of a small model's
    forward, and its [B, T, V] output the largest buffer).

    `attention_mask` [B, T] (1 = token, 0 = padding; None = no padding) hides padded keys and
    sets positions: a token's position is the number of non-pad tokens before it in its row. For
    OPT this is what transformers computes too; transformers' LLaMA forward uses `arange(T)`
    unless given `position_ids` (its `generate` passes the mask-derived ones, as here), so the two
    differ on left-padded rows only.

    `param_hook(path, subtree, layer)` (a `zojax.perturb.ParamHook`) acts on the pure parameter
    dict: it is called once per top-level entry `k` other than 'layers' as
    `param_hook((k,), params[k], None)`, and once per layer inside the scan as
    `param_hook(('layers',), params['layers'] at l, l)` with `l` an int32 scalar; what it returns
    is used in place of the subtree. None means identity. A hook with a row form
    `param_hook.rows(path, subtree, ids)` is not called on embedding tables (entries
    `{'embedding': [N, H]}`): they are read through it, the rows a lookup needs or, for tied
    logits, a chunk of rows at a time (see `zojax.models.nn.Embed`).
    """
    graphdef, state = nnx.split(model)
    return decode(graphdef, nnx.to_pure_dict(state), input_ids, attention_mask, param_hook=param_hook, at=at)


# ----------------------------------------------------------------------------- modules from params


def module_class(config) -> type[nnx.Module]:
    """The nnx module class of a config (`LlamaForCausalLM` for a `LlamaConfig`, ...)."""
    from zojax.models.registry import FAMILIES

    for family in FAMILIES.values():
        if type(config) is family.config:
            return family.module
    raise TypeError(f"no zojax model family for config type {type(config).__name__}")


def abstract_module(config, dtype=jnp.float32) -> nnx.Module:
    """The module of `config` with `jax.ShapeDtypeStruct` parameters: nothing allocated."""
    cls = module_class(config)
    return nnx.eval_shape(lambda: cls(config, dtype=dtype, rngs=nnx.Rngs(0)))


def init(config, key: int | jax.Array = 0, dtype="float32") -> Model:
    """A randomly initialised `Model` of `config` (weights ~ N(0, 0.02), norms 1, biases 0)."""
    key = jax.random.key(key) if isinstance(key, int) else key
    module = module_class(config)(config, dtype=jnp.dtype(dtype), rngs=nnx.Rngs(key))
    return Model(config, nnx.to_pure_dict(nnx.state(module, nnx.Param)))


def _attach(module, tree, path=()):
    """Give `module` the adapter entries of the pure dict `tree` that it lacks: LoRA factors
    (`lora_a`, `lora_b` next to a Dense kernel) and a layer's `prefix`; anything else that the
    module does not have is an error naming its path."""
    for k, v in tree.items():
        here = (*path, k)
        current = getattr(module, k, None) if isinstance(k, str) else None
        if current is not None:
            if isinstance(current, nnx.Module):
                if not isinstance(v, Mapping):
                    raise ValueError(f"params entry {'/'.join(here)} is an array; the model has a module there")
                _attach(current, v, here)
            continue
        if k in ("lora_a", "lora_b") and hasattr(module, "kernel"):
            setattr(module, k, nnx.LoRAParam(jnp.zeros((), jnp.float32)))
        elif k == "prefix" and hasattr(module, "prefix") and isinstance(v, Mapping) and set(v) == {"key", "value"}:
            module.prefix = Prefix(jnp.zeros(()), jnp.zeros(()))
        else:
            raise ValueError(f"params entry {'/'.join(here)} is not a parameter of {type(module).__name__}")


@functools.lru_cache(maxsize=64)
def _graphdef(config, skeleton: jax.tree_util.PyTreeDef):
    module = abstract_module(config)
    _attach(module, jax.tree.unflatten(skeleton, [0] * skeleton.num_leaves))
    return nnx.graphdef(module)


def graphdef(config, params):
    """The `nnx.GraphDef` of `config`'s module with the adapters found in `params` attached."""
    return _graphdef(config, jax.tree.structure(params))


def _apply(config, params, input_ids, attention_mask=None, *, param_hook: ParamHook | None = None, at=None):
    return decode(graphdef(config, params), params, input_ids, attention_mask, param_hook=param_hook, at=at)


_forward = jax.jit(_apply, static_argnums=0, static_argnames="param_hook")


# ----------------------------------------------------------------------------- generation


def keys_values(config, params, input_ids):
    """Every layer's attention keys and values for unpadded `input_ids` [B, T], as a KV cache
    holds them after reading the tokens (LLaMA keys after RoPE, positions 0..T-1):
    `{'k', 'v'}: [L, B, T, K, D]`."""
    b, t = input_ids.shape
    model = nnx.merge(graphdef(config, params), params)
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    h, aux = model.embed(input_ids, positions, {})
    n_layers = config.num_hidden_layers
    cache = {c: jnp.zeros((n_layers, b, t, *config.kv_shape), h.dtype) for c in ("k", "v")}
    causal = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
    return _run_layers(model, params["layers"], h, aux, causal, _no_hook, (positions, positions), cache)[1]


@functools.partial(jax.jit, static_argnums=0, static_argnames=("max_new_tokens", "eos_token_id"))
def _generate(config, params, input_ids, attention_mask, *, max_new_tokens, eos_token_id):
    b, t = input_ids.shape
    s = t + max_new_tokens
    mask = attention_mask.astype(bool)
    n_prompt = mask.sum(axis=1)
    key_valid = jnp.concatenate([mask, jnp.ones((b, max_new_tokens), bool)], axis=1)
    causal = jnp.arange(s)[None, :] <= jnp.arange(s)[:, None]
    model = nnx.merge(graphdef(config, params), params)
    layers = params["layers"]

    positions = positions_from_mask(mask)
    key_positions = jnp.concatenate([positions, n_prompt[:, None] + jnp.arange(max_new_tokens)], axis=1)
    h, aux = model.embed(input_ids, positions, {})
    n_layers = config.num_hidden_layers
    cache = {c: jnp.zeros((n_layers, b, s, *config.kv_shape), h.dtype) for c in ("k", "v")}

    attend = key_valid[:, None, :] & causal[None, :t]
    h, cache = _run_layers(model, layers, h, aux, attend, _no_hook, (positions, key_positions), cache, 0)
    last = jnp.max(jnp.where(mask, jnp.arange(t), 0), axis=1)
    first = jnp.argmax(model.logits(h[jnp.arange(b), last][:, None], {})[:, 0], axis=-1)

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
        position = (n_prompt + i - 1)[:, None]
        h, aux = model.embed(tok, position, {}, length=s)
        attend = key_valid[:, None, :] & jax.lax.dynamic_slice_in_dim(causal, slot, 1)[None]
        h, cache = _run_layers(model, layers, h, aux, attend, _no_hook, (position, key_positions), cache, slot)
        nxt = jnp.argmax(model.logits(h, {})[:, 0], axis=-1).astype(jnp.int32)
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
    """A loaded model: its config, parameters (a plain pytree), tokenizer (or None) and pure functions.

    `apply(params, input_ids, attention_mask=None, *, param_hook=None, at=None)` -> float32 logits
    (`forward` bound to the config and jit-compiled with the hook as a static argument: call it
    inside your own jit, or reuse one hook object, so that a new hook does not mean a new compile);
    `generate(params, input_ids, attention_mask, max_new_tokens, eos_token_id=None)` -> new ids;
    `stacked[k]` tells whether `params[k]` has a leading layer axis; `module` is the
    `flax.nnx` module over `params` (same arrays), e.g. for `nnx.display` or `nnx.Optimizer`.
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

    @property
    def module(self) -> nnx.Module:
        return nnx.merge(graphdef(self.config, self.params), self.params)

    @classmethod
    def from_module(cls, module: nnx.Module, tokenizer=None) -> Model:
        """The `Model` of an nnx module (its `nnx.Param` state, LoRA factors included)."""
        return cls(module.config, nnx.to_pure_dict(nnx.state(module, nnx.Param)), tokenizer)


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
