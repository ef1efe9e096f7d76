"""The rest of the ZO family benchmarked by ZO-Bench (Zhang et al. 2024, arXiv 2402.11592)
and later work, as optax transformations on the zojax estimate.

Each ``scale_by_*`` gives the direction before the learning rate and each alias chains
``scale_by_learning_rate``. ĝ = (1/q) Σ_j c_j z_j is MeZO's estimate (:func:`scale_by_mezo`).
Momentum, ZO-Adam and HiZOO keep params-sized buffers (their methods need them); a skipped
step (non-finite loss) leaves every buffer unchanged.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from zojax import perturb as P
from zojax.estimate import TwoPoint, takes_param_hook
from zojax.optim import common as C
from zojax.optim.compose import chain, refuse_optax_wrappers
from zojax.optim.mezo import MeZOState, scale_by_mezo


def _lr_alias(direction, learning_rate):
    C.check_learning_rate(learning_rate)
    return optax.chain(direction, optax.scale_by_learning_rate(learning_rate))


# --------------------------------------------------------------------------------------
# ZO-SGD-Sign


def scale_by_zo_sign(eps: float = 1e-3, *, num_directions: int = 1, sampler: str | P.Sampler = "gaussian",
                     stacked: P.Stacked = None, rounding: str = "nearest", key=0) -> optax.GradientTransformationExtraArgs:
    """ZO-SignSGD (Liu et al. 2019, arXiv 1810.06376): direction = sign(ĝ) elementwise."""
    inner = scale_by_mezo(eps, num_directions=num_directions, sampler=sampler, stacked=stacked, rounding=rounding, key=key)

    def update_fn(updates, state, params=None, **extra_args):
        d, state = inner.update(updates, state, params, **extra_args)
        return jax.tree.map(jnp.sign, d), state

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)


def zo_sign(learning_rate, eps: float = 1e-3, **kwargs) -> optax.GradientTransformationExtraArgs:
    """ZO-SGD-Sign: ``θ ← θ − η sign(ĝ)``. See :func:`scale_by_zo_sign`."""
    return _lr_alias(scale_by_zo_sign(eps, **kwargs), learning_rate)


# --------------------------------------------------------------------------------------
# ZO-SGD with momentum, ZO-Adam


def scale_by_zo_momentum(eps: float = 1e-3, momentum: float = 0.9, *, num_directions: int = 1,
                         sampler: str | P.Sampler = "gaussian", stacked: P.Stacked = None, rounding: str = "nearest",
                         key=0) -> optax.GradientTransformationExtraArgs:
    """ZO-SGD with heavy-ball momentum (ZO-Bench's ZO-SGD-MMT): m ← β m + ĝ, direction = m
    (``optax.trace``; m is params-sized, held on skipped steps and updated in place). State:
    (MeZO, (trace,))."""
    C.check_hyperparams(eps, {"momentum": momentum})
    return chain(scale_by_mezo(eps, num_directions=num_directions, sampler=sampler, stacked=stacked,
                               rounding=rounding, key=key), optax.trace(decay=momentum),
                 update_of_state=lambda state: state[0].trace)


def zo_momentum(learning_rate, eps: float = 1e-3, momentum: float = 0.9, **kwargs) -> optax.GradientTransformationExtraArgs:
    """ZO-SGD with momentum: ``m ← β m + ĝ, θ ← θ − η m``. See :func:`scale_by_zo_momentum`."""
    return _lr_alias(scale_by_zo_momentum(eps, momentum, **kwargs), learning_rate)


def scale_by_zo_adam(eps: float = 1e-3, b1: float = 0.9, b2: float = 0.999, adam_eps: float = 1e-8, *,
                     num_directions: int = 1, sampler: str | P.Sampler = "gaussian", stacked: P.Stacked = None,
                     rounding: str = "nearest", key=0) -> optax.GradientTransformationExtraArgs:
    """ZO-Adam (ZO-Bench; Chen et al. 2019, ZO-AdaMM, arXiv 1910.06513): Adam's moments on ĝ,

        m ← β1 m + (1−β1) ĝ,  v ← β2 v + (1−β2) ĝ²,  direction = m̂ / (√v̂ + ε_adam)

    with bias correction (``optax.scale_by_adam``). Skip-aware: a skipped step leaves m, v and
    Adam's step count unchanged (see :func:`zojax.chain`); m and v are updated in place."""
    C.check_hyperparams(eps, {"b1": b1, "b2": b2})

    def adam_update(state):  # optax.scale_by_adam's update from its new state, the same operations
        (adam,) = state
        count = jnp.maximum(adam.count, 1)  # 0 only when the first step is skipped: no 0/0 then
        m_hat = optax.tree.bias_correction(adam.mu, b1, count)
        v_hat = optax.tree.bias_correction(adam.nu, b2, count)
        return jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + adam_eps), m_hat, v_hat)

    return chain(scale_by_mezo(eps, num_directions=num_directions, sampler=sampler, stacked=stacked,
                               rounding=rounding, key=key), optax.scale_by_adam(b1, b2, adam_eps),
                 update_of_state=adam_update)


