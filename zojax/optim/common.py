"""Pieces shared by the zojax transformations: step bookkeeping, checks, masks."""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from zojax import perturb as P
from zojax.estimate import TwoPoint


class ZOInfo(NamedTuple):
    """Per-transformation step record, part of every zojax state.

    ``key`` is the run's base key; ``count`` the number of steps attempted, which is also
    the z counter of the next step; ``f_plus``/``f_minus``/``projected_grad`` are the last
    step's f(θ+εz), f(θ−εz) and c (shape ``(q,)`` when MeZO averages q > 1 directions);
    ``skipped`` counts steps whose loss was not finite (no update was made).
    """

    key: jax.Array
    count: jax.Array
    f_plus: jax.Array
    f_minus: jax.Array
    projected_grad: jax.Array
    skipped: jax.Array


class StepInfo(NamedTuple):
    f_plus: jax.Array
    f_minus: jax.Array
    projected_grad: jax.Array
    skipped: jax.Array
    step: jax.Array


def init_info(key, shape: tuple[int, ...] = ()) -> ZOInfo:
    nan = jnp.full(shape, jnp.nan, jnp.float32)
    return ZOInfo(P.as_key(key), jnp.zeros((), jnp.int32), nan, nan, nan, jnp.zeros((), jnp.int32))


def is_finite(est: TwoPoint) -> jax.Array:
    return jnp.all(jnp.isfinite(est.f_plus) & jnp.isfinite(est.f_minus))


def next_info(info: ZOInfo, est: TwoPoint, finite) -> ZOInfo:
    return info._replace(
        count=info.count + 1,
        f_plus=est.f_plus,
        f_minus=est.f_minus,
        projected_grad=est.projected_grad,
        skipped=info.skipped + (~finite).astype(jnp.int32),
    )


def step_info(state) -> StepInfo | tuple[StepInfo, ...]:
    """The last step's f(θ+εz), f(θ−εz), projected gradient c, skipped-step count and step.

    Works on the state of any zojax transformation, also nested in ``optax.chain``,
    ``optax.masked``, ``optax.multi_transform`` or ``optax.inject_hyperparams``; with
    several zojax transformations in one state, returns one record per transformation.
    """
    infos = [x for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, ZOInfo)) if isinstance(x, ZOInfo)]
    if not infos:
        raise ValueError("this optimizer state contains no zojax transformation")
    out = tuple(StepInfo(i.f_plus, i.f_minus, i.projected_grad, i.skipped, i.count) for i in infos)
    return out[0] if len(out) == 1 else out


def require_value_fn(value_fn, params) -> None:
    if value_fn is None:
        raise TypeError(
            "zojax transformations evaluate the loss themselves: call "
            "tx.update(updates, state, params, value_fn=lambda p: loss(p, batch)) "
            "with value_fn(params) -> scalar"
        )
    if params is None:
        raise ValueError("zojax transformations need the current params: tx.update(updates, state, params, value_fn=...)")


def check(name: str, value: Any, ok: bool, allowed: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``ok``; traced values are not checked."""
    if isinstance(value, numbers.Number) and not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def check_learning_rate(learning_rate) -> None:
    """A numeric learning rate must be finite and > 0 (a schedule is not checked)."""
    if callable(learning_rate) or isinstance(learning_rate, jax.core.Tracer):
        return
    if not isinstance(learning_rate, (numbers.Real, jax.Array)) or jnp.shape(learning_rate) != ():
        raise ValueError(f"learning_rate must be a finite number > 0 or a schedule, got {learning_rate!r}")
    value = float(learning_rate)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"learning_rate must be finite and > 0, got {learning_rate!r}")


def per_step_sampler(sampler: P.Sampler, q: int) -> P.Sampler:
    """The sampler for counters ``step·q + j``: a :class:`LowRank` keeps its V for ν steps,
    i.e. ν·q counters; other samplers are returned as they are."""
    if q > 1 and isinstance(sampler, P.LowRank):
        return dataclasses.replace(sampler, nu=sampler.nu * q)
    return sampler


def check_rounding(rounding) -> None:
    if rounding not in P.ROUNDINGS:
        raise ValueError(f"rounding must be one of {P.ROUNDINGS}, got {rounding!r}")


def check_hyperparams(eps=None, betas: dict | None = None) -> None:
    if eps is not None:
        check("eps", eps, isinstance(eps, numbers.Number) and eps > 0, "> 0")
    for name, b in (betas or {}).items():
        check(name, b, isinstance(b, numbers.Number) and 0 <= b < 1, "in [0, 1)")


def static_int(name: str, value, lo: int) -> int:
    """``value`` as a Python int >= ``lo``; it fixes array shapes, so it cannot be traced."""
    try:
        number = operator.index(value)
    except TypeError:
        if isinstance(value, jax.Array):
            raise TypeError(
                f"{name} fixes array shapes and cannot be a traced value; with optax.inject_hyperparams "
                f"pass static_args=({name!r}, ...)"
            ) from None
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}") from None
    if number < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return number


def slice_shapes(params, stacked: P.Stacked) -> list[tuple[str, tuple[int, ...], bool]]:
    """(path, shape of one slice, stacked?) for every leaf."""
    flags = P.stack_flags(stacked, params)
    return [
        (P.path_name(path), tuple(leaf.shape[1:] if flag else leaf.shape), flag)
        for (path, leaf), flag in zip(jax.tree_util.tree_leaves_with_path(params), flags)
    ]


OFFICIAL_NO_DECAY = ("bias", "layer_norm", "layernorm")


def decay_mask(params, stacked: P.Stacked = None, rule: str = "shape"):
    """A weight-decay mask for ``optax.add_decayed_weights(wd, mask=zojax.decay_mask(params, stacked))``.

    ``rule="shape"``: True for weight matrices and embeddings, False for every leaf with
    one axis per layer (biases, norm scales). ``rule="official"``: the MeZO, LOZO and
    AdaMeZO trainers' rule, True unless the leaf's path contains ``"bias"``,
    ``"layer_norm"`` or ``"layernorm"`` (zojax models keep the Hugging Face names, so a
    LLaMA's final ``norm`` is decayed there, as in those trainers).
    """
    if rule not in ("shape", "official"):
        raise ValueError(f"rule must be 'shape' or 'official', got {rule!r}")
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    if rule == "official":
        names = [P.path_name(path) for path, _ in paths_leaves]
        return treedef.unflatten([not any(word in name for word in OFFICIAL_NO_DECAY) for name in names])
    flags = P.stack_flags(stacked, params)
    return treedef.unflatten([jnp.ndim(p) - flag >= 2 for (_, p), flag in zip(paths_leaves, flags)])
