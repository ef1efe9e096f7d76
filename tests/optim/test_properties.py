"""The optax property matrix, run for every zojax transformation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zojax
from zojax import perturb as P

FACTORIES = {
    "mezo": lambda lr, **kw: zojax.mezo(lr, 1e-3, **kw),
    "mezo-q3-hash": lambda lr, **kw: zojax.mezo(lr, 1e-3, num_directions=3, sampler="hash", **kw),
    "lozo": lambda lr, **kw: zojax.lozo(lr, 1e-3, rank=2, nu=3, **kw),
    "lozo-m": lambda lr, **kw: zojax.lozo(lr, 1e-3, rank=2, nu=3, momentum=0.9, **kw),
    "adamezo": lambda lr, **kw: zojax.adamezo(lr * 1e-2, 1e-3, horizon=3, **kw),
    "adamezo-paper": lambda lr, **kw: zojax.adamezo(lr, 1e-3, horizon=3, form="paper", **kw),
    "adamezo-lowrank": lambda lr, **kw: zojax.adamezo(lr * 1e-2, 1e-3, horizon=3, sampler=P.LowRank(2, 3), **kw),
    "adamezo-q2": lambda lr, **kw: zojax.adamezo(lr * 1e-2, 1e-3, horizon=3, num_directions=2, **kw),
    "lozo-m-q2": lambda lr, **kw: zojax.lozo(lr, 1e-3, rank=2, nu=3, momentum=0.9, num_directions=2, **kw),
    "zo-sign": lambda lr, **kw: zojax.zo_sign(lr * 0.2, 1e-3, **kw),
    "zo-momentum": lambda lr, **kw: zojax.zo_momentum(lr * 0.1, 1e-3, 0.9, **kw),
    "zo-adam": lambda lr, **kw: zojax.zo_adam(lr, 1e-3, **kw),
    "zo-cons": lambda lr, **kw: zojax.zo_cons(lr, 1e-3, **kw),
    "forward-gradient": lambda lr, **kw: zojax.forward_gradient(lr, num_directions=2, **kw),
    "hizoo": lambda lr, **kw: zojax.hizoo(lr, 1e-3, 1e-2, **kw),
}
# Methods whose state holds params-sized buffers by design (momentum, Adam's moments, H).
PARAMS_SIZED_STATE = {"zo-momentum", "zo-adam", "hizoo"}
SCALE_BY = {
    "mezo": lambda **kw: zojax.scale_by_mezo(1e-3, **kw),
    "lozo": lambda **kw: zojax.scale_by_lozo(1e-3, rank=2, nu=3, **kw),
    "lozo-m": lambda **kw: zojax.scale_by_lozo(1e-3, rank=2, nu=3, momentum=0.9, **kw),
    "adamezo": lambda **kw: zojax.scale_by_adamezo(1e-3, horizon=2, **kw),
}
methods = pytest.mark.parametrize("name", sorted(FACTORIES))


def problem(dtype=jnp.float32):
    rng = np.random.default_rng(0)
    target = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    params = {"dense": {"kernel": jnp.zeros((6, 4), dtype), "bias": jnp.zeros((4,), dtype)}, "scale": jnp.ones((4,), dtype)}

    def loss(p):
        w = p["dense"]["kernel"].astype(jnp.float32) * p["scale"].astype(jnp.float32) + p["dense"]["bias"].astype(jnp.float32)
        return jnp.mean((w - target) ** 2)

    return params, loss


def make_step(tx, loss, **jit_kw):
    def step(params, state):
        updates, state = tx.update(None, state, params, value_fn=loss)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, **jit_kw)


def run(tx, params, loss, steps, step=None):
    state = tx.init(params)
    step = step or make_step(tx, loss)
    for _ in range(steps):
        params, state = step(params, state)
    return params, state


def leaves_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@methods
def test_returns_extra_args_transformation(name):
    assert isinstance(FACTORIES[name](1e-2), optax.GradientTransformationExtraArgs)


@methods
def test_accepts_unexpected_extra_args_and_reduces_loss(name):
    params, loss = problem()
    tx = FACTORIES[name](0.05)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(None, state, params, value_fn=loss, batch=None, unexpected=3)
        return optax.apply_updates(params, updates), state

    state, start = tx.init(params), loss(params)
    for _ in range(60):
        params, state = step(params, state)
    assert loss(params) < 0.9 * start


@methods
def test_update_has_the_params_structure_and_chains(name):
    """init/update shapes; inside optax.chain (with the extra args passed through) and under
    optax.inject_hyperparams the update is the same, and the injected rate is live."""
    params, loss = problem()
    tx = FACTORIES[name](0.05, key=4)
    updates, state = jax.jit(lambda p, s: tx.update(None, s, p, value_fn=loss))(params, tx.init(params))
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    assert all(u.shape == p.shape and u.dtype == p.dtype for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)))
    assert jax.tree.structure(state) == jax.tree.structure(tx.init(params))
    chained = optax.chain(optax.identity(), FACTORIES[name](0.05, key=4))
    u2, _ = jax.jit(lambda p, s: chained.update(None, s, p, value_fn=loss))(params, chained.init(params))
    assert leaves_equal(updates, u2)
    injected = optax.inject_hyperparams(lambda learning_rate: FACTORIES[name](learning_rate, key=4))(learning_rate=0.05)
    step = jax.jit(lambda p, s: injected.update(None, s, p, value_fn=loss))
    s3 = injected.init(params)
    u3, _ = step(params, s3)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9), u3, updates)
    s3.hyperparams["learning_rate"] = jnp.asarray(0.025)
    u4, _ = step(params, s3)
    assert not leaves_equal(u3, u4)


@methods
def test_keeps_bfloat16(name):
    params, loss = problem(jnp.bfloat16)
    tx = FACTORIES[name](0.05)
    updates, _ = tx.update(None, tx.init(params), params, value_fn=loss)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    assert any(np.any(np.asarray(u, np.float32) != 0) for u in jax.tree.leaves(updates))


@methods
def test_same_key_same_trajectory_other_key_differs(name):
    params, loss = problem()
    # The key lives in the state: one compiled step serves every seed.
    step = make_step(FACTORIES[name](0.05), loss)
    a, _ = run(FACTORIES[name](0.05, key=7), params, loss, 6, step)
    b, _ = run(FACTORIES[name](0.05, key=7), params, loss, 6, step)
    c, _ = run(FACTORIES[name](0.05, key=8), params, loss, 6, step)
    assert leaves_equal(a, b)
    assert not leaves_equal(a, c)


@methods
def test_jit_with_donation_does_not_recompile(name):
    params, loss = problem()
    tx = FACTORIES[name](0.05)
    traces = []

    def step(params, state):
        traces.append(1)
        updates, state = tx.update(None, state, params, value_fn=loss)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step, donate_argnums=(0, 1))
    state = tx.init(params)
    params = jax.tree.map(jnp.copy, params)
    for _ in range(3):
        params, state = step(params, state)
    assert len(traces) == 1
    assert np.isfinite(loss(params))


@methods
def test_nonfinite_loss_skips_and_is_counted(name):
    params, loss = problem()
    tx = FACTORIES[name](0.05)

    @jax.jit
    def step(params, state, poison):
        value_fn = lambda p: jnp.where(poison, jnp.nan, loss(p))
        updates, state = tx.update(None, state, params, value_fn=value_fn)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(4):
        params, state = step(params, state, False)
    poisoned, poisoned_state = step(params, state, True)
    assert leaves_equal(poisoned, params)
    info = zojax.step_info(poisoned_state)
    assert int(info.skipped) == 1 and int(info.step) == 5
    # Moments, momentum and history are untouched: only the step record moves on.
    unchanged = lambda s: [x for x in jax.tree.leaves(s, is_leaf=lambda x: isinstance(x, zojax.optim.ZOInfo)) if not isinstance(x, zojax.optim.ZOInfo)]
    assert leaves_equal(unchanged(poisoned_state), unchanged(state))
    for _ in range(6):
        poisoned, poisoned_state = step(poisoned, poisoned_state, False)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(poisoned))
    assert int(zojax.step_info(poisoned_state).skipped) == 1
    assert loss(poisoned) < loss(params)


@pytest.mark.parametrize("name", sorted(SCALE_BY))
def test_chain_with_decay_and_schedule(name):
    """chain(scale_by_x, add_decayed_weights(wd, mask), scale_by_learning_rate(schedule))
    gives −η_t (d + wd·mask·θ) with d the bare direction."""
    params, loss = problem()
    params = jax.tree.map(lambda p: p + 0.5, params)
    schedule = optax.linear_schedule(0.1, 0.05, 4)
    mask = zojax.decay_mask(params)
    assert mask == {"dense": {"kernel": True, "bias": False}, "scale": False}
    chained = optax.chain(SCALE_BY[name](key=3), optax.add_decayed_weights(0.01, mask), optax.scale_by_learning_rate(schedule))
    bare = SCALE_BY[name](key=3)
    both = jax.jit(lambda p, cs, bs: (chained.update(None, cs, p, value_fn=loss), bare.update(None, bs, p, value_fn=loss)))
    cs, bs = chained.init(params), bare.init(params)
    for t in range(4):
        (u, cs), (d, bs) = both(params, cs, bs)
        want = jax.tree.map(lambda d, p, m: -schedule(t) * (d + (0.01 * p if m else 0.0)), d, params, mask)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), u, want)
        params = optax.apply_updates(params, u)
    assert int(zojax.step_info(cs).step) == 4


def test_decay_mask_rules():
    """"shape": matrices only; "official": every name without bias/layer_norm/layernorm,
    as the MeZO, LOZO and AdaMeZO trainers decide (a LLaMA's final norm is decayed there)."""
    z = lambda *shape: jnp.zeros(shape)
    params = {
        "embed_tokens": {"embedding": z(10, 4)},
        "layers": {"input_layernorm": {"scale": z(2, 4)}, "q_proj": {"kernel": z(2, 4, 4), "bias": z(2, 4)},
                   "final_layer_norm": {"scale": z(2, 4), "bias": z(2, 4)}},
        "norm": {"scale": z(4)},
    }
    stacked = {"embed_tokens": False, "layers": True, "norm": False}
    shape = jax.tree.leaves(zojax.decay_mask(params, stacked))
    official = jax.tree.leaves(zojax.decay_mask(params, stacked, rule="official"))
    names = [P.path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    assert dict(zip(names, shape)) == {
        "embed_tokens/embedding": True, "layers/final_layer_norm/bias": False, "layers/final_layer_norm/scale": False,
        "layers/input_layernorm/scale": False, "layers/q_proj/bias": False, "layers/q_proj/kernel": True, "norm/scale": False}
    assert dict(zip(names, official)) == {**dict(zip(names, shape)), "norm/scale": True}
    with pytest.raises(ValueError, match="rule must be 'shape' or 'official'"):
        zojax.decay_mask(params, rule="hf")
    from zojax.optim import registry
    tx = registry.optimizer("mezo", 0.1, weight_decay=0.5, decay_mask="official", stacked=stacked)
    # lr 0.1 · wd 0.5 · θ on the decayed leaves only (θ = 1, direction measured apart).
    ones = jax.tree.map(jnp.ones_like, params)
    u, _ = tx.update(None, tx.init(ones), ones, value_fn=lambda p: 0.0)
    for name, decayed, leaf in zip(names, official, jax.tree.leaves(u)):
        np.testing.assert_allclose(np.asarray(leaf), -0.05 if decayed else 0.0, err_msg=name)


def test_clipping_in_a_chain():
    params, loss = problem()
    tx = optax.chain(zojax.scale_by_mezo(1e-3), optax.clip_by_global_norm(1e-3), optax.scale(-1.0))
    updates, _ = tx.update(None, tx.init(params), params, value_fn=loss)
    assert np.isclose(optax.tree.norm(updates), 1e-3, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(SCALE_BY))
def test_masked_and_multi_transform_train_a_subset(name):
    params, loss = problem()
    mask = {"dense": {"kernel": True, "bias": False}, "scale": False}
    labels = {"dense": {"kernel": "zo", "bias": "frozen"}, "scale": "frozen"}
    for tx in (
        optax.masked(optax.chain(SCALE_BY[name](), optax.scale(-0.05)), mask),
        optax.multi_transform({"zo": optax.chain(SCALE_BY[name](), optax.scale(-0.05)), "frozen": optax.set_to_zero()}, labels),
    ):
        # optax.masked passes the updates of untrained leaves through: start from zeros.
        zeros = jax.tree.map(jnp.zeros_like, params)
        step = jax.jit(lambda p, s, tx=tx: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(zeros, s, p, value_fn=zojax.fill_masked(loss, p))))
        state, p = tx.init(params), params
        for _ in range(5):
            before = p
            p, state = step(p, state)
        assert np.array_equal(p["dense"]["bias"], params["dense"]["bias"])
        assert np.array_equal(p["scale"], params["scale"])
        assert not np.array_equal(p["dense"]["kernel"], params["dense"]["kernel"])
        info = zojax.step_info(state)
        # value_fn saw the whole model: f(θ±εz) is within O(ε) of the full loss.
        assert abs(float(info.f_plus) - float(loss(before))) < 0.1


def test_masked_leaves_keep_their_z():
    """z depends on the leaf's name only: masking other leaves does not change it."""
    params, _ = problem()
    key = P.as_key(0)
    full = P.sample(P.Gaussian(), key, 3, params)
    part = P.sample(P.Gaussian(), key, 3, {"dense": {"kernel": params["dense"]["kernel"]}})
    assert np.array_equal(full["dense"]["kernel"], part["dense"]["kernel"])


def test_inject_hyperparams():
    params, loss = problem()
    tx = optax.inject_hyperparams(zojax.mezo, static_args="num_directions")(learning_rate=0.05, eps=1e-3)
    state = tx.init(params)
    step = make_step(tx, loss)
    p1, s1 = step(params, state)
    state.hyperparams["learning_rate"] = jnp.asarray(0.1)
    p2, _ = step(params, state)
    d1 = jax.tree.map(lambda a, b: a - b, p1, params)
    d2 = jax.tree.map(lambda a, b: a - b, p2, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(2 * a, b, rtol=1e-5, atol=1e-7), d1, d2)
    assert int(zojax.step_info(s1).step) == 1


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: zojax.mezo(1e-3, eps=0.0), "eps must be > 0"),
        (lambda: zojax.mezo(1e-3, num_directions=0), "num_directions must be an integer >= 1"),
        (lambda: zojax.lozo(1e-3, rank=0), "rank must be an integer >= 1"),
        (lambda: zojax.lozo(1e-3, nu=0), "nu must be an integer >= 1"),
        (lambda: zojax.lozo(1e-3, momentum=1.0), r"momentum must be in \[0, 1\)"),
        (lambda: zojax.adamezo(1e-3, b1=-0.1), r"b1 must be in \[0, 1\)"),
        (lambda: zojax.adamezo(1e-3, b2=1.5), r"b2 must be in \[0, 1\)"),
        (lambda: zojax.adamezo(1e-3, horizon=0), "horizon must be an integer >= 1"),
        (lambda: zojax.adamezo(1e-3, form="adam"), "form must be"),
        (lambda: zojax.lozo(1e-3, rank=5).init({"w": jnp.zeros((3, 8))}), r"leaf 'w' has matrix shape \(3, 8\) but rank=5"),
        (lambda: zojax.lozo(1e-3, num_directions=0), "num_directions must be an integer >= 1"),
        (lambda: zojax.adamezo(1e-3, num_directions=0), "num_directions must be an integer >= 1"),
    ],
)
def test_invalid_hyperparameters_name_the_argument(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@methods
@pytest.mark.parametrize("lr", [0.0, -1e-3, float("nan"), float("inf")])
def test_learning_rate_must_be_finite_and_positive(name, lr):
    with pytest.raises(ValueError, match="learning_rate must be finite and > 0"):
        FACTORIES[name](lr)


def test_learning_rate_must_be_a_number_or_schedule():
    for alias in (zojax.mezo, zojax.lozo, zojax.adamezo):
        with pytest.raises(ValueError, match="learning_rate must be a finite number > 0 or a schedule, got '1e-3'"):
            alias("1e-3")
        assert isinstance(alias(optax.constant_schedule(1e-3)), optax.GradientTransformationExtraArgs)


def test_shape_arguments_cannot_be_injected():
    params, loss = problem()
    tx = optax.inject_hyperparams(zojax.mezo)(learning_rate=0.05)
    state = tx.init(params)
    with pytest.raises(TypeError, match=r"static_args=\('num_directions'"):
        jax.jit(lambda p, s: tx.update(None, s, p, value_fn=loss))(params, state)


def test_missing_value_fn_says_how_to_call():
    params, _ = problem()
    tx = zojax.mezo(1e-3)
    with pytest.raises(TypeError, match=r"value_fn=lambda p: loss\(p, batch\)"):
        tx.update(None, tx.init(params), params)


def smollm_shapes():
    """SmolLM2-135M's parameter shapes, layers stacked: 135M values, nothing allocated."""
    L, d, f, v, kv = 30, 576, 1536, 49152, 192
    s = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16)
    layers = {
        "attn_norm": {"scale": s(L, d)}, "mlp_norm": {"scale": s(L, d)},
        "q": {"kernel": s(L, d, d)}, "k": {"kernel": s(L, d, kv)}, "v": {"kernel": s(L, d, kv)}, "o": {"kernel": s(L, d, d)},
        "gate": {"kernel": s(L, d, f)}, "up": {"kernel": s(L, d, f)}, "down": {"kernel": s(L, f, d)},
    }
    return {"embed": {"embedding": s(v, d)}, "layers": layers, "norm": {"scale": s(d)}}, {"embed": False, "layers": True, "norm": False}


