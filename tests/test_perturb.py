"""z is regenerated, never stored: the perturbation and the update must see the same z,
whole-tree and layer by layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zojax
from zojax import perturb as P

L, D = 3, 8
STACKED = {"layers": True, "head": False}


def scanned_model():
    rng = np.random.default_rng(0)
    params = {
        "layers": {"w": jnp.asarray(rng.normal(size=(L, D, D)) / 3, jnp.float32), "norm": jnp.ones((L, D))},
        "head": {"kernel": jnp.asarray(rng.normal(size=(D, 1)), jnp.float32)},
    }
    x = jnp.asarray(rng.normal(size=(4, D)), jnp.float32)

    def loss(params, param_hook=None):
        hook = param_hook or (lambda path, sub, layer=None: sub)
        head = hook(("head",), params["head"])

        def body(h, xs):
            layer, l = xs
            layer = hook(("layers",), layer, l)
            return jnp.tanh(h @ layer["w"]) * layer["norm"], None

        h, _ = jax.lax.scan(body, x, (params["layers"], jnp.arange(L)))
        return jnp.mean((h @ head["kernel"]) ** 2)

    return params, loss


def _plain(history):
    c, z = history[-1]
    return c * z


def _momentum(beta):
    """LOZO-M within one V window: d_t = β d_{t−1} + (1 − β) c_t z_t, d_0 = c_0 z_0."""

    def direction(history):
        d = history[0][0] * history[0][1]
        for c, z in history[1:]:
            d = beta * d + (1 - beta) * c * z
        return d

    return direction


def _adamezo(h, b1, b2):
    """The official form: plain steps while at most h steps came before, then
    100 m / (√v + 1e-5) over the last h (c, z), replayed."""

    def direction(history):
        if len(history) <= h + 1:
            return _plain(history)
        last = history[::-1][:h]
        m = sum(b1**k * c * z for k, (c, z) in enumerate(last))
        v = sum(b2**k * (c * z) ** 2 for k, (c, z) in enumerate(last))
        return 100 * m / (np.sqrt(v) + 1e-5)

    return direction


@pytest.mark.parametrize(
    "tx, expected, exact_steps",
    [
        (zojax.scale_by_mezo(1.0), _plain, 6),
        (zojax.scale_by_lozo(1.0, rank=2, nu=2), _plain, 6),
        (zojax.scale_by_lozo(1.0, rank=2, nu=10, momentum=0.6), _momentum(0.6), 1),
        (zojax.scale_by_adamezo(1.0, 0.7, 0.9, horizon=2), _adamezo(2, 0.7, 0.9), 3),
    ],
    ids=["mezo", "lozo", "lozo-m", "adamezo"],
)
def test_update_replays_the_perturbation_bit_for_bit(tx, expected, exact_steps):
    """With θ = 0 and ε = 1 the perturbed params are exactly ±z, and the loss is chosen so
    that c = ±1. The perturbed params are read out of the jitted step with a debug callback;
    each update must be the method's function of the z seen so far: exactly c·z on plain
    steps, and to float32 rounding where LOZO-M's momentum or AdaMeZO's replay of past z
    (steps 3-5 here, after its h + 1 = 3 warm-up steps) combine several."""
    params = {"kernel": jnp.zeros((5, 3)), "bias": jnp.zeros((3,))}
    seen = []

    def value_fn(p):
        jax.debug.callback(lambda p: seen.append(jax.tree.map(np.asarray, p)), p, ordered=True)
        return jnp.sign(p["bias"][0])

    step = jax.jit(lambda s: tx.update(None, s, params, value_fn=value_fn))
    state = tx.init(params)
    history = []
    for t in range(6):
        seen.clear()
        updates, state = step(state)
        jax.effects_barrier()
        plus, minus = seen
        c = np.float32(zojax.step_info(state).projected_grad)
        assert abs(c) == 1.0
        history.append((c, plus))
        for name in params:
            assert np.array_equal(np.asarray(minus[name]), -np.asarray(plus[name]))
            assert np.any(np.asarray(plus[name]) != 0)
            want = expected([(c, z[name]) for c, z in history])
            if t < exact_steps:
                assert np.array_equal(np.asarray(updates[name]), want)
            else:
                np.testing.assert_allclose(np.asarray(updates[name]), want, rtol=1e-5, atol=1e-6)
                assert not np.allclose(want, c * plus[name])  # really a combination of several z


def test_stacked_leaves_are_sampled_slice_by_slice():
    params, _ = scanned_model()
    key, sampler = P.as_key(4), P.HashGaussian()
    z = P.sample(sampler, key, 9, params, STACKED)
    for l in range(L):
        want = sampler(jax.random.fold_in(P.leaf_key(key, "layers/w"), l), 9, (D, D))
        assert np.array_equal(z["layers"]["w"][l], want)
    assert np.array_equal(z["head"]["kernel"], sampler(P.leaf_key(key, "head/kernel"), 9, (D, 1)))
    # Without the stacked flag the leaf is one draw: a different z.
    assert not np.array_equal(P.sample(sampler, key, 9, params)["layers"]["w"], z["layers"]["w"])


def test_param_hook_equals_whole_tree_perturbation():
    params, loss = scanned_model()
    key, sampler = P.as_key(1), P.Gaussian()
    whole = loss(P.perturb(params, sampler, key, 5, 1e-2, STACKED))
    hooked = loss(params, param_hook=P.make_param_hook(sampler, key, 5, 1e-2))
    np.testing.assert_allclose(hooked, whole, rtol=1e-6)
    assert abs(float(whole) - float(loss(params))) > 1e-6


@pytest.mark.parametrize("sampler", [P.Gaussian(), P.LowRank(2, 3)], ids=["dense", "lowrank"])
def test_optimizer_uses_the_hook_when_the_loss_takes_one(sampler):
    params, loss = scanned_model()
    plain = lambda p: loss(p)
    tx = zojax.scale_by_mezo(1e-2, sampler=sampler, stacked=STACKED, key=3)
    u_hook, s_hook = jax.jit(lambda p, s: tx.update(None, s, p, value_fn=loss))(params, tx.init(params))
    u_tree, s_tree = jax.jit(lambda p, s: tx.update(None, s, p, value_fn=plain))(params, tx.init(params))
    np.testing.assert_allclose(zojax.step_info(s_hook).projected_grad, zojax.step_info(s_tree).projected_grad, rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), u_hook, u_tree)


def test_hook_refuses_a_masked_tree():
    import optax

    params, loss = scanned_model()
    tx = optax.masked(zojax.scale_by_mezo(1e-2), {"layers": True, "head": False})
    zeros = jax.tree.map(jnp.zeros_like, params)
    with pytest.raises(ValueError, match="needs the full parameter tree.*zojax.fill_masked"):
        tx.update(zeros, tx.init(params), params, value_fn=loss)


def test_key_arguments():
    assert np.array_equal(P.as_key(3), jax.random.PRNGKey(3))
    assert np.array_equal(P.as_key(jax.random.key(3)), jax.random.PRNGKey(3))
    with pytest.raises(ValueError, match="uint32"):
        P.as_key(jnp.zeros(3))
    with pytest.raises(ValueError, match="stacked must be a pytree prefix"):
        P.stack_flags({"nope": True}, {"w": jnp.zeros(2)})


# ---------------------------------------------------------------------------------------
# The counter-based samplers


def test_gaussian_is_standard_normal():
    """One million draws pass a Kolmogorov–Smirnov test against N(0, 1) and put the right mass
    in the tails; the byte-sum hash sampler, only approximately Gaussian, fails the same test."""
    from scipy import stats

    key = P.as_key(0)
    z = np.asarray(P.Gaussian()(key, 0, (1000, 1000)), np.float64).ravel()
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(z.mean()) < 5e-3 and abs(z.var() - 1) < 5e-3
    for t in (2.0, 3.0, 4.0):
        tail, want = np.mean(np.abs(z) > t), 2 * stats.norm.sf(t)
        assert abs(tail - want) < 5 * np.sqrt(want / z.size), (t, tail, want)
    assert np.abs(z).max() > 4.5
    hashed = np.asarray(P.HashGaussian()(key, 0, (1000, 1000)), np.float64).ravel()
    assert stats.kstest(hashed, "norm").pvalue < 1e-6


@pytest.mark.parametrize("sampler", [P.Gaussian(), P.HashGaussian(), P.Rademacher()], ids=["gaussian", "hash", "rademacher"])
def test_counter_samplers_are_independent_across_leaves_layers_and_steps(sampler):
    """z of two leaves, two layer slices of a stacked leaf, and two steps: uncorrelated, also in
    their squares where those vary (a dependence that correlation of z alone would miss)."""
    params = {"layers": {"w": jnp.zeros((2, 500, 400))}, "head": {"w": jnp.zeros((500, 400))}}
    key = P.as_key(7)
    z = P.sample(sampler, key, 3, params, {"layers": True, "head": False})
    later = P.sample(sampler, key, 4, params, {"layers": True, "head": False})
    pairs = {
        "leaves": (z["layers"]["w"][0], z["head"]["w"]),
        "layers": (z["layers"]["w"][0], z["layers"]["w"][1]),
        "steps": (z["head"]["w"], later["head"]["w"]),
    }
    for name, (a, b) in pairs.items():
        a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
        assert not np.array_equal(a, b), name
        for f in (lambda x: x, lambda x: x * x):
            if np.var(f(a)) > 0:
                assert abs(np.corrcoef(f(a), f(b))[0, 1]) < 5 / np.sqrt(a.size), name


@pytest.mark.parametrize(
    "sampler", [P.Gaussian(), P.HashGaussian(), P.Rademacher(), P.LowRank(2, 3), P.Threefry()],
    ids=["gaussian", "hash", "rademacher", "lowrank", "threefry"],
)
def test_rows_replay_the_whole_draw(sampler):
    """Rows drawn alone (any index array, repeats allowed) equal those rows of the whole draw,
    bit for bit (both jitted, as the perturbation and the update of a step are); so does the
    hook's row form."""
    key, shape = P.as_key(2), (50, 3, 4)
    rows = jnp.array([[7, 0], [49, 7]])
    whole = jax.jit(lambda: sampler(key, 5, shape))()
    np.testing.assert_array_equal(jax.jit(lambda r: P.sample_rows(sampler, key, 5, shape, r))(rows), whole[rows])
    table = {"embedding": jnp.linspace(-1, 1, 600).reshape(shape)}
    hook = P.make_param_hook(sampler, key, 5, 1e-2)
    got = jax.jit(lambda p, r: hook.rows(("table",), p, r))(table, rows)
    want = jax.jit(lambda p: hook(("table",), p))(table)
    np.testing.assert_array_equal(got["embedding"], want["embedding"][rows])


