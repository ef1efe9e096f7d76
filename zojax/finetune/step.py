"""The one training step, zeroth-order or first-order, used by the fine-tuning loop, the
comparisons (``zojax.compare``) and the benchmarks.

    step = make_step(tx, loss, zeroth_order=True)         # loss(params, *args[, param_hook=None])
    params, opt_state, record = jax.jit(step, donate_argnums=(0, 1))(params, opt_state, *args)

Zeroth-order: ``tx.update(None, state, params, value_fn=...)``; the value function passes
the optimizer's ``param_hook`` on to a loss that takes one, so the model perturbs each layer
where it is used. First-order: ``jax.value_and_grad`` then ``tx.update``.

A step whose loss is not finite is skipped: the parameters are unchanged, whatever else the
chain adds (weight decay); ZO optimizers count such steps themselves and move on to the next
z, first-order state is left as it was. ``step(..., skip=True)`` skips the same way whatever
the loss. The record says whether the new parameters are ``finite``: a reduction over the
step's output, which needs no second copy of them (undoing a non-finite update inside the
donated step would: +152 MB of temporaries on SmolLM2-135M). The loop redoes such a step with
``skip=True`` from the state before it (:mod:`zojax.finetune.loop`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

import zojax
from zojax.estimate import takes_param_hook


@jax.jit
def all_finite(tree) -> jax.Array:
    """Whether every element of every leaf of ``tree`` is finite (a scalar bool): Σ (x − x) is NaN
    exactly when some x is ±inf or NaN. A float sum fuses into one pass over each leaf, where
    ``all(isfinite(x))`` makes XLA write a boolean copy of the leaf first."""
    return jnp.all(jnp.stack([jnp.isfinite(jnp.sum(x - x, dtype=jnp.float32)) for x in jax.tree.leaves(tree)]))


def _first_info(state) -> zojax.StepInfo:
    info = zojax.step_info(state)
    return info if isinstance(info, zojax.StepInfo) else info[0]


def make_step(
    tx: optax.GradientTransformation, loss: Callable, zeroth_order: bool, param_shardings=None, state_shardings=None
) -> Callable:
    """``step(params, opt_state, *args) -> (params, opt_state, record)``, not yet jitted.

    ``loss(params, *args)`` -> scalar, optionally with a ``param_hook=None`` keyword (ZO
    perturbs layer by layer through it). ``record``: ``loss`` (ZO: the mean of f(θ+εz) and
    f(θ−εz)), ``skipped``, ``finite`` (every new parameter is finite), and for ZO ``f_plus``,
    ``f_minus`` and the projected gradient ``c`` (shape (q,) with q directions). ``skip``
    (a bool scalar) skips the step as a non-finite loss would. New params keep
    ``param_shardings`` and the new state ``state_shardings`` if given (see
    :func:`zojax.sharding.state_shardings`: inputs and outputs alike, one compilation).
    """
    hooked = takes_param_hook(loss)

    def step(params, opt_state, *args, skip=False):
        poisoned = lambda value: jnp.where(skip, jnp.nan, value)  # skipped as a non-finite loss is
        if zeroth_order:
            if hooked:
                value_fn = lambda p, param_hook=None: poisoned(loss(p, *args, param_hook=param_hook))
            else:
                value_fn = lambda p: poisoned(loss(p, *args))
            updates, new_state = tx.update(None, opt_state, params, value_fn=value_fn)
            info = _first_info(new_state)
            ok = info.skipped == _first_info(opt_state).skipped
            record = {"loss": jnp.mean((info.f_plus + info.f_minus) / 2), "f_plus": info.f_plus,
                      "f_minus": info.f_minus, "c": info.projected_grad}
        else:
            value, grads = jax.value_and_grad(loss)(params, *args)
            updates, new_state = tx.update(grads, opt_state, params)
            ok = jnp.isfinite(value) & ~jnp.asarray(skip)
            new_state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state, opt_state)
            record = {"loss": value}
        new_params = optax.apply_updates(params, updates)
        new_params = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_params, params)
        if param_shardings is not None:
            new_params = jax.lax.with_sharding_constraint(new_params, param_shardings)
        if state_shardings is not None:
            new_state = jax.lax.with_sharding_constraint(new_state, state_shardings)
        return new_params, new_state, {**record, "skipped": ~ok, "finite": all_finite(new_params)}

    return step