@methods
def test_state_holds_no_params_sized_buffer(name):
    if name in PARAMS_SIZED_STATE:
        pytest.skip("this method keeps params-sized buffers")
    params, stacked = smollm_shapes()
    state = jax.eval_shape(FACTORIES[name](1e-6, stacked=stacked).init, params)
    smallest_matrix = min(p.size for p in jax.tree.leaves(params) if p.ndim >= 3 or p.shape[0] > 1000)
    sizes = [x.size for x in jax.tree.leaves(state)]
    if name == "lozo-m":  # dense momentum only for vectors: norm scales
        vector_sizes = {p.size for p in jax.tree.leaves(params) if p.ndim == 1 or (p.ndim == 2 and p.shape[0] == 30)}
        sizes = [s for s in sizes if s not in vector_sizes]
    assert max(sizes) < smallest_matrix / 20
    assert sum(sizes) * 4 < 2e6  # under 2 MB of state for 135M parameters


@pytest.mark.parametrize("name", sorted(SCALE_BY))
def test_step_info_reads_nested_states(name):
    params, loss = problem()
    tx = optax.chain(optax.identity(), optax.masked(SCALE_BY[name](), {"dense": True, "scale": False}))
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, state = tx.update(zeros, tx.init(params), params, value_fn=zojax.fill_masked(loss, params))
    info = zojax.step_info(state)
    assert np.isfinite(info.f_plus) and np.isfinite(info.f_minus) and int(info.step) == 1
    np.testing.assert_allclose(info.projected_grad, (info.f_plus - info.f_minus) / 2e-3, rtol=1e-5)
    with pytest.raises(ValueError, match="no zojax transformation"):
        zojax.step_info(optax.sgd(0.1).init(params))


def test_every_registered_zo_optimizer_builds_and_steps():
    from zojax.optim import registry

    params, loss = problem()
    names = registry.names(zeroth_order=True)
    assert {"mezo", "lozo", "lozo-m", "adamezo", "zo-sign", "zo-momentum", "zo-adam", "zo-cons", "forward-gradient", "hizoo"} <= set(names)
    for name in names:
        tx = registry.optimizer(name, 1e-2, weight_decay=1e-3, key=1, num_directions=1)
        updates, state = jax.jit(lambda p, s: tx.update(None, s, p, value_fn=loss))(params, tx.init(params))
        assert all(np.all(np.isfinite(np.asarray(u))) for u in jax.tree.leaves(updates)), name
        assert int(zojax.step_info(state).step) == 1, name
    with pytest.raises(ValueError, match="'zo-cons' places its candidate steps with the learning rate"):
        registry.direction("zo-cons")
