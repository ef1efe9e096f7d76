"""zojax.in_place_update: a step that perturbs the parameters themselves, for a model of one's own."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import zojax
from zojax import perturb as P

EPS = 1e-3


class MLP(nnx.Module):
    def __init__(self, sizes, rngs):
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else jnp.tanh(layer(x))
        return x


def mlp_problem(sizes=(16, 32, 32, 4), batch=8, seed=0):
    """A Flax MLP's float32 parameters (kernels ~ N(0, 0.05²), nonzero biases) and its MSE loss."""
    graphdef, state = nnx.split(MLP(sizes, nnx.Rngs(seed)))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.05, a.shape), jnp.float32), nnx.to_pure_dict(state))
    x = jnp.asarray(rng.normal(size=(batch, sizes[0])), jnp.float32)
    y = jnp.asarray(rng.normal(size=(batch, sizes[-1])), jnp.float32)

    def loss(p):
        model = nnx.merge(graphdef, p)
        return jnp.mean((model(x) - y) ** 2)

    return params, loss


OPTIMIZERS = {  # name -> (learning rate, q directions a step) -> transformation
    "mezo": lambda lr, q=1: zojax.mezo(lr, EPS, num_directions=q, key=3),
    "lozo": lambda lr, q=1: zojax.lozo(lr, EPS, rank=2, nu=5, num_directions=q, key=3),
    "adamezo": lambda lr, q=1: zojax.adamezo(lr, EPS, horizon=4, num_directions=q, key=3),
}


def copy_step(tx, loss):
    def step(params, state):
        updates, state = tx.update(None, state, params, value_fn=loss)
        return optax.apply_updates(params, updates), state

    return step


def in_place_step(tx, loss):
    return lambda params, state: zojax.in_place_update(tx, params, state, loss)


def flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)]).astype(np.float64)


def run(step, params, state, steps):
    """``steps`` jitted steps: the final params and every step's f(θ+εz)."""

    def body(carry, _):
        params, state = step(*carry)
        return (params, state), zojax.step_info(state).f_plus

    (params, _), f_plus = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), None, length=steps))(params, state)
    return flat(params), np.asarray(f_plus)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_the_drift_of_a_thousand_in_place_steps_is_below_1e_6_of_the_parameters(name):
    """At learning rate 0 the copy path keeps θ exactly; what the in-place path moves is the
    rounding of its θ → θ + εz → θ − εz → θ round trips."""
    params, loss = mlp_problem()
    tx = OPTIMIZERS[name](lambda count: 0.0)
    theta, _ = run(in_place_step(tx, loss), params, tx.init(params), 1000)
    drift = np.linalg.norm(theta - flat(params)) / np.linalg.norm(flat(params))
    assert 0 < drift < 1e-6


@pytest.mark.parametrize("name, lr, q", [("mezo", 1e-4, 1), ("lozo", 1e-4, 1), ("adamezo", 1e-6, 1), ("mezo", 2e-4, 2), ("lozo", 2e-4, 3)])
def test_in_place_training_follows_the_copy_path(name, lr, q):
    params, loss = mlp_problem()
    tx = OPTIMIZERS[name](lr, q)
    copied, copy_losses = run(copy_step(tx, loss), params, tx.init(params), 1000)
    in_place, in_place_losses = run(in_place_step(tx, loss), params, tx.init(params), 1000)
    start = flat(params)
    assert np.linalg.norm(copied - start) > 0.05 * np.linalg.norm(start)  # training moved θ by 5 %
    assert np.linalg.norm(in_place - copied) < 1e-4 * np.linalg.norm(copied - start)
    assert copy_losses[-100:].mean() < copy_losses[:100].mean() - 0.02
    np.testing.assert_allclose(in_place_losses, copy_losses, rtol=1e-5)


def test_an_in_place_round_trip_gives_theta_back_and_evaluates_theta_plus_and_minus_eps_z():
    """At learning rate 0 one step returns θ exactly for almost every element (where θ ± εz
    rounded across a power of two: within 2 ulp of |θ| + 2ε|z|), and f± are the loss at θ ± εz,
    z the sampler's."""
    params, loss = mlp_problem()
    tx = zojax.mezo(lambda count: 0.0, EPS, key=3)
    new, state = jax.jit(in_place_step(tx, loss))(params, tx.init(params))
    z = P.sample(P.Gaussian(), P.as_key(3), 0, params)
    theta, got = flat(params).astype(np.float32), flat(new).astype(np.float32)
    assert np.all(np.abs(got - theta) <= 2 * np.spacing(np.abs(theta) + 2 * EPS * np.abs(flat(z)).astype(np.float32)))
    assert np.mean(got == theta) > 0.95
    shifted = lambda sign: jax.tree.map(lambda t, z: t + sign * EPS * z, params, z)
    np.testing.assert_allclose(zojax.step_info(state).f_plus, loss(shifted(1)), rtol=1e-6)
    np.testing.assert_allclose(zojax.step_info(state).f_minus, loss(shifted(-1)), rtol=1e-6)


def test_the_in_place_step_needs_the_memory_of_the_forward_pass():
    """Compiled peak (XLA memory_analysis) of the donated step against the forward's: the copy
    path holds θ and θ + εz, the in-place path only θ, with one direction a step or several."""
    params, loss = mlp_problem(sizes=(256, 1024, 1024, 1024, 256), batch=4)

    def peak(fn, *args, donate=()):
        m = jax.jit(fn, donate_argnums=donate).lower(*args).compile().memory_analysis()
        return m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes

    forward = peak(loss, params)
    for name, make in OPTIMIZERS.items():
        for q in (1, 3):
            tx = make(1e-3, q)
            state = tx.init(params)
            assert peak(in_place_step(tx, loss), params, state, donate=(0, 1)) <= 1.10 * forward, (name, q)
            if q == 1:  # the contrast (a q = 3 copy compiles for as long again)
                assert peak(copy_step(tx, loss), params, state, donate=(0, 1)) >= 1.8 * forward, name


def test_in_place_refuses_parameters_that_are_not_float32():
    params, loss = mlp_problem()
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    tx = zojax.mezo(1e-3)
    with pytest.raises(ValueError, match=r"float32 parameters only; 'layers/0/bias' is bfloat16"):
        zojax.in_place_update(tx, params, tx.init(params), loss)
