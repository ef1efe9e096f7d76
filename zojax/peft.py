"""Parameter-efficient fine-tuning: LoRA and prefix-tuning as a small pytree of adapters.

    import zojax.peft
    peft = zojax.peft.lora(model, targets=("q_proj", "v_proj"), rank=8, alpha=16, key=0)
    # or: peft = zojax.peft.prefix(model, num_tokens=5, key=0)
    tx = zojax.mezo(1e-4, stacked=peft.stacked)          # any optimizer, ZO or optax
    state = tx.init(peft.params)

    @jax.jit
    def step(base, adapters, state, batch):              # base: model.params, an argument
        value_fn = lambda a: loss(peft.apply(base, a, batch.input_ids, batch.attention_mask), batch)
        updates, state = tx.update(None, state, adapters, value_fn=value_fn)
        return optax.apply_updates(adapters, updates), state

    zojax.models.save_hf(model, peft.merge(model.params, adapters), "out")   # LoRA

The optimizer sees only the adapters; the base parameters are read, never copied or perturbed.
Pass them to a jitted function as an argument: an array it closes over becomes a constant of
the compiled function, held a second time.

Adapter trees mirror the model's parameters, per-layer leaves stacked `(L, ...)` under 'layers'
(`stacked = {'layers': True}`, for LOZO's matrices and the per-layer samplers):

- LoRA, for each targeted Dense `W` [in, out] at `layers/.../name`: `lora_a` [L, in, r] and
  `lora_b` [L, r, out] at `layers/.../name/`, the layer computing `x W + (alpha / r) (x A) B`
  (Hu et al. 2021). A ~ U(±1/√in) (PyTorch's Kaiming-uniform default, as in LoRA and MeZO),
  B = 0, so the initial adapters change nothing.
- Prefix-tuning (MeZO's variant of Li & Liang 2021: no reparameterisation): `prefix/key` and
  `prefix/value` [L, P, K, D] under 'layers', prepended to every layer's keys and values (K
  key/value heads of size D) and attended by every query, padded or not. They do not take
  positions: the real tokens keep theirs.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from zojax import perturb
from zojax.models.base import Model, keys_values
from zojax.perturb import ParamHook


def _attach(base: dict, extra: dict) -> dict:
    """`base` with the nested dict `extra` added to it; every array is shared, none copied."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = _attach(base[k], v) if k in base else v
    return out


def _hooked(adapters: dict, param_hook: ParamHook) -> dict:
    """The adapters as `param_hook` turns them, called as `zojax.models.forward` calls it for
    stacked parameters: `param_hook(('layers',), slice l, l)` for each layer l."""
    layers = adapters["layers"]
    n_layers = jax.tree.leaves(layers)[0].shape[0]
    hook = lambda sub, layer: param_hook(("layers",), sub, layer)
    return {**adapters, "layers": jax.vmap(hook)(layers, jnp.arange(n_layers, dtype=jnp.int32))}


@dataclasses.dataclass(frozen=True, eq=False)
class PEFT:
    """Adapters for `model`: `params` (their initial values) and the functions that use them."""

    model: Model
    params: dict

    @property
    def stacked(self) -> dict[str, bool]:
        """Which adapter entries have a leading layer axis (for the optimizers' `stacked=`)."""
        return {k: k == "layers" for k in self.params}

    def _for_model(self, adapters: dict) -> dict:
        return adapters

    def attach(self, base_params: dict, adapters: dict) -> dict:
        """The parameter tree `model.apply` and `model.generate` accept: the base parameters with
        the adapters added (shared arrays; the LoRA scale folded into `lora_b`)."""
        return _attach(base_params, self._for_model(adapters))

    def apply(self, base_params, adapters, input_ids, attention_mask=None, *, param_hook: ParamHook | None = None,
              at=None):
        """Float32 logits `[B, T, V]` of the adapted model (`[B, K, V]` at positions `at`), like
        `model.apply`.

        `param_hook` acts on the adapters, exactly as the model would apply it to a stacked
        parameter tree (so a ZO optimizer's per-layer perturbation is the one it would draw for
        `adapters` as a whole); the base parameters are never given to it.
        """
        if param_hook is not None:
            adapters = _hooked(adapters, param_hook)
        return self.model.apply(self.attach(base_params, adapters), input_ids, attention_mask, at=at)

    def merge(self, base_params: dict, adapters: dict) -> dict:
        """Model parameters with the adapters folded in, for `zojax.models.save_hf`."""
        raise ValueError(
            f"{type(self).__name__} adapters cannot be folded into the model's weights; save the adapters "
            "themselves, and use attach() to run them"
        )


