"""AdaMeZO: Adam-style zeroth-order steps whose moments are rebuilt, never stored
(Cai, Chen & Zhu 2026, arXiv 2605.00650).

The state keeps the z counters and projected gradients c of the last h applied steps (a
ring buffer: 2hq numbers). Each update replays them leaf by leaf, k = 0 the current step,
g_k = (1/q) Σ_j c_{t−k,j} z_{t−k,j} the step's q-direction estimate:

    m = Σ_{k<n} β1^k g_k,    v = Σ_{k<n} β2^k g_k²,    n = min(applied steps, h)

``form="official"`` (default; the authors' trainer line by line, so published learning
rates transfer): direction = s · m / (√v + δ) with s = 100, δ = 1e-5, after a warm-up of
h + 1 plain MeZO steps (direction = g_0): the trainer counts steps from 0 and takes MeZO
steps while ``total_steps <= hw``. Its edge cases are kept: h < 2 runs plain MeZO forever,
and β2 = 0 uses v = 1 (direction = s · m / (1 + δ)).

``form="paper"``: Adam's form with (1 − β) factors and bias correction for the truncated
sums, from the first step, with no special cases (h = 1 or β2 = 0 give a sign-like step
s · g_0 / √(g_0² + δ)):
    m̂ = (1 − β1) m / (1 − β1^n),  v̂ = (1 − β2) v / (1 − β2^n),  direction = s · m̂ / √(v̂ + δ)
with s = 1 unless given.

Any sampler works; ``sampler=zojax.perturb.LowRank(rank, nu)`` gives Adam-style moments
on LOZO's low-rank directions. Skipped (non-finite) steps leave the history, the warm-up
count and the moments untouched.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from zojax import perturb as P
from zojax.estimate import TwoPoint, two_point
from zojax.optim import common as C
from zojax.optim.compose import refuse_optax_wrappers


class AdaMeZOState(NamedTuple):
    info: C.ZOInfo
    history_counter: jax.Array  # int32[h] (int32[h, q] for q > 1): z counters of the last h applied steps
    history_grad: jax.Array  # float32 like history_counter: their projected gradients c
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
    num_directions: int = 1,
    sampler: str | P.Sampler = "gaussian",
    stacked: P.Stacked = None,
    rounding: str = "nearest",
    key: int | jnp.ndarray = 0,
) -> optax.GradientTransformationExtraArgs:
    """The AdaMeZO direction (before the learning rate); see the module docstring.

    Args:
      eps: perturbation scale ε > 0.
      b1, b2: moment decays β1, β2 in [0, 1).
      horizon: h >= 1, number of past steps replayed (official form: h < 2 is plain MeZO).
      form: ``"official"`` or ``"paper"``.
      scale: s; default 100 (official) or 1 (paper).
      delta: δ > 0, outside the root (official) or inside it (paper).
      num_directions: q two-point estimates per step (2q forwards), averaged into g.
      sampler: z's distribution (see :func:`zojax.perturb.get_sampler`); a
        :class:`zojax.perturb.LowRank` with q > 1 keeps V for ν steps, not ν counters.
      stacked: which leaves have a leading layer axis.
      rounding: ``"nearest"`` or ``"stochastic"``: how θ ± εz returns to a 16-bit dtype (see
        :func:`zojax.perturb.stochastic_round`; unbiased c in bfloat16 at ε = 1e-3).
      key: int seed or PRNG key.
    """
    C.check_hyperparams(eps, {"b1": b1, "b2": b2})
    C.check_rounding(rounding)
    h = C.static_int("horizon", horizon, 1)
    q = C.static_int("num_directions", num_directions, 1)
    C.check("delta", delta, delta > 0, "> 0")
    if form not in ("official", "paper"):
        raise ValueError(f"form must be 'official' or 'paper', got {form!r}")
    scale = (100.0 if form == "official" else 1.0) if scale is None else scale
    sampler = C.per_step_sampler(P.get_sampler(sampler), q)
    hist_shape = (h,) if q == 1 else (h, q)
    replays = form == "paper" or h >= 2  # the official form with h < 2 never leaves the warm-up

    def init_fn(params):
        refuse_optax_wrappers()
        del params
        return AdaMeZOState(
            C.init_info(key, () if q == 1 else (q,)),
            jnp.zeros(hist_shape, jnp.int32),
            jnp.zeros(hist_shape, jnp.float32),
            jnp.zeros((), jnp.int32),
        )

    def update_fn(updates, state, params=None, *, value_fn=None, **extra_args):
        del updates, extra_args
        C.require_value_fn(value_fn, params)
        info = state.info
        counters_now = [info.count * q + j for j in range(q)]
        ests = [two_point(value_fn, params, sampler, info.key, n, eps, stacked, rounding) for n in counters_now]
        est = ests[0] if q == 1 else TwoPoint(*(jnp.stack(x) for x in zip(*ests)))
        finite = C.is_finite(est)
        c_now = [jnp.where(finite, e.projected_grad, 0.0) for e in ests]

        slot = state.applied % h
        now = jnp.stack(counters_now).reshape(hist_shape[1:]).astype(jnp.int32)
        counters = jnp.where(finite, state.history_counter.at[slot].set(now), state.history_counter)
        grads = jnp.where(finite, state.history_grad.at[slot].set(jnp.stack(c_now).reshape(hist_shape[1:])), state.history_grad)
        counters2, grads2 = counters.reshape(h, q), grads.reshape(h, q)
        applied = state.applied + finite.astype(jnp.int32)
        n = jnp.minimum(applied, h)
        age = (applied - 1 - jnp.arange(h)) % h
        live = age < n
        w1 = jnp.where(live, b1**age, 0.0)
        w2 = jnp.where(live, b2**age, 0.0)
        if form == "paper":
            w1 = w1 * (1 - b1) / (1 - b1**n)
            w2 = w2 * (1 - b2) / (1 - b2**n)

        def estimate(k, shape, cs, ns):
            """g = (1/q) Σ_j cs[j] z(ns[j])."""
            g = cs[0] * sampler(k, ns[0], shape)
            for j in range(1, q):
                g = g + cs[j] * sampler(k, ns[j], shape)
            return g if q == 1 else g / q

        def moments_and_now(k, p):
            """m, v and g_0 (the current step's estimate, ring slot ``slot``), in one unrolled
            pass: an elementwise function of the element index that XLA fuses into the update,
            so no m, v or z is materialised and each of the h directions is drawn once."""
            m = v = g_now = 0.0
            for i in range(h):
                g = estimate(k, p.shape, grads2[i], counters2[i])
                m, v = m + w1[i] * g, v + w2[i] * g * g
                g_now = jnp.where(slot == i, g, g_now)
            return m, v, g_now

        def moments(k, p):
            if P.is_elementwise(sampler):
                return moments_and_now(k, p)[:2]

            def add(i, mv):
                g = estimate(k, p.shape, grads2[i], counters2[i])
                return mv[0] + w1[i] * g, mv[1] + w2[i] * g * g

            zeros = jnp.zeros(p.shape, jnp.float32)
            return jax.lax.fori_loop(0, h, add, (zeros, zeros))

        def adam_of(m, v):
            if form == "paper":
                return scale * m / jnp.sqrt(v + delta)
            v = jnp.where(jnp.asarray(b2) == 0, 1.0, v)  # the official code's β2 = 0 case
            return scale * m / (jnp.sqrt(v) + delta)

        def adam(k, p):
            return adam_of(*moments(k, p))

        def plain(k, p):
            return estimate(k, p.shape, c_now, counters_now)

        # The official trainer's warm-up: MeZO steps while total_steps (from 0) <= h.
        warm = state.applied <= h

        def direction(k, p):
            if form == "paper":
                d = adam(k, p)
            elif not replays:
                d = plain(k, p)
            elif P.is_elementwise(sampler):  # both sides from one fused replay
                m, v, g_now = moments_and_now(k, p)
                d = jnp.where(warm, g_now, adam_of(m, v))
            else:
                d = jax.lax.cond(warm, plain, adam, k, p)
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
    num_directions: int = 1,
    sampler: str | P.Sampler = "gaussian",
    stacked: P.Stacked = None,
    rounding: str = "nearest",
    key: int | jnp.ndarray = 0,
) -> optax.GradientTransformationExtraArgs:
    """AdaMeZO: ``θ ← θ − η · direction``. See :func:`scale_by_adamezo`."""
    C.check_learning_rate(learning_rate)
    return optax.chain(
        scale_by_adamezo(
            eps, b1, b2, horizon, form=form, scale=scale, delta=delta, num_directions=num_directions,
            sampler=sampler, stacked=stacked, rounding=rounding, key=key,
        ),
        optax.scale_by_learning_rate(learning_rate),
    )
