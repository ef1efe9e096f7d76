"""AdaMeZO: Adam-style zeroth-order steps whose moments are rebuilt, never stored
(Cai, Chen & Zhu 2026, arXiv 2605.00650).

The state keeps the z counters and projected gradients c of the last h applied steps (a
ring buffer: 2h numbers). Each update replays them leaf by leaf, k = 0 the current step:

    m = Σ_{k<n} β1^k c_{t−k} z_{t−k},    v = Σ_{k<n} β2^k c_{t−k}² z_{t−k}²,    n = min(steps, h)

``form="official"`` (default; reproduces the authors' code, so published learning rates
transfer): direction = s · m / (√v + δ) with s = 100, δ = 1e-5, and plain MeZO
(direction = c_t z_t) while fewer than h steps have been applied, i.e. for the first h.

``form="paper"``: Adam's form with (1 − β) factors and bias correction for the truncated
sums, from the first step:
    m̂ = (1 − β1) m / (1 − β1^n),  v̂ = (1 − β2) v / (1 − β2^n),  direction = s · m̂ / √(v̂ + δ)
with s = 1 unless given.

Any sampler works; ``sampler=zojax.perturb.LowRank(rank, nu)`` gives Adam-style moments
on LOZO's low-rank directions.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from zojax import perturb as P
from zojax.estimate import two_point
from zojax.optim import common as C


class AdaMeZOState(NamedTuple):
    info: C.ZOInfo
    history_counter: jax.Array  # int32[h]: z counters of the last h applied steps (ring buffer)
    history_grad: jax.Array  # float32[h]: their projected gradients c
    applied: jax.Array  # int32: steps applied so far (the ring's write position is applied % h)


def scale_by_adamezo(
    eps: float = 1e-3,
    b1: float = 0.7,
    b2: float = 0.9,
    horizon: int = 10,
    *,
    form: Literal["official", "paper"] = "official",
    scale: float | None = None,
    delta: float = 1e-5,
    sampler: str | P.Sampler = "gaussian",
    stacked: P.Stacked = None,
    key: int | jnp.ndarray = 0,
) -> optax.GradientTransformationExtraArgs:
    """The AdaMeZO direction (before the learning rate); see the module docstring.

    Args:
      eps: perturbation scale ε > 0.
      b1, b2: moment decays β1, β2 in [0, 1).
      horizon: h >= 1, number of past steps replayed.
      form: ``"official"`` or ``"paper"``.
      scale: s; default 100 (official) or 1 (paper).
      delta: δ > 0, outside the root (official) or inside it (paper).
      sampler: z's distribution (see :func:`zojax.perturb.get_sampler`).
      stacked: which leaves have a leading layer axis.
      key: int seed or PRNG key.
    """
    C.check_hyperparams(eps, {"b1": b1, "b2": b2})
    h = C.static_int("horizon", horizon, 1)
    C.check("delta", delta, delta > 0, "> 0")
    if form not in ("official", "paper"):
        raise ValueError(f"form must be 'official' or 'paper', got {form!r}")
    scale = (100.0 if form == "official" else 1.0) if scale is None else scale
    sampler = P.get_sampler(sampler)

    def init_fn(params):
        del params
        return AdaMeZOState(
            C.init_info(key), jnp.zeros((h,), jnp.int32), jnp.zeros((h,), jnp.float32), jnp.zeros((), jnp.int32)
        )

    def update_fn(updates, state, params=None, *, value_fn=None, **extra_args):
        del updates, extra_args
        C.require_value_fn(value_fn, params)
        info = state.info
        t = info.count
        est = two_point(value_fn, params, sampler, info.key, t, eps, stacked)
        finite = C.is_finite(est)
        c = jnp.where(finite, est.projected_grad, 0.0)

        slot = state.applied % h
        counters = jnp.where(finite, state.history_counter.at[slot].set(t), state.history_counter)
        grads = jnp.where(finite, state.history_grad.at[slot].set(c), state.history_grad)
        applied = state.applied + finite.astype(jnp.int32)
        n = jnp.minimum(applied, h)
        age = (applied - 1 - jnp.arange(h)) % h
        live = age < n
        w1 = jnp.where(live, b1**age, 0.0) * grads
        w2 = jnp.where(live, b2**age, 0.0) * grads**2
        if form == "paper":
            w1 = w1 * (1 - b1) / (1 - b1**n)
            w2 = w2 * (1 - b2) / (1 - b2**n)

        def moments(k, p):
            if P.is_elementwise(sampler):
                # Unrolled, the sums are an elementwise function of the element index that XLA
                # fuses into the update: no m, v or z is materialised.
                m = v = 0.0
                for i in range(h):
                    z = sampler(k, counters[i], p.shape)
                    m, v = m + w1[i] * z, v + w2[i] * z * z
                return m, v

            def add(i, mv):
                z = sampler(k, counters[i], p.shape)
                return mv[0] + w1[i] * z, mv[1] + w2[i] * z * z

            zeros = jnp.zeros(p.shape, jnp.float32)
            return jax.lax.fori_loop(0, h, add, (zeros, zeros))

        def adam(k, p):
            m, v = moments(k, p)
            return scale * m / (jnp.sqrt(v + delta) if form == "paper" else jnp.sqrt(v) + delta)

        def direction(k, p):
            if form == "paper":
                d = adam(k, p)
            elif P.is_elementwise(sampler):  # both sides computed, and fused
                d = jnp.where(state.applied >= h, adam(k, p), c * sampler(k, t, p.shape))
            else:
                d = jax.lax.cond(state.applied >= h, adam, lambda k, p: c * sampler(k, t, p.shape), k, p)
            return jnp.where(finite, d, 0.0).astype(p.dtype)

        updates = P.for_each_leaf(direction, info.key, params, stacked)
        return updates, AdaMeZOState(C.next_info(info, est, finite), counters, grads, applied)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adamezo(
    learning_rate: optax.ScalarOrSchedule,
    eps: float = 1e-3,
    b1: float = 0.7,
    b2: float = 0.9,
    horizon: int = 10,
    *,
    form: Literal["official", "paper"] = "official",
    scale: float | None = None,
    delta: float = 1e-5,
    sampler: str | P.Sampler = "gaussian",
    stacked: P.Stacked = None,
    key: int | jnp.ndarray = 0,
) -> optax.GradientTransformationExtraArgs:
    """AdaMeZO: ``θ ← θ − η · direction``. See :func:`scale_by_adamezo`."""
    return optax.chain(
        scale_by_adamezo(
            eps, b1, b2, horizon, form=form, scale=scale, delta=delta, sampler=sampler, stacked=stacked, key=key
        ),
        optax.scale_by_learning_rate(learning_rate),
    )
