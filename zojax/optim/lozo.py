"""LOZO and LOZO-M: zeroth-order SGD along low-rank directions (Chen et al. 2024,
arXiv 2410.07698).

For a matrix leaf (a Flax kernel ``(in, out)``; see :class:`zojax.perturb.LowRank` for the
orientation), step t of window w = ⌊t/ν⌋ uses z_t = V_w U_tᵀ, U_t fresh, V_w from the key
of window w; vectors (biases, norms) use dense z_t.

    c_t = (f(θ + ε z_t) − f(θ − ε z_t)) / 2ε     (q > 1: q draws of U_t, c_t U_t averaged)
    LOZO:    direction = c_t z_t                        (× 1/r with ``divide_by_rank``)
    LOZO-M:  N ← c_t U_t                                 on the first step
             N ← β N + (1 − β) c_t U_t                   within a window
             N ← β N V_{w−1}ᵀ V_w / m + (1 − β) c_t U_t   when V is resampled (m rows of V)
             direction = V_w Nᵀ

The momentum N has U's shape ``(out, r)`` per matrix; only vectors keep dense momentum.
Defaults follow the official code: no 1/r, V resampled at steps 0, ν, 2ν, …, the first
momentum step without (1 − β). The window N is expressed in is kept in the state, so a
skipped step at a window boundary still transfers N correctly (and ν = 1 gives real
momentum, where the official code's transfer branch never runs).

One departure from the official trainer: on the steps where V is resampled, its update
re-seeds the generator and draws U (and the vectors' z) from a stream that also drew V in
the perturbation, so the U it applies differs from the U it perturbed with (an open
upstream issue); zojax updates along the z it perturbed with.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from zojax import perturb as P
from zojax.estimate import TwoPoint, two_point
from zojax.optim import common as C
from zojax.optim.compose import refuse_optax_wrappers


class LOZOState(NamedTuple):
    info: C.ZOInfo
    momentum: Any  # per leaf: (..., out, r) for matrices, leaf-shaped for vectors; None for LOZO
    momentum_window: jax.Array  # the window whose V the momentum is expressed in; −1 before any step


def _check_ranks(params, stacked, rank):
    for name, shape, _ in C.slice_shapes(params, stacked):
        if len(shape) >= 2 and rank > min(P.LowRank.matrix_shape(shape)):
            raise ValueError(
                f"rank must be <= min(matrix shape) for every matrix leaf; leaf {name!r} "
                f"has matrix shape {P.LowRank.matrix_shape(shape)} but rank={rank}"
            )


def scale_by_lozo(
    eps: float = 1e-3,
    rank: int = 2,
    nu: int = 50,
    momentum: float | None = None,
    *,
    divide_by_rank: bool = False,
    num_directions: int = 1,
    base_sampler: str | P.Sampler = "gaussian",
    stacked: P.Stacked = None,
    rounding: str = "nearest",
    key: int | jnp.ndarray = 0,
) -> optax.GradientTransformationExtraArgs:
    """The LOZO (``momentum=None``) or LOZO-M (``momentum=β``) direction.

    Args:
      eps: perturbation scale ε > 0.
      rank: r, the rank of each matrix direction, 1 <= r <= min(matrix shape).
      nu: ν >= 1, steps between resamplings of V.
      momentum: β in [0, 1) for LOZO-M; None for LOZO.
      divide_by_rank: scale matrix directions by 1/r, so E[direction] = ∇f (the official
        code does not; its learning rates assume it does not).
      num_directions: q two-point estimates per step (2q forwards), each with its own U
        (and vector z) and the window's V, averaged: c U ← (1/q) Σ_j c_j U_j.
      base_sampler: distribution of U, V and vector z (``"gaussian"``, ``"hash"``, ...).
      stacked: which leaves have a leading layer axis (see :mod:`zojax.perturb`).
      rounding: ``"nearest"`` or ``"stochastic"``: how θ ± εz returns to a 16-bit dtype (see
        :func:`zojax.perturb.stochastic_round`; unbiased c in bfloat16 at ε = 1e-3).
      key: int seed or PRNG key.
    """
    C.check_hyperparams(eps, {} if momentum is None else {"momentum": momentum})
    C.check_rounding(rounding)
    rank, nu = C.static_int("rank", rank, 1), C.static_int("nu", nu, 1)
    q = C.static_int("num_directions", num_directions, 1)
    # Step t's directions use counters t·q + j; V is kept for ν steps, i.e. ν·q counters.
    sampler = P.LowRank(rank, nu * q, P.get_sampler(base_sampler))
    rank_scale = 1.0 / rank if divide_by_rank else 1.0

    def init_fn(params):
        refuse_optax_wrappers()
        _check_ranks(params, stacked, rank)
        state = LOZOState(C.init_info(key, () if q == 1 else (q,)), None, jnp.full((), -1, jnp.int32))
        if momentum is None:
            return state
        flags = P.stack_flags(stacked, params)
        leaves, treedef = jax.tree.flatten(params)
        buffers = []
        for p, flag in zip(leaves, flags):
            shape = p.shape[1:] if flag else p.shape
            lead = p.shape[:1] if flag else ()
            buffers.append(jnp.zeros(lead + ((shape[-1], rank) if len(shape) >= 2 else shape), jnp.float32))
        return state._replace(momentum=treedef.unflatten(buffers))

    def update_fn(updates, state, params=None, *, value_fn=None, **extra_args):
        del updates, extra_args
        C.require_value_fn(value_fn, params)
        info = state.info
        t = info.count
        counters = [t * q + j for j in range(q)]
        ests = [two_point(value_fn, params, sampler, info.key, n, eps, stacked, rounding) for n in counters]
        est = ests[0] if q == 1 else TwoPoint(*(jnp.stack(x) for x in zip(*ests)))
        finite = C.is_finite(est)
        cs = [jnp.where(finite, e.projected_grad, 0.0) for e in ests]
        new_info = C.next_info(info, est, finite)

        def combine(s, xs):
            """(1/q) Σ_j s·c_j·x_j, exactly ``s * c * x`` for q = 1."""
            if q == 1:
                return s * cs[0] * xs[0]
            return sum((s * c / q) * x for c, x in zip(cs, xs))

        if momentum is None:

            def direction(k, p):
                zs = [sampler(k, n, p.shape) for n in counters]
                return (combine(1.0, zs) * (rank_scale if p.ndim >= 2 else 1.0)).astype(p.dtype)

            return P.for_each_leaf(direction, info.key, params, stacked), state._replace(info=new_info)

        beta = momentum
        window = t // nu
        first = state.momentum_window < 0
        moved = state.momentum_window != window

        def step(k, p, n_old):
            if p.ndim < 2:
                zs = [sampler.base(k, n, p.shape) for n in counters]
                n_new = jnp.where(first, combine(1, zs), beta * n_old + combine(1 - beta, zs))
                n_new = jnp.where(finite, n_new, n_old)
                return jnp.where(finite, n_new, 0.0).astype(p.dtype), n_new
            us = [sampler.fresh_factor(k, n, p.shape) for n in counters]
            v = sampler.lazy_factor(k, window, p.shape)
            v_old = sampler.lazy_factor(k, jnp.maximum(state.momentum_window, 0), p.shape)
            carried = jnp.where(moved, n_old @ (v_old.T @ v) / v.shape[0], n_old)
            n_new = jnp.where(first, combine(1, us), beta * carried + combine(1 - beta, us))
            n_new = jnp.where(finite, n_new, n_old)
            d = sampler.outer(v, n_new).reshape(p.shape) * rank_scale
            return jnp.where(finite, d, 0.0).astype(p.dtype), n_new

        pairs = P.for_each_leaf(step, info.key, params, stacked, state.momentum)
        treedef = jax.tree.structure(params)
        updates, new_momentum = (treedef.unflatten(x) for x in zip(*treedef.flatten_up_to(pairs)))
        new_window = jnp.where(finite, window, state.momentum_window)
        return updates, LOZOState(new_info, new_momentum, new_window)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def lozo(
    learning_rate: optax.ScalarOrSchedule,
    eps: float = 1e-3,
    rank: int = 2,
    nu: int = 50,
    momentum: float | None = None,
    *,
    divide_by_rank: bool = False,
    num_directions: int = 1,
    base_sampler: str | P.Sampler = "gaussian",
    stacked: P.Stacked = None,
    rounding: str = "nearest",
    key: int | jnp.ndarray = 0,
) -> optax.GradientTransformationExtraArgs:
    """LOZO, or LOZO-M with ``momentum=β``: ``θ ← θ − η · direction``. See :func:`scale_by_lozo`."""
    C.check_learning_rate(learning_rate)
    return optax.chain(
        scale_by_lozo(
            eps, rank, nu, momentum, divide_by_rank=divide_by_rank, num_directions=num_directions,
            base_sampler=base_sampler, stacked=stacked, rounding=rounding, key=key,
        ),
        optax.scale_by_learning_rate(learning_rate),
    )
