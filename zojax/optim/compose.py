"""Composing zojax transformations with optax: what works, and clear errors where optax's
wrappers cannot work with a transformation that evaluates the loss itself.

Works: ``optax.chain``, ``optax.masked`` / ``optax.multi_transform`` (with
:func:`zojax.fill_masked`), ``optax.inject_hyperparams``, clipping and weight decay after
the direction, and ``optax.MultiSteps`` *after* the direction (accumulating ZO directions).
Refused with an explanation: ``optax.MultiSteps``, ``optax.apply_if_finite`` and
``optax.lookahead`` wrapped *around* a zojax transformation, and an ``optax.chain`` that puts
a moment-keeping transformation (``scale_by_adam``, ``trace``, ...) with a zojax one (use
:func:`chain`).
"""

from __future__ import annotations

import sys
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from zojax.optim.common import ZOInfo

_WRAPPERS = {
    "MultiSteps.init": (
        "optax.MultiSteps accumulates the gradients passed to update() and keeps its inner state "
        "only every k-th call; a zojax transformation computes its own direction from value_fn, so "
        "it would take one ZO step per k calls. For a larger batch at the same memory, average the "
        "loss over micro-batches inside value_fn; for more directions per step pass "
        "num_directions=k; to accumulate k ZO directions put MultiSteps after the direction: "
        "optax.chain(zojax.scale_by_mezo(...), optax.MultiSteps(optax.sgd(lr), k).gradient_transformation())"
    ),
    "apply_if_finite.<locals>.init": (
        "optax.apply_if_finite tests the gradients passed to update(), which a zojax transformation "
        "does not receive; zojax transformations already skip a step whose loss is not finite (no "
        "update, state unchanged, counted in zojax.step_info(state).skipped). Drop apply_if_finite; "
        "to keep later transformations' state (e.g. Adam's moments) on skipped steps, use "
        "zojax.chain(zojax.scale_by_mezo(...), optax.scale_by_adam(), ...)"
    ),
    "lookahead.<locals>.init_fn": (
        "optax.lookahead calls its fast optimizer without extra arguments, so a zojax transformation "
        "inside it cannot receive value_fn; use zojax.lookahead(zojax.mezo(...), sync_period, "
        "slow_step_size), which forwards them"
    ),
}


# optax transformations whose state follows the updates they see (moments, traces): in a
# plain optax.chain after a zojax direction, a skipped step would feed them its zero direction.
_STATEFUL = {
    "scale_by_adam", "scale_by_adamax", "scale_by_amsgrad", "scale_by_adan", "scale_by_belief",
    "scale_by_lion", "scale_by_novograd", "scale_by_radam", "scale_by_rms", "scale_by_rss",
    "scale_by_sm3", "scale_by_yogi", "scale_by_adadelta", "trace", "ema",
}


def _stateful(init_fns) -> str | None:
    """The first of ``init_fns`` (nested chains included) that belongs to a _STATEFUL
    transformation, by name."""
    for fn in init_fns:
        name = getattr(fn, "__qualname__", "").split(".<locals>")[0]
        if name in _STATEFUL:
            return f"optax.{name}"
        if name == "chain" and getattr(fn, "__closure__", None):
            inner = dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__)))
            if found := _stateful(inner.get("init_fns", ())):
                return found
    return None


def refuse_optax_wrappers() -> None:
    """Raise ``TypeError`` (saying what to do) when called from the ``init`` of an optax
    wrapper that cannot drive a zojax transformation, or of an ``optax.chain`` that would
    feed a skipped step's zero direction to a transformation that keeps moments. Runs once
    per ``init``; it reads the Python call stack, nothing in the traced computation."""
    frame = sys._getframe(1)
    for _ in range(64):
        if frame is None:
            return
        if frame.f_globals.get("__name__", "").startswith("optax"):
            message = _WRAPPERS.get(frame.f_code.co_qualname)
            if message:
                raise TypeError(message)
            if frame.f_code.co_qualname == "chain.<locals>.init_fn" and (found := _stateful(frame.f_locals.get("init_fns", ()))):
                raise TypeError(
                    f"optax.chain would hand {found} the zero direction of every skipped ZO step (a step "
                    "whose loss is not finite), moving its state; use zojax.chain(<the zojax transformation>, "
                    f"..., {found}(...), ...) instead: the same updates, with that state held on skipped steps"
                )
        frame = frame.f_back