def test_gaussian_replays_in_every_jitted_context():
    """The same key gives the same z drawn alone, inside a perturbation, inside an update and
    slice by slice under vmap, bit for bit."""
    key, shape = P.as_key(3), (64, 32)
    z = np.asarray(jax.jit(lambda: P.Gaussian()(key, 9, shape))())
    theta = jnp.zeros(shape)
    np.testing.assert_array_equal(jax.jit(lambda p: P._shift(p, key, 9, P.Gaussian(), 1.0))(theta), z)
    np.testing.assert_array_equal(jax.jit(lambda p, c: p - c * P.Gaussian()(key, 9, shape))(theta, -1.0), z)
    stacked = jax.jit(lambda: P.sample(P.Gaussian(), key, 9, {"w": jnp.zeros((2, *shape))}, {"w": True}))()["w"]
    alone = jax.jit(lambda: P.Gaussian()(jax.random.fold_in(P.leaf_key(key, "w"), 1), 9, shape))()
    np.testing.assert_array_equal(stacked[1], alone)
    assert not np.array_equal(jax.jit(lambda: P.Gaussian()(key, 10, shape))(), z)


def test_sampler_names():
    assert isinstance(P.get_sampler("gaussian"), P.Gaussian)
    assert isinstance(P.get_sampler("threefry"), P.Threefry)
    key = P.as_key(1)
    np.testing.assert_array_equal(P.Threefry()(key, 2, (3, 4)), jax.random.normal(jax.random.fold_in(key, 2), (3, 4)))


