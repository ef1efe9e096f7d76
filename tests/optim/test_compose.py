"""optax wrappers around and after zojax transformations: each works or says what to do."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zojax
from zojax.compare import memory_stats
from zojax.optim import registry

PARAMS = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32), "b": jnp.zeros((3,))}


def loss(p):
    return jnp.sum((p["w"] - 1.0) ** 2) + jnp.sum(p["b"] ** 2 * jnp.arange(1, 4))


def close(a, b, **kw):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw), a, b)


@pytest.mark.parametrize(
    "wrap, message",
    [
        (lambda tx: optax.MultiSteps(tx, 2), r"MultiSteps after the direction"),
        (lambda tx: optax.apply_if_finite(tx, 3), r"Drop apply_if_finite.*zojax.chain"),
        (lambda tx: optax.lookahead(tx, 3, 0.5), r"zojax.lookahead"),
    ],
    ids=["MultiSteps", "apply_if_finite", "lookahead"],
)
@pytest.mark.parametrize("make", [zojax.mezo, zojax.lozo, zojax.adamezo], ids=["mezo", "lozo", "adamezo"])
def test_wrappers_that_cannot_drive_a_zo_step_say_what_to_do(wrap, message, make):
    tx = wrap(make(1e-3))
    params = optax.LookaheadParams(PARAMS, PARAMS) if "lookahead" in message else PARAMS
    with pytest.raises(TypeError, match=message):
        tx.init(params)


def test_multisteps_after_the_direction_accumulates_zo_directions():
    k, lr = 3, 0.1
    tx = optax.chain(zojax.scale_by_mezo(1e-3, key=1), optax.MultiSteps(optax.sgd(lr), k).gradient_transformation())
    bare = zojax.scale_by_mezo(1e-3, key=1)
    state, bare_state, directions = tx.init(PARAMS), bare.init(PARAMS), []
    for i in range(k):
        u, state = tx.update(None, state, PARAMS, value_fn=loss)
        d, bare_state = bare.update(None, bare_state, PARAMS, value_fn=loss)
        directions.append(d)
        if i < k - 1:
            assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
    close(u, jax.tree.map(lambda *d: -lr * sum(d) / k, *directions), rtol=1e-5, atol=1e-7)


def test_lookahead_forwards_value_fn_and_matches_the_rule():
    """θ ← θ + fast update; every k steps φ ← φ + α(θ − φ), θ ← φ (Zhang et al. 2019)."""
    k, alpha = 3, 0.5
    tx = zojax.lookahead(zojax.mezo(0.05, 0.1, key=2), k, alpha)
    fast = zojax.mezo(0.05, 0.1, key=2)
    state, fast_state = tx.init(PARAMS), fast.init(PARAMS)
    params, theta, phi = PARAMS, PARAMS, PARAMS
    for t in range(7):
        u, state = jax.jit(lambda p, s: tx.update(None, s, p, value_fn=loss))(params, state)
        params = optax.apply_updates(params, u)
        v, fast_state = fast.update(None, fast_state, theta, value_fn=loss)
        theta = optax.apply_updates(theta, v)
        if (t + 1) % k == 0:
            phi = jax.tree.map(lambda s, x: s + alpha * (x - s), phi, theta)
            theta = phi
        close(params, theta, rtol=1e-4, atol=1e-5)
    assert loss(params) < loss(PARAMS)
    with pytest.raises(ValueError, match="sync_period"):
        zojax.lookahead(zojax.mezo(0.1), 0, 0.5)


@pytest.mark.parametrize(
    "after", [optax.scale_by_adam(), optax.adam(0.01), optax.chain(optax.clip(1.0), optax.trace(0.9))],
    ids=["scale_by_adam", "adam", "nested-trace"],
)
def test_optax_chain_with_moments_after_a_zo_direction_says_use_zojax_chain(after):
    for direction in (zojax.scale_by_mezo(1e-3), zojax.mezo(1e-3)):
        with pytest.raises(TypeError, match=r"skipped ZO step.*use zojax.chain"):
            optax.chain(direction, after).init(PARAMS)
    optax.chain(zojax.scale_by_mezo(1e-3), optax.clip(1.0), optax.scale(-0.1)).init(PARAMS)  # stateless: fine


def test_chain_holds_adam_moments_on_skipped_steps():
    lr = 0.01
    tx = zojax.chain(zojax.scale_by_mezo(1e-3), optax.scale_by_adam(), optax.scale(-lr))

    @jax.jit
    def f(p, s, poison):
        u, s = tx.update(None, s, p, value_fn=lambda q: jnp.where(poison, jnp.nan, loss(q)))
        return optax.apply_updates(p, u), s

    p, s = PARAMS, tx.init(PARAMS)
    for t in range(3):
        p, s = f(p, s, False)
    before = s
    p_skip, s = f(p, s, True)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p_skip), jax.tree.leaves(p)))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before[1]), jax.tree.leaves(s[1])))
    assert int(zojax.step_info(s).skipped) == 1


def test_chain_equals_the_transformations_applied_in_turn_without_skips():
    a = zojax.chain(zojax.scale_by_lozo(1e-3, nu=2, momentum=0.9), optax.scale_by_adam(), optax.scale(-0.01))
    zo, adam, scale = zojax.scale_by_lozo(1e-3, nu=2, momentum=0.9), optax.scale_by_adam(), optax.scale(-0.01)
    pa = pb = PARAMS
    sa, sb = a.init(PARAMS), (zo.init(PARAMS), adam.init(PARAMS), scale.init(PARAMS))
    for _ in range(4):
        ua, sa = a.update(None, sa, pa, value_fn=loss)
        u, s0 = zo.update(None, sb[0], pb, value_fn=loss)
        u, s1 = adam.update(u, sb[1], pb)
        ub, s2 = scale.update(u, sb[2], pb)
        sb = (s0, s1, s2)
        pa, pb = optax.apply_updates(pa, ua), optax.apply_updates(pb, ub)
    close(pa, pb, rtol=1e-6, atol=1e-7)


MOMENTS = {  # ZO-momentum and ZO-Adam (their update read from the held state) and the plain chain they equal
    "zo-momentum": (zojax.scale_by_zo_momentum(1e-3, 0.8), optax.trace(0.8)),
    "zo-adam": (zojax.scale_by_zo_adam(1e-3, 0.9, 0.999), optax.scale_by_adam(0.9, 0.999)),
}


@pytest.mark.parametrize("name", MOMENTS)
def test_update_of_state_gives_the_chain_s_updates_and_states_with_skipped_steps(name):
    held, after = MOMENTS[name]
    plain = zojax.chain(zojax.scale_by_mezo(1e-3), after)

    def run(tx):
        f = jax.jit(lambda p, s, poison: tx.update(None, s, p, value_fn=lambda q: jnp.where(poison, jnp.nan, loss(q))))
        p, s, out = PARAMS, tx.init(PARAMS), []
        for t in range(6):
            u, s = f(p, s, t in (0, 3))  # the first step skipped too: Adam's count is 0 there
            p = optax.apply_updates(p, jax.tree.map(lambda x: -0.01 * x, u))
            out.append((u, s[1]))
        return out

    held_run = run(held)
    for (ua, sa), (ub, sb) in zip(run(plain), held_run):
        close(ua, ub, rtol=1e-6, atol=1e-8)
        close(sa, sb, rtol=1e-6, atol=1e-8)
    assert all(float(jnp.abs(x).sum()) == 0 for x in jax.tree.leaves(held_run[3][0]))  # a skipped step


@pytest.mark.parametrize("name", ["zo-momentum", "zo-adam"])
def test_moments_are_updated_in_place(name):
    """The compiled step of ZO-momentum / ZO-Adam on a model that perturbs inside its layer scan
    needs no more temporary memory than MeZO's: the held moments are written into the donated
    state, not kept as a new params-sized copy (which took 0.4x / 0.7x the parameters' size)."""
    import zojax.models
    from zojax.models.llama.config import LlamaConfig

    config = LlamaConfig(vocab_size=2048, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, head_dim=64, tie_word_embeddings=True)
    model = zojax.models.init(config)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 2048, (2, 16)), jnp.int32)
    value_fn = lambda p, param_hook=None: jnp.mean(model.apply(p, ids, param_hook=param_hook)[..., 0])
    size = sum(x.nbytes for x in jax.tree.leaves(model.params))

    def temp(tx):
        step = jax.jit(lambda p, s: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(None, s, p, value_fn=value_fn)),
                       donate_argnums=(0, 1))
        return memory_stats(step.lower(model.params, tx.init(model.params)).compile())["temp"]

    make = lambda n: registry.optimizer(n, 1e-3, sampler="hash", stacked=model.stacked)
    extra = temp(make(name)) - temp(make("mezo"))
    assert extra < 0.05 * size, f"{name}: {extra / 2**20:.1f} MB more temporaries than MeZO (parameters: {size / 2**20:.0f} MB)"


def test_multi_transform_without_fill_masked_says_what_to_do():
    labels = {"w": "zo", "b": "frozen"}
    tx = optax.multi_transform({"zo": zojax.scale_by_mezo(), "frozen": optax.set_to_zero()}, labels)
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    with pytest.raises(ValueError, match=r"value_fn=zojax.fill_masked\(lambda p: loss\(p, batch\), params\)"):
        tx.update(zeros, tx.init(PARAMS), PARAMS, value_fn=loss)
    u, _ = tx.update(zeros, tx.init(PARAMS), PARAMS, value_fn=zojax.fill_masked(loss, PARAMS))
    assert np.all(np.asarray(u["b"]) == 0) and np.any(np.asarray(u["w"]) != 0)