def _skipped(state) -> jax.Array:
    infos = [x for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, ZOInfo)) if isinstance(x, ZOInfo)]
    if not infos:
        raise ValueError("zojax.chain: the first transformation must contain a zojax transformation")
    return sum(i.skipped for i in infos)


def chain(direction: optax.GradientTransformation, *rest: optax.GradientTransformation,
          update_of_state: Callable[[Any], Any] | None = None) -> optax.GradientTransformationExtraArgs:
    """``optax.chain(direction, *rest)`` in which a skipped ZO step (non-finite loss) leaves the
    state of ``rest`` unchanged and gives a zero update.

    In a plain ``optax.chain`` a skipped step hands a zero direction to the transformations
    after it, so ``scale_by_adam`` decays its moments towards zero; here they are held:
    ``zojax.chain(zojax.scale_by_mezo(1e-3), optax.scale_by_adam(), optax.scale_by_learning_rate(lr))``.
    The state is the tuple ``(direction state, rest state)``.

    ``update_of_state``: optionally, ``rest``'s update as a function of its new state (a
    trace: the trace itself), which it must equal. The update is then read from the held
    state, so that XLA writes the state in place; otherwise the new state, needed both by the
    hold and by the update, is a params-sized temporary (ZO-momentum and ZO-Adam:
    ``benchmarks/memory.py``).
    """
    after = optax.chain(*rest)

    def init_fn(params):
        return (direction.init(params), after.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        zo_state, after_state = state
        d, new_zo = optax.with_extra_args_support(direction).update(updates, zo_state, params, **extra_args)
        skipped = _skipped(new_zo) > _skipped(zo_state)
        u, new_after = after.update(d, after_state, params, **extra_args)
        hold = lambda old, new: jnp.where(skipped, old, new) if isinstance(new, jax.Array) else new
        new_after = jax.tree.map(hold, after_state, new_after)
        if update_of_state is not None:
            u = update_of_state(new_after)
        u = jax.tree.map(lambda x: jnp.where(skipped, jnp.zeros_like(x), x), u)
        return u, (new_zo, new_after)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class LookaheadState(NamedTuple):
    fast: Any  # the fast optimizer's state
    slow: Any  # the slow weights φ (params-sized)
    count: jax.Array  # fast steps since the last synchronisation


def lookahead(fast: optax.GradientTransformation, sync_period: int, slow_step_size: float) -> optax.GradientTransformationExtraArgs:
    """Lookahead (Zhang et al. 2019, arXiv 1907.08610) over any fast optimizer, forwarding
    extra arguments such as ``value_fn``, on plain params:

        θ ← θ + fast update;   every k = ``sync_period`` steps:  φ ← φ + α (θ − φ),  θ ← φ

    The slow weights φ are a params-sized buffer (the price of lookahead). A skipped ZO step
    still counts towards k.
    """
    if not isinstance(sync_period, int) or sync_period < 1:
        raise ValueError(f"sync_period must be an integer >= 1, got {sync_period!r}")
    if not 0 < slow_step_size <= 1:
        raise ValueError(f"slow_step_size must be in (0, 1], got {slow_step_size!r}")
    fast = optax.with_extra_args_support(fast)

    def init_fn(params):
        return LookaheadState(fast.init(params), jax.tree.map(jnp.asarray, params), jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None, **extra_args):
        u, fast_state = fast.update(updates, state.fast, params, **extra_args)
        theta = optax.apply_updates(params, u)
        sync = state.count + 1 == sync_period
        slow = jax.tree.map(lambda s, t: jnp.where(sync, s + slow_step_size * (t - s), s).astype(s.dtype), state.slow, theta)
        target = jax.tree.map(lambda s, t: jnp.where(sync, s, t), slow, theta)
        updates = jax.tree.map(lambda t, p: (t - p).astype(p.dtype), target, params)
        return updates, LookaheadState(fast_state, slow, jnp.where(sync, 0, state.count + 1))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