def zo_adam(learning_rate, eps: float = 1e-3, b1: float = 0.9, b2: float = 0.999, **kwargs) -> optax.GradientTransformationExtraArgs:
    """ZO-Adam: ``θ ← θ − η m̂ / (√v̂ + ε)``. See :func:`scale_by_zo_adam`."""
    return _lr_alias(scale_by_zo_adam(eps, b1, b2, **kwargs), learning_rate)


# --------------------------------------------------------------------------------------
# ZO-SGD-Cons


def scale_by_zo_cons(learning_rate: optax.ScalarOrSchedule, eps: float = 1e-3, *, sampler: str | P.Sampler = "gaussian",
                     stacked: P.Stacked = None, rounding: str = "nearest", key=0) -> optax.GradientTransformationExtraArgs:
    """ZO-SGD-Cons (ZO-Bench's conservative ZO-SGD): of θ, θ − ηĝ and θ + ηĝ keep the one with
    the lowest loss; direction = ĝ, −ĝ or 0 accordingly, so that a following
    ``scale_by_learning_rate(η)`` lands on it. Five forward passes per step (two for ĝ, three
    for the candidates); η (or its schedule at this step) is needed to place the candidates.
    A non-finite candidate is never chosen. State: :class:`MeZOState`."""
    C.check_learning_rate(learning_rate)
    inner = scale_by_mezo(eps, sampler=sampler, stacked=stacked, rounding=rounding, key=key)
    sampler = P.get_sampler(sampler)

    def init_fn(params):
        refuse_optax_wrappers()
        return inner.init(params)

    def update_fn(updates, state, params=None, *, value_fn=None, **extra_args):
        del updates, extra_args
        C.require_value_fn(value_fn, params)
        t = state.info.count
        d, state = inner.update(None, state, params, value_fn=value_fn)
        info = state.info
        c = jnp.where(jnp.isfinite(info.projected_grad), info.projected_grad, 0.0)
        eta = learning_rate(t) if callable(learning_rate) else learning_rate

        def value(scale):  # f(θ + scale·z), scale = −s·η·c for candidate s
            if takes_param_hook(value_fn):
                return jnp.asarray(value_fn(params, param_hook=P.make_param_hook(sampler, state.info.key, t, scale, rounding)), jnp.float32)
            return jnp.asarray(value_fn(P.perturb(params, sampler, state.info.key, t, scale, stacked, rounding)), jnp.float32)

        f = jax.lax.map(value, jnp.stack([0.0, -eta * c, eta * c]).astype(jnp.float32))
        f = jnp.where(jnp.isfinite(f), f, jnp.inf)
        pick = jnp.argmin(f)  # ties keep θ
        choice = jnp.asarray([0, -1, 1], jnp.int32)[pick]
        choice = jnp.where(jnp.isfinite(f[0]) | (pick > 0), choice, 0)
        updates = jax.tree.map(lambda x: (-choice * x.astype(jnp.float32)).astype(x.dtype), d)
        return updates, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def zo_cons(learning_rate, eps: float = 1e-3, **kwargs) -> optax.GradientTransformationExtraArgs:
    """ZO-SGD-Cons: ``θ ← argmin_{θ, θ−ηĝ, θ+ηĝ} f``. See :func:`scale_by_zo_cons`."""
    return _lr_alias(scale_by_zo_cons(learning_rate, eps, **kwargs), learning_rate)


# --------------------------------------------------------------------------------------
# Forward gradient


