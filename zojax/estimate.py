"""The two-point (SPSA) estimate of the directional derivative.

    c = (f(θ + εz) − f(θ − εz)) / 2ε,    E_z[c·z] ≈ ∇f(θ) for E[z zᵀ] = I

(Spall 1992; MeZO, Malladi et al. 2023, Algorithm 1). z is regenerated from
``(key, counter)`` by a sampler (:mod:`zojax.perturb`); θ itself is never modified.

``value_fn(params) -> scalar`` is called on the perturbed tree. A model-aware value
function may instead accept a keyword ``param_hook``: it is then called as
``value_fn(params, param_hook=hook)`` with the unperturbed params, and applies the hook
where each layer's weights are used, so the perturbed copy of the model is never held
whole (see :func:`zojax.perturb.make_param_hook`).
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from zojax import perturb as P


class TwoPoint(NamedTuple):
    f_plus: jnp.ndarray
    f_minus: jnp.ndarray
    projected_grad: jnp.ndarray


def takes_param_hook(value_fn) -> bool:
    """Whether ``value_fn`` accepts a ``param_hook`` keyword."""
    try:
        return "param_hook" in inspect.signature(value_fn).parameters
    except (TypeError, ValueError):
        return False


def _is_masked(x) -> bool:
    return isinstance(x, optax.MaskedNode)


def fill_masked(value_fn, full_params):
    """Wrap ``value_fn`` for use inside ``optax.masked`` / ``optax.multi_transform``.

    There a transformation sees only the trained leaves (the others are
    ``optax.MaskedNode``); the wrapped function fills them from ``full_params`` before
    calling ``value_fn``:
    ``value_fn=zojax.fill_masked(lambda p: loss(p, batch), params)``.
    """

    def filled(partial):
        merged = jax.tree.map(lambda part, full: full if _is_masked(part) else part, partial, full_params, is_leaf=_is_masked)
        return value_fn(merged)

    filled.fills_masked = True
    return filled


def two_point(
    value_fn, params, sampler: P.Sampler, key, counter, eps, stacked: P.Stacked = None, rounding: str = "nearest"
) -> TwoPoint:
    """``f(θ+εz)``, ``f(θ−εz)`` and ``c`` for the z of ``(key, counter)``, as float32.
    ``rounding`` is how θ ± εz returns to a 16-bit parameter dtype (see
    :func:`zojax.perturb.stochastic_round`)."""

    if not getattr(value_fn, "fills_masked", False) and any(map(_is_masked, jax.tree.leaves(params, is_leaf=_is_masked))):
        raise ValueError(
            "inside optax.masked/multi_transform a transformation sees only its own leaves (the others "
            "are optax.MaskedNode), and a value_fn taking param_hook needs the full parameter tree: "
            "pass a plain value_fn that sees the whole model, value_fn=zojax.fill_masked(lambda p: loss(p, batch), params)"
        )

    def value(scale):
        if takes_param_hook(value_fn):
            out = value_fn(params, param_hook=P.make_param_hook(sampler, key, counter, scale, rounding))
        else:
            out = value_fn(P.perturb(params, sampler, key, counter, scale, stacked, rounding))
        out = jnp.asarray(out, jnp.float32)
        if out.shape != ():
            raise ValueError(f"value_fn must return a scalar loss, got shape {out.shape}")
        return out

    # Both passes are one loop body run twice, so they share their buffers.
    f_plus, f_minus = jax.lax.map(value, jnp.stack([jnp.asarray(eps, jnp.float32), -jnp.asarray(eps, jnp.float32)]))
    return TwoPoint(f_plus, f_minus, (f_plus - f_minus) / (2 * eps))