@dataclasses.dataclass(frozen=True, eq=False)
class LoRA(PEFT):
    """LoRA adapters of rank `rank` with scale `alpha / rank`; see :func:`lora`."""

    rank: int
    alpha: float

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def _for_model(self, adapters):
        scaled = lambda path, x: x * self.scale if perturb.path_name(path).endswith("lora_b") else x
        return jax.tree_util.tree_map_with_path(scaled, adapters)

    def merge(self, base_params, adapters):
        """The base parameters with each adapted kernel `W` replaced by `W + (alpha / r) A B`
        (computed in float32, cast to W's dtype); every other array is shared. An ordinary
        checkpoint: `zojax.models.save_hf(model, peft.merge(model.params, adapters), dir)`."""

        def fold(base, extra):
            if "lora_a" in extra:
                w = base["kernel"]
                delta = jnp.einsum("lir,lro->lio", extra["lora_a"], extra["lora_b"], preferred_element_type=jnp.float32)
                return {**base, "kernel": (w.astype(jnp.float32) + self.scale * delta).astype(w.dtype)}
            return {**base, **{k: fold(base[k], v) for k, v in extra.items()}}

        return fold(base_params, adapters)


@dataclasses.dataclass(frozen=True, eq=False)
class Prefix(PEFT):
    """Prefix keys and values; see :func:`prefix`."""

    num_tokens: int


def _dense_paths(tree: dict, path: tuple[str, ...] = ()) -> dict[str, list[tuple[str, ...]]]:
    """Name -> paths of the Dense dicts (those holding a 'kernel') in `tree`."""
    if "kernel" in tree:
        return {path[-1]: [path]}
    found: dict[str, list[tuple[str, ...]]] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            for name, paths in _dense_paths(v, (*path, k)).items():
                found.setdefault(name, []).extend(paths)
    return found


def _nest(path: tuple[str, ...], value) -> dict:
    for k in reversed(path):
        value = {k: value}
    return value


def _subtree(tree: dict, path: tuple[str, ...]):
    for k in path:
        tree = tree[k]
    return tree


def lora(
    model: Model,
    targets: Sequence[str] = ("q_proj", "v_proj"),
    rank: int = 8,
    alpha: float = 16,
    key: int | jax.Array = 0,
) -> LoRA:
    """LoRA on the layers' Dense projections named in `targets` (MeZO's defaults: the attention
    query and value projections, r = 8, alpha = 16).

    Names are the Dense modules of a layer: LLaMA `q_proj k_proj v_proj o_proj gate_proj up_proj
    down_proj`, OPT `q_proj k_proj v_proj out_proj fc1 fc2`; an unknown name is a ValueError
    listing them. Each module's A is drawn from `zojax.perturb.leaf_key(key, 'layers/<path>/lora_a')`,
    so adding a target leaves the others' initial values unchanged. Adapters have the kernels'
    dtype.
    """
    if not isinstance(rank, numbers.Integral) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
    if not isinstance(alpha, numbers.Real) or alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    available = _dense_paths(model.params["layers"])
    unknown = [t for t in targets if t not in available]
    if unknown or not targets:
        problem = f"LoRA target(s) {unknown} match no projection" if unknown else "no LoRA targets given"
        raise ValueError(f"{problem} of {type(model.config).__name__}; available: {sorted(available)}")
    key = perturb.as_key(key)
    adapters: dict = {}
    for path in (p for t in dict.fromkeys(targets) for p in available[t]):
        kernel = _subtree(model.params["layers"], path)["kernel"]
        n_layers, n_in, n_out = kernel.shape
        k = perturb.leaf_key(key, "/".join(("layers", *path, "lora_a")))
        bound = 1 / math.sqrt(n_in)
        a = jax.random.uniform(k, (n_layers, n_in, rank), jnp.float32, -bound, bound).astype(kernel.dtype)
        b = jnp.zeros((n_layers, rank, n_out), kernel.dtype)
        adapters = _attach(adapters, _nest(path, {"lora_a": a, "lora_b": b}))
    return LoRA(model, {"layers": adapters}, int(rank), alpha)


def prefix(model: Model, num_tokens: int = 5, key: int | jax.Array = 0) -> Prefix:
    """Prefix-tuning as in MeZO: `num_tokens` trainable keys and values per layer, initialised
    from real activations: the keys and values each layer computes when the model reads
    `jax.random.randint(as_key(key), (num_tokens,), 0, vocab_size)` (positions 0..P-1; LLaMA
    keys after RoPE, as a KV cache holds them). No reparameterisation network.
    """
    if not isinstance(num_tokens, numbers.Integral) or num_tokens < 1:
        raise ValueError(f"num_tokens must be an integer >= 1, got {num_tokens!r}")
    tokens = jax.random.randint(perturb.as_key(key), (num_tokens,), 0, model.config.vocab_size)
    kv = jax.jit(keys_values, static_argnums=0)(model.config, model.params, tokens[None])
    return Prefix(model, {"layers": {"prefix": {"key": kv["k"][:, 0], "value": kv["v"][:, 0]}}}, int(num_tokens))