def scale_by_forward_gradient(*, num_directions: int = 1, sampler: str | P.Sampler = "gaussian",
                              stacked: P.Stacked = None, key=0) -> optax.GradientTransformationExtraArgs:
    """Forward gradient (Baydin et al. 2022, arXiv 2202.08587): direction = (1/q) Σ_j (∇f·z_j) z_j,
    the exact directional derivative ∇f·z from one forward-mode pass (``jax.jvp`` of
    s ↦ f(θ + s z) at s = 0), unbiased for E[z zᵀ] = I. No ε; a ``value_fn`` taking
    ``param_hook`` gets z applied where each weight is used, as for the two-point methods.
    The step record holds f(θ) in both ``f_plus`` and ``f_minus`` and ∇f·z as c."""
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

        def along(n):
            def f(s):
                if takes_param_hook(value_fn):
                    return jnp.asarray(value_fn(params, param_hook=P.make_param_hook(sampler, info.key, n, s)), jnp.float32)
                return jnp.asarray(value_fn(P.perturb(params, sampler, info.key, n, s, stacked)), jnp.float32)

            return jax.jvp(f, (jnp.float32(0.0),), (jnp.float32(1.0),))

        pairs = [along(n) for n in counters]
        f0 = jnp.stack([p[0] for p in pairs]).reshape(shape)
        dd = jnp.stack([p[1] for p in pairs]).reshape(shape)
        est = TwoPoint(f0, f0, dd)
        finite = C.is_finite(est) & jnp.all(jnp.isfinite(dd))
        weights = [jnp.where(finite, p[1], 0.0) / q for p in pairs]

        def direction(k, p):
            return sum(w * sampler(k, n, p.shape) for w, n in zip(weights, counters)).astype(p.dtype)

        return P.for_each_leaf(direction, info.key, params, stacked), MeZOState(C.next_info(info, est, finite))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def forward_gradient(learning_rate, **kwargs) -> optax.GradientTransformationExtraArgs:
    """Forward-gradient descent: ``θ ← θ − η (∇f·z) z``. See :func:`scale_by_forward_gradient`."""
    return _lr_alias(scale_by_forward_gradient(**kwargs), learning_rate)


# --------------------------------------------------------------------------------------
# HiZOO


class HiZOOState(NamedTuple):
    info: C.ZOInfo
    hessian: Any  # per leaf: the diagonal Hessian estimate H (float32, params-sized), from ones


def scale_by_hizoo(eps: float = 1e-3, hessian_smooth: float = 1e-6, *, sampler: str | P.Sampler = "gaussian",
                   stacked: P.Stacked = None, key=0) -> optax.GradientTransformationExtraArgs:
    """HiZOO (Zhao et al. 2024, arXiv 2402.15173), as its official trainer: three evaluations,
    f(θ), f(θ ± ε z/√H), then

        H ← (1 − α) H + α |f₊ + f₋ − 2f(θ)| H z² / (2ε²),   direction = (f₊ − f₋)/(2ε) · z / √H

    with the updated H, α = ``hessian_smooth`` (the trainer's schedules are constants
    0 … 1e-2; its default 0 keeps H = 1, i.e. MeZO with an extra forward). H is a float32
    params-sized buffer. ``value_fn`` is called on the perturbed tree (z/√H is per element, so
    no layer hook)."""
    C.check_hyperparams(eps)
    C.check("hessian_smooth", hessian_smooth, 0 <= hessian_smooth < 1, "in [0, 1)")
    sampler = P.get_sampler(sampler)

    def init_fn(params):
        refuse_optax_wrappers()
        ones = jax.tree.map(lambda p: jnp.ones(p.shape, jnp.float32), params)
        return HiZOOState(C.init_info(key), ones)

    def update_fn(updates, state, params=None, *, value_fn=None, **extra_args):
        del updates, extra_args
        C.require_value_fn(value_fn, params)
        info = state.info
        t = info.count

        def value(scale):
            shift = lambda k, p, h: scale * sampler(k, t, p.shape) / jnp.sqrt(h)
            tree = P.for_each_leaf(lambda k, p, h: (p.astype(jnp.float32) + shift(k, p, h)).astype(p.dtype),
                                   info.key, params, stacked, state.hessian)
            out = jnp.asarray(value_fn(tree), jnp.float32)
            if out.shape != ():
                raise ValueError(f"value_fn must return a scalar loss, got shape {out.shape}")
            return out

        f0, f_plus, f_minus = jax.lax.map(value, jnp.asarray([0.0, eps, -eps], jnp.float32))
        est = TwoPoint(f_plus, f_minus, (f_plus - f_minus) / (2 * eps))
        finite = C.is_finite(est) & jnp.isfinite(f0)
        curvature = jnp.abs(f_plus + f_minus - 2 * f0) / (2 * eps * eps)
        c = jnp.where(finite, est.projected_grad, 0.0)

        def step(k, p, h):
            z = sampler(k, t, p.shape)
            h_new = (1 - hessian_smooth) * h + hessian_smooth * curvature * h * z * z
            h_new = jnp.where(finite, h_new, h)
            return (c * z / jnp.sqrt(h_new)).astype(p.dtype), h_new

        pairs = P.for_each_leaf(step, info.key, params, stacked, state.hessian)
        treedef = jax.tree.structure(params)
        updates, hessian = (treedef.unflatten(x) for x in zip(*treedef.flatten_up_to(pairs)))
        return updates, HiZOOState(C.next_info(info, est, finite), hessian)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def hizoo(learning_rate, eps: float = 1e-3, hessian_smooth: float = 1e-6, **kwargs) -> optax.GradientTransformationExtraArgs:
    """HiZOO: ``θ ← θ − η c z / √H``. See :func:`scale_by_hizoo`."""
    return _lr_alias(scale_by_hizoo(eps, hessian_smooth, **kwargs), learning_rate)