# ---------------------------------------------------------------------------------------
# Embedding tables read through the hook's row form


def random_model(kind):
    """A tiny random model with a tied embedding whose vocabulary (8192 + 100) spans more
    than one chunk of the tied unembedding plus a remainder."""
    from zojax.models import LlamaConfig, Model, OPTConfig

    vocab = 8192 + 100
    if kind == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=True)
    else:
        config = OPTConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2, ffn_dim=32, num_attention_heads=2,
                           max_position_embeddings=32, word_embed_proj_dim=16)
    rng = np.random.default_rng(0)
    params = {}
    for t in config.hf_tensors():
        node = params
        for k in t.path[:-1]:
            node = node.setdefault(k, {})
        node[t.path[-1]] = jnp.asarray(rng.normal(size=t.shape(config.num_hidden_layers)) * 0.3, jnp.float32)
    return Model(config, params)


@pytest.mark.parametrize("kind", ["llama", "opt"])
@pytest.mark.parametrize("sampler", [P.Gaussian(), P.LowRank(2, 3), P.Threefry()], ids=["gaussian", "lowrank", "threefry"])
def test_model_reads_tables_through_the_hook_rows(kind, sampler):
    """The model perturbed by the optimizer's hook (tables read row by row, the tied logits in
    chunks) gives the logits of the model with every parameter perturbed up front."""
    m = random_model(kind)
    ids = jnp.asarray(np.random.default_rng(1).integers(0, m.config.vocab_size, (2, 9)), jnp.int32)
    key = P.as_key(4)
    hook = P.make_param_hook(sampler, key, 3, 0.05)
    hooked = jax.jit(lambda p: m.apply(p, ids, param_hook=hook))(m.params)
    moved = jax.jit(lambda p: m.apply(P.perturb(p, sampler, key, 3, 0.05, m.stacked), ids))(m.params)
    plain = m.apply(m.params, ids)
    np.testing.assert_allclose(hooked, moved, atol=2e-5, rtol=1e-5)
    assert np.abs(np.asarray(hooked) - np.asarray(plain)).max() > 1e-2


