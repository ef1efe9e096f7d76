"""MeZO: zeroth-order SGD with dense random directions (Malladi et al. 2023, arXiv 2305.17333).

    c_j = (f(θ + ε z_j) − f(θ − ε z_j)) / 2ε,   j = 1..q
    direction = (1/q) Σ_j c_j z_j,              θ ← θ − η · direction

z_j comes back from ``(key, step·q + j)``; nothing params-sized is stored.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import optax

from zojax import perturb as P
from zojax.estimate import TwoPoint, two_point
from zojax.optim import common as C
from zojax.optim.compose import refuse_optax_wrappers


class MeZOState(NamedTuple):
    info: C.ZOInfo


def scale_by_mezo(
    eps: float = 1e-3,
    *,
    num_directions: int = 1,
    sampler: str | P.Sampler = "gaussian",
    stacked: P.Stacked = None,
    rounding: str = "nearest",
    key: int | jnp.ndarray = 0,
) -> optax.GradientTransformationExtraArgs:
    """The MeZO direction ``(1/q) Σ_j c_j z_j`` (before the learning rate).

    Args:
      eps: perturbation scale ε > 0.
      num_directions: q, the number of two-point estimates averaged per step (2q forwards).
      sampler: z's distribution: ``"gaussian"`` (MeZO's N(0, I), counter-based),
        ``"threefry"`` (N(0, I) from ``jax.random.normal``), ``"hash"``, ``"rademacher"``, or
        a :class:`zojax.perturb.Sampler` such as ``LowRank``.
      stacked: which leaves have a leading layer axis (see :mod:`zojax.perturb`).
      rounding: ``"nearest"`` or ``"stochastic"``: how θ ± εz returns to a 16-bit dtype (see
        :func:`zojax.perturb.stochastic_round`; unbiased c in bfloat16 at ε = 1e-3).
      key: int seed or PRNG key; the same key gives the same trajectory.

    ``update(updates, state, params, *, value_fn)`` evaluates ``value_fn`` 2q times; a
    non-finite loss gives a zero direction and counts the step as skipped.
    """
    C.check_hyperparams(eps)
    C.check_rounding(rounding)
    q = C.static_int("num_directions", num_directions, 1)
    sampler = P.get_sampler(sampler)
    shape = () if q == 1 else (q,)

    def init_fn(params):
        refuse_optax_wrappers()
        del params
        return MeZOState(C.init_info(key, shape))

    def update_fn(updates, state, params=None, *, value_fn=None, **extra_args):
        del updates, extra_args
        C.require_value_fn(value_fn, params)
        info = state.info
        counters = [info.count * q + j for j in range(q)]
        ests = [two_point(value_fn, params, sampler, info.key, n, eps, stacked, rounding) for n in counters]
        est = TwoPoint(*(jnp.stack(x).reshape(shape) for x in zip(*ests)))
        finite = C.is_finite(est)
        weights = [jnp.where(finite, e.projected_grad, 0.0) / q for e in ests]

        def direction(k, p):
            d = sum(w * sampler(k, n, p.shape) for w, n in zip(weights, counters))
            return d.astype(p.dtype)

        updates = P.for_each_leaf(direction, info.key, params, stacked)
        return updates, MeZOState(C.next_info(info, est, finite))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def mezo(
    learning_rate: optax.ScalarOrSchedule,
    eps: float = 1e-3,
    *,
    num_directions: int = 1,
    sampler: str | P.Sampler = "gaussian",
    stacked: P.Stacked = None,
    rounding: str = "nearest",
    key: int | jnp.ndarray = 0,
) -> optax.GradientTransformationExtraArgs:
    """MeZO (ZO-SGD): ``θ ← θ − η (1/q) Σ_j c_j z_j``. See :func:`scale_by_mezo`."""
    C.check_learning_rate(learning_rate)
    return optax.chain(
        scale_by_mezo(eps, num_directions=num_directions, sampler=sampler, stacked=stacked, rounding=rounding, key=key),
        optax.scale_by_learning_rate(learning_rate),
    )
