"""The two-point (SPSA) estimate of the directional derivative.

    c = (f(θ + εz) − f(θ − εz)) / 2ε,    E_z[c·z] ≈ ∇f(θ) for E[z zᵀ] = I

(Spall 1992; MeZO, Malladi et al. 2023, Algorithm 1). z is regenerated from
``(key, counter)`` by a sampler (:mod:`zojax.perturb`); θ itself is never modified.

``value_fn(params) -> scalar`` is called on the perturbed tree. A model-aware value
function may instead accept a keyword ``param_hook``: it is then called as
``value_fn(params, param_hook=hook)`` with the unperturbed params, and applies the hook
where each layer's weights are used, so the perturbed copy of the model is never held
whole (see :func:`zojax.perturb.make_param_hook`).

:func:`in_place_update` is the third way, for a plain ``value_fn`` of a model of one's own: the
parameters themselves are perturbed and restored, as MeZO's reference code does, so no perturbed
copy of the model exists.
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

    if isinstance(value_fn, _InPlace):
        return value_fn.two_point(params, sampler, key, counter, eps, stacked, rounding)

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


class _InPlace:
    """A plain value function and the parameters it perturbs in place: :func:`two_point` hands
    the evaluation to :meth:`two_point`. The last estimate's return to θ is owed until
    :meth:`restored` (which XLA fuses into the update) or the next estimate."""

    def __init__(self, value_fn, params):
        self.value_fn, self.params = value_fn, params
        self.owed = None  # the last estimate's return to θ: (fn(params, key) -> params, key)

    def restored(self):
        """The parameters, back at θ."""
        if self.owed is None:
            return self.params
        fn, key = self.owed
        return fn(self.params, key)

    def __call__(self, params):
        return self.value_fn(params)

    def two_point(self, params, sampler, key, counter, eps, stacked, rounding) -> TwoPoint:
        if jax.tree.structure(params) != jax.tree.structure(self.params):
            raise ValueError("in_place_update needs the optimizer to estimate on the whole parameter tree "
                             "(not inside optax.masked or multi_transform)")
        eps = jnp.asarray(eps, jnp.float32)

        def shifted(params, key, a, b):
            """fl(fl(θ + a·z) + b·z) leaf by leaf, z regenerated (and fused) from ``key``."""
            def one(k, p):
                z = sampler(k, counter, p.shape)
                return (p + a * z) + b * z
            return P.for_each_leaf(one, key, params, stacked)

        def body(params, ab):
            # The barrier makes z depend on the iteration, so XLA cannot hoist it out of the loop
            # and materialise it.
            k, ab = jax.lax.optimization_barrier((key, ab))
            params = shifted(params, k, ab[0], ab[1])
            out = jnp.asarray(self.value_fn(params), jnp.float32)
            if out.shape != ():
                raise ValueError(f"value_fn must return a scalar loss, got shape {out.shape}")
            return params, out

        if self.owed is not None:
            # The previous estimate's return to θ, as a loop of one iteration: XLA updates a loop's
            # carry in place, where a plain elementwise pass here would write a second copy.
            fn, k = self.owed
            back = lambda p, _: (fn(*jax.lax.optimization_barrier((p, k))), None)
            self.params = jax.lax.scan(back, self.params, length=1)[0]

        # θ + εz, then (θ+εz − εz) − εz: subtracting εz first gives back θ exactly unless
        # θ + εz rounded across a power of two, so θ − εz is the copy path's value.
        plan = jnp.stack([jnp.stack([eps, 0.0]), jnp.stack([-eps, -eps])])
        self.params, (f_plus, f_minus) = jax.lax.scan(body, self.params, plan)
        self.owed = (lambda params, k: shifted(params, k, eps, 0.0)), key
        return TwoPoint(f_plus, f_minus, (f_plus - f_minus) / (2 * eps))


def in_place_update(tx: optax.GradientTransformation, params, state, value_fn):
    """One zeroth-order step that perturbs ``params`` themselves instead of a copy:

        θ → θ + εz → θ − εz → θ → θ − η·direction      (MeZO, Malladi et al. 2023, Algorithm 1)

    Returns ``(new_params, new_state)``. Inside ``jax.jit`` with ``params`` donated, XLA updates
    the parameters' buffers in place, so the step needs the memory of the forward pass of
    ``value_fn(params) -> scalar`` (a model of one's own, no ``param_hook``) instead of two copies
    of the parameters:

        step = jax.jit(lambda p, s, batch: zojax.in_place_update(tx, p, s, lambda q: loss(q, batch)),
                       donate_argnums=(0, 1))

    The two passes and the return to θ happen in float32 (every parameter must be float32), in
    an order that gives θ back exactly except where θ ± εz crossed a power of two; the rest is a
    rounding error: the parameters drift from the copy path's by about 3e-7 of their norm over
    1,000 steps at ε = 1e-3 and |θ| ~ 0.05 (more for smaller weights or larger ε).
    For the estimators that go through :func:`two_point` (MeZO, LOZO, LOZO-M, AdaMeZO and the
    MeZO-based family); a ``value_fn`` taking ``param_hook`` already perturbs layer by layer
    and is used as it is.
    """
    if takes_param_hook(value_fn):
        updates, state = tx.update(None, state, params, value_fn=value_fn)
        return optax.apply_updates(params, updates), state
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if jnp.result_type(leaf) != jnp.float32:
            raise ValueError(f"in_place_update perturbs float32 parameters only; {P.path_name(path)!r} is {jnp.result_type(leaf)}")
    carrier = _InPlace(value_fn, params)
    updates, state = tx.update(None, state, params, value_fn=carrier)
    return optax.apply_updates(carrier.restored(), updates), state