def test_stochastic_rounding_is_unbiased_and_replays():
    """E[round(x)] = x to bfloat16 and float16; the same (key, counter) rounds the same way,
    whole leaf or by rows; float32 leaves are untouched by the option."""
    x = jnp.asarray(1.0 + np.random.default_rng(0).uniform(0, 2**-7, size=(64, 256)), jnp.float32)
    index = jax.lax.iota(jnp.uint32, x.size).reshape(x.shape)
    key = P.as_key(3)
    for dtype in (jnp.bfloat16, jnp.float16):
        draws = jnp.stack([P.stochastic_round(x, dtype, key, n, index) for n in range(200)]).astype(jnp.float32)
        ulp = float(jnp.finfo(dtype).eps)
        assert set(np.unique(np.asarray(draws - x.astype(dtype).astype(jnp.float32)) / ulp)) <= {-1.0, 0.0, 1.0}
        np.testing.assert_allclose(np.asarray(draws.mean(0)).mean(), np.asarray(x).mean(), atol=ulp / 200)
        assert abs(float(jnp.mean(draws - x))) < 0.01 * ulp  # vs up to ulp/4 when rounding to nearest
    params = {"emb": jnp.asarray(x[:8, :16], jnp.bfloat16), "w": x[:4, :4]}
    hook = P.make_param_hook(P.Gaussian(), key, 7, 1e-3, "stochastic")
    whole = P.perturb(params, P.Gaussian(), key, 7, 1e-3, rounding="stochastic")
    assert np.array_equal(hook(("emb",), params["emb"]), whole["emb"])
    assert np.array_equal(hook.rows(("emb",), params["emb"], jnp.asarray([5, 2])), whole["emb"][jnp.asarray([5, 2])])
    assert np.array_equal(whole["w"], P.perturb(params, P.Gaussian(), key, 7, 1e-3)["w"])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_stochastic_rounding_removes_the_bias_of_c_in_16_bit(dtype):
    """f(θ) = ⟨g, θ⟩ with bfloat16 weights near 1 and ε = 1e-3, below half a bfloat16 ulp: the
    computed ĉ regressed on the exact c = ⟨g, z⟩ has slope 1 within 5% with stochastic
    rounding (standard error about 0.006), while rounding to nearest leaves most weights
    unperturbed and shrinks ĉ (figures: benchmarks/bf16_perturbation.py)."""
    d, n, eps = 256, 20000, 1e-3
    rng = np.random.default_rng(0)
    theta = jnp.asarray(1.0 + 0.1 * rng.normal(size=d), dtype)
    g = jnp.asarray(rng.normal(size=d), jnp.float32)
    key, sampler = P.as_key(0), P.Gaussian()

    def estimates(rounding):
        def one(counter):
            tx = zojax.scale_by_mezo(eps, rounding=rounding)
            state = tx.init({"w": theta})
            state = state._replace(info=state.info._replace(count=counter))
            _, state = tx.update(None, state, {"w": theta}, value_fn=lambda p: jnp.dot(g, p["w"].astype(jnp.float32)))
            return zojax.step_info(state).projected_grad, jnp.dot(g, sampler(P.leaf_key(key, "w"), counter, (d,)))

        c_hat, c = (np.asarray(a, np.float64) for a in jax.jit(lambda: jax.lax.map(one, jnp.arange(n)))())
        return (c_hat @ c) / (c @ c)

    assert abs(estimates("stochastic") - 1) < 0.05
    if dtype == jnp.bfloat16:
        assert abs(estimates("nearest") - 1) > 0.2
