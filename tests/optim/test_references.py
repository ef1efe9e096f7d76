"""40-step agreement with numpy transcriptions of the authors' trainers.

The directions come from a numpy RNG, not from zojax: a :class:`Table` sampler feeds the same
numpy draws to zojax that the references read, so a wrong counter, window or replay in
zojax shows up as a different trajectory. The references run in float64 and evaluate the
loss twice per step as the trainers do (the quadratic makes central differences exact, so
ε only sets float32 rounding in zojax). Some steps return a NaN loss: zojax skips them
(θ and the optimizer state unchanged, the z counter advanced) and the references simply do
not take them; the skips sit at the AdaMeZO warm-up boundary and at LOZO-M window boundaries,
including a whole skipped window.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zojax
from zojax import perturb as P

STEPS = 40
rng = np.random.default_rng(0)
A = rng.normal(size=(7, 7)) / 3
B = rng.normal(size=(7, 5))
PARAMS = {"kernel": rng.normal(size=(7, 5)).astype(np.float32), "bias": rng.normal(size=(5,)).astype(np.float32)}


def loss_np(p):
    return 0.5 * np.sum((A @ p["kernel"] + p["bias"] - B) ** 2)


def loss_jax(p):
    return 0.5 * ((jnp.asarray(A, jnp.float32) @ p["kernel"] + p["bias"] - jnp.asarray(B, jnp.float32)) ** 2).sum()


@dataclasses.dataclass(frozen=True, eq=False)
class Table:
    """A sampler reading z from numpy arrays: ``tables[shape][counter]`` (the key is ignored;
    every shape drawn in a test is distinct). ``elementwise`` selects zojax's fused code path."""

    tables: dict
    elementwise: bool = False

    def __call__(self, key, counter, shape):
        return jnp.asarray(self.tables[tuple(shape)], jnp.float32)[counter]


def normal_tables(count, *shapes, seed=1):
    r = np.random.default_rng(seed)
    return {s: r.standard_normal((count, *s)).astype(np.float32) for s in shapes}


def run_zojax(tx, skipped):
    params = {k: jnp.asarray(v) for k, v in PARAMS.items()}
    state = tx.init(params)

    @jax.jit
    def step(p, s, poison):
        value_fn = lambda q: jnp.where(poison, jnp.nan, loss_jax(q))
        u, s = tx.update(None, s, p, value_fn=value_fn)
        return optax.apply_updates(p, u), s

    out = []
    for t in range(STEPS):
        params, state = step(params, state, t in skipped)
        out.append({k: np.asarray(v, np.float64) for k, v in params.items()})
    assert int(zojax.step_info(state).skipped) == len(skipped)
    return out


def assert_trajectories_match(got, want, rtol=2e-5):
    for t in range(STEPS):
        for k in PARAMS:
            scale = np.abs(want[t][k]).max()
            np.testing.assert_allclose(got[t][k], want[t][k], rtol=rtol, atol=rtol * scale, err_msg=f"step {t} {k}")


def two_point_np(p, z, eps):
    """The trainers' zo_step: (f(θ + εz) − f(θ − εz)) / 2ε."""
    loss1 = loss_np({k: p[k] + eps * z[k] for k in p})
    loss2 = loss_np({k: p[k] - eps * z[k] for k in p})
    return (loss1 - loss2) / (2 * eps)


# --------------------------------------------------------------------------------------
# AdaMeZO: MeZO/large_models/trainer.py of shawnnn3di/AdaMeZO, zo_step and zo_update.


def adamezo_official(tables, lr, eps, beta1, beta2, hw, q, skipped):
    """The trainer's loop: ``total_steps`` from −1, incremented before each step; plain MeZO
    while ``hw < 2 or total_steps <= hw``; else the last hw (seed, projected_grad) pairs are
    replayed, ``temp_hess = 1`` when β2 = 0, ``g = temp_grad / (temp_hess ** 0.5 + 1e-5) * 100``.
    q > 1 (not in the trainer) averages q estimates per step into g, as MeZO's q does."""
    z_of = lambda n: {k: tables[v.shape][n].astype(np.float64) for k, v in PARAMS.items()}
    p = {k: v.astype(np.float64) for k, v in PARAMS.items()}
    total_steps, seed_history, projection_history, out = -1, [], [], []
    for t in range(STEPS):
        if t not in skipped:
            total_steps += 1
            seeds = [t * q + j for j in range(q)]
            grads = [two_point_np(p, z_of(n), eps) for n in seeds]
            seed_history.append(seeds)
            projection_history.append(grads)
            estimate = lambda seeds, grads, k: sum(c * z_of(n)[k] for c, n in zip(grads, seeds)) / q
            if hw < 2 or total_steps <= hw:
                p = {k: p[k] - lr * estimate(seeds, grads, k) for k in p}
            else:
                for k in p:
                    temp_grad, temp_hess = np.zeros_like(p[k]), np.zeros_like(p[k])
                    for i in range(hw):
                        idx = -(hw - i)
                        g = estimate(seed_history[idx], projection_history[idx], k)
                        temp_grad += beta1 ** (hw - 1 - i) * g
                        temp_hess += beta2 ** (hw - 1 - i) * g**2
                    if beta2 == 0:
                        temp_hess = np.ones_like(temp_hess)
                    p[k] = p[k] - lr * (temp_grad / (temp_hess**0.5 + 1e-5) * 100)
        out.append({k: v.copy() for k, v in p.items()})
    return out


def adamezo_paper(tables, lr, eps, beta1, beta2, h, skipped, delta=1e-5):
    """The paper's Adam form over the last h estimates g: m̂ = (1−β1) Σ β1^k g_{t−k} / (1−β1^n),
    v̂ likewise, θ ← θ − η m̂ / √(v̂ + δ), from the first step."""
    z_of = lambda n: {k: tables[v.shape][n].astype(np.float64) for k, v in PARAMS.items()}
    p = {k: v.astype(np.float64) for k, v in PARAMS.items()}
    history, out = [], []
    for t in range(STEPS):
        if t not in skipped:
            z = z_of(t)
            c = two_point_np(p, z, eps)
            history.append({k: c * z[k] for k in p})
            window = history[-h:][::-1]
            n = len(window)
            for k in p:
                m = (1 - beta1) * sum(beta1**i * g[k] for i, g in enumerate(window)) / (1 - beta1**n)
                v = (1 - beta2) * sum(beta2**i * g[k] ** 2 for i, g in enumerate(window)) / (1 - beta2**n)
                p[k] = p[k] - lr * m / np.sqrt(v + delta)
        out.append({k: x.copy() for k, x in p.items()})
    return out


ADAMEZO_SKIPS = {2, 7, 12, 13, 30}  # 2: the warm-up lasts to step 6; 7: the first Adam step


@pytest.mark.parametrize(
    "horizon, b2, q, elementwise",
    [(5, 0.9, 1, False), (5, 0.9, 1, True), (1, 0.9, 1, True), (5, 0.0, 1, True), (4, 0.8, 2, True)],
    ids=["h5", "h5-fused", "h1-plain-forever", "b2-zero", "q2"],
)
def test_adamezo_official_matches_the_authors_trainer(horizon, b2, q, elementwise):
    tables = normal_tables(STEPS * q, (7, 5), (5,))
    tx = zojax.adamezo(1e-4, 0.1, 0.7, b2, horizon, num_directions=q, sampler=Table(tables, elementwise))
    got = run_zojax(tx, ADAMEZO_SKIPS)
    want = adamezo_official(tables, 1e-4, 0.1, 0.7, b2, horizon, q, ADAMEZO_SKIPS)
    assert_trajectories_match(got, want)
    # The run leaves the warm-up (h >= 2) and moves the parameters.
    assert np.abs(want[-1]["kernel"] - want[horizon + 3]["kernel"]).max() > 1e-2


def test_adamezo_official_warms_up_for_h_plus_one_applied_steps():
    """Steps 0..h (skips not counted) are plain MeZO: θ_t − θ_{t+1} = η c_t z_t exactly."""
    h = 3
    tables = normal_tables(STEPS, (7, 5), (5,))
    got = run_zojax(zojax.adamezo(1e-4, 0.1, horizon=h, sampler=Table(tables)), {1})
    prev = {k: v.astype(np.float64) for k, v in PARAMS.items()}
    applied = 0
    for t in range(7):
        if t == 1:
            assert all(np.array_equal(got[t][k], got[t - 1][k]) for k in PARAMS)
            continue
        z = {k: tables[v.shape][t] for k, v in PARAMS.items()}
        c = two_point_np(prev, z, 0.1)
        step = (prev["kernel"] - got[t]["kernel"]) / (1e-4 * c)
        assert np.allclose(step, z["kernel"], rtol=1e-2, atol=1e-2) == (applied <= h), (t, applied)
        prev, applied = got[t], applied + 1


@pytest.mark.parametrize("b2, delta", [(0.9, 1e-5), (0.0, 1e-2)])
def test_adamezo_paper_form_matches_the_papers_formula(b2, delta):
    # With β2 = 0 the step is g / √(g² + δ), whose slope 1/√δ at g = 0 amplifies float32
    # rounding: a larger δ keeps the comparison at float32 tolerance.
    tables = normal_tables(STEPS, (7, 5), (5,))
    tx = zojax.adamezo(1e-2, 0.1, 0.7, b2, 5, form="paper", delta=delta, sampler=Table(tables, True))
    got = run_zojax(tx, ADAMEZO_SKIPS)
    want = adamezo_paper(tables, 1e-2, 0.1, 0.7, b2, 5, ADAMEZO_SKIPS, delta)
    assert_trajectories_match(got, want)


def test_adamezo_lowrank_replays_lozo_directions():
    """AdaMeZO over LowRank(r, ν) z = V_{t//ν} U_tᵀ (a Table base) equals the official
    AdaMeZO reference fed those z."""
    rank, nu = 2, 4
    factors = normal_tables(STEPS, (7, rank), (5, rank), (5,))
    z_kernel = np.stack([factors[(7, rank)][t // nu] @ factors[(5, rank)][t].T for t in range(STEPS)])
    tables = {(7, 5): z_kernel, (5,): factors[(5,)]}
    tx = zojax.adamezo(1e-4, 0.1, horizon=5, sampler=P.LowRank(rank, nu, Table(factors, True)))
    got = run_zojax(tx, ADAMEZO_SKIPS)
    want = adamezo_official(tables, 1e-4, 0.1, 0.7, 0.9, 5, 1, ADAMEZO_SKIPS)
    assert_trajectories_match(got, want)


# --------------------------------------------------------------------------------------
# LOZO and LOZO-M: medium_models/src/LOZOtrainer.py of optsuite/LOZO, lowrank_zo_update
# and lowrank_zo_update_momentum, on the torch layout W (out, in) = kernelᵀ, z = u vᵀ.


def lozo_reference(factors, lr, eps, rank, nu, beta, q, skipped):
    """v (in, r) redrawn at steps 0, ν, 2ν, …, u (out, r) and the bias's z fresh every step.

    LOZO: W ← W − η c u vᵀ. LOZO-M (β given): the trainer's exp_avg_m M (out, r):
    M = c u on the first step, M = β M v_oldᵀ v / n + (1 − β) c u when V is new (n = rows of
    v_old, the V M is expressed in), M = β M + (1 − β) c u otherwise; W ← W − η M vᵀ; the bias
    keeps a dense M likewise. The trainer triggers the transfer on ``step % ν == 0`` with
    v_old saved at ``step % ν == ν − 1``; with skipped steps the test is 'the window of the
    last applied step differs', which is the same when nothing is skipped. q > 1 (not in the
    trainer) averages c u over q draws of u with the window's v.
    """
    fresh, lazy, vec = factors[(5, rank)], factors[(7, rank)], factors[(5,)]
    w = PARAMS["kernel"].T.astype(np.float64)
    b = PARAMS["bias"].astype(np.float64)
    M = mb = m_window = None
    out = []
    for t in range(STEPS):
        v = lazy[t // nu].astype(np.float64)
        if t not in skipped:
            cu, cz = 0.0, 0.0
            for j in range(q):
                u, zb = fresh[t * q + j].astype(np.float64), vec[t * q + j].astype(np.float64)
                params = lambda s: {"kernel": (w + s * eps * (u @ v.T)).T, "bias": b + s * eps * zb}
                c = (loss_np(params(1)) - loss_np(params(-1))) / (2 * eps)
                cu, cz = cu + c * u / q, cz + c * zb / q
            if beta is None:
                w, b = w - lr * cu @ v.T, b - lr * cz
            else:
                if M is None:
                    M, mb = cu, cz
                elif m_window != t // nu:
                    v_old = lazy[m_window].astype(np.float64)
                    M = beta * M @ v_old.T @ v / v_old.shape[0] + (1 - beta) * cu
                    mb = beta * mb + (1 - beta) * cz
                else:
                    M = beta * M + (1 - beta) * cu
                    mb = beta * mb + (1 - beta) * cz
                m_window = t // nu
                w, b = w - lr * M @ v.T, b - lr * mb
        out.append({"kernel": w.T.copy(), "bias": b.copy()})
    return out


LOZO_SKIPS = {3, 8, 13, 20, 21, 22, 23, 31}  # ν = 4: last and first steps of windows, all of window 5


@pytest.mark.parametrize(
    "beta, q, elementwise", [(0.8, 1, True), (0.8, 1, False), (0.8, 2, True), (None, 1, True), (None, 3, True)],
    ids=["lozo-m", "lozo-m-unfused", "lozo-m-q2", "lozo", "lozo-q3"],
)
def test_lozo_matches_the_authors_trainer_across_resamples_and_skips(beta, q, elementwise):
    rank, nu = 2, 4
    factors = normal_tables(STEPS * q, (7, rank), (5, rank), (5,), seed=3)
    tx = zojax.lozo(1e-2, 0.1, rank, nu, beta, num_directions=q, base_sampler=Table(factors, elementwise))
    got = run_zojax(tx, LOZO_SKIPS)
    want = lozo_reference(factors, 1e-2, 0.1, rank, nu, beta, q, LOZO_SKIPS)
    assert_trajectories_match(got, want)


# --------------------------------------------------------------------------------------
# The ZO family: numpy transcriptions of each update rule, z from the same numpy tables.

FAMILY_SKIPS = {4, 5, 17, 30}


def grad_np(p):
    r = A @ p["kernel"] + p["bias"] - B
    return {"kernel": A.T @ r, "bias": r.sum(0)}


def family_reference(rule, lr, eps, tables, skipped, q=1):
    """θ ← θ − η·direction, with direction = rule(state, p, c_list, z_list) -> (d, state)."""
    z_of = lambda n: {k: tables[v.shape][n].astype(np.float64) for k, v in PARAMS.items()}
    p = {k: v.astype(np.float64) for k, v in PARAMS.items()}
    state, out = None, []
    for t in range(STEPS):
        if t not in skipped:
            zs = [z_of(t * q + j) for j in range(q)]
            d, state = rule(state, p, zs, eps, lr)
            p = {k: p[k] - lr * d[k] for k in p}
        out.append({k: v.copy() for k, v in p.items()})
    return out


def sign_rule(state, p, zs, eps, lr):
    c = two_point_np(p, zs[0], eps)
    return {k: np.sign(c * zs[0][k]) for k in p}, state


def momentum_rule(state, p, zs, eps, lr, beta=0.8):
    c = two_point_np(p, zs[0], eps)
    m = {k: (0 if state is None else beta * state[k]) + c * zs[0][k] for k in p}
    return m, m


def adam_rule(state, p, zs, eps, lr, b1=0.9, b2=0.99, delta=1e-8):
    c = two_point_np(p, zs[0], eps)
    n, m, v = state or (0, {k: 0.0 for k in p}, {k: 0.0 for k in p})
    g = {k: c * zs[0][k] for k in p}
    n, m, v = n + 1, {k: b1 * m[k] + (1 - b1) * g[k] for k in p}, {k: b2 * v[k] + (1 - b2) * g[k] ** 2 for k in p}
    return {k: m[k] / (1 - b1**n) / (np.sqrt(v[k] / (1 - b2**n)) + delta) for k in p}, (n, m, v)


def cons_rule(state, p, zs, eps, lr):
    """ZO-Bench's conservative step: of θ, θ − ηĝ, θ + ηĝ keep the lowest loss. The test's
    draws must decide every choice in float32: the best loss beats the next by > 1e-5."""
    c = two_point_np(p, zs[0], eps)
    g = {k: c * zs[0][k] for k in p}
    losses = [loss_np({k: p[k] - s * lr * g[k] for k in p}) for s in (0, 1, -1)]
    best, runner_up = sorted(losses)[:2]
    assert runner_up - best > 1e-5 * best, f"a float32 tie between candidates {losses}: choose other draws"
    s = (0, 1, -1)[int(np.argmin(losses))]
    return {k: s * g[k] for k in p}, state


def forward_rule(state, p, zs, eps, lr):
    grad = grad_np(p)
    dd = [sum(np.sum(grad[k] * z[k]) for k in p) for z in zs]
    return {k: sum(d * z[k] for d, z in zip(dd, zs)) / len(zs) for k in p}, state


def hizoo_rule(state, p, zs, eps, lr, alpha=0.05):
    """HiZOO's trainer, zo_Hessian_step_update, with α = Hessian_smooth."""
    H = state or {k: np.ones_like(v) for k, v in p.items()}
    z = zs[0]
    loss_original = loss_np(p)
    loss1 = loss_np({k: p[k] + eps * z[k] / np.sqrt(H[k]) for k in p})
    loss2 = loss_np({k: p[k] - eps * z[k] / np.sqrt(H[k]) for k in p})
    new_h, grad = {}, {}
    for k in p:
        hessian_estimator = abs(loss1 + loss2 - 2 * loss_original) * H[k] * z[k] * z[k] * alpha / (2 * eps * eps)
        new_h[k] = (1 - alpha) * H[k] + hessian_estimator
        grad[k] = (loss1 - loss2) / (2 * eps) * z[k] / np.sqrt(new_h[k])
    return grad, new_h


FAMILY = {
    "zo-sign": (lambda s: zojax.zo_sign(2e-2, 0.1, sampler=s), sign_rule, 2e-2, 1),
    "zo-momentum": (lambda s: zojax.zo_momentum(2e-3, 0.1, 0.8, sampler=s), momentum_rule, 2e-3, 1),
    "zo-adam": (lambda s: zojax.zo_adam(1e-2, 0.1, 0.9, 0.99, sampler=s), adam_rule, 1e-2, 1),
    # η large enough that θ − ηĝ overshoots on 15 of the 36 steps taken and θ is kept.
    "zo-cons": (lambda s: zojax.zo_cons(3e-2, 0.1, sampler=s), cons_rule, 3e-2, 1),
    "forward-gradient": (lambda s: zojax.forward_gradient(5e-3, num_directions=2, sampler=s), forward_rule, 5e-3, 2),
    "hizoo": (lambda s: zojax.hizoo(5e-3, 0.1, 0.05, sampler=s), hizoo_rule, 5e-3, 1),
}


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_family_matches_numpy_transcription(name):
    make, rule, lr, q = FAMILY[name]
    tables = normal_tables(STEPS * q, (7, 5), (5,), seed=5)
    got = run_zojax(make(Table(tables, True)), FAMILY_SKIPS)
    want = family_reference(rule, lr, 0.1, tables, FAMILY_SKIPS, q)
    assert_trajectories_match(got, want, rtol=5e-5)
    assert loss_np(want[-1]) < 0.9 * loss_np(PARAMS)  # the run makes progress


def test_zo_cons_takes_the_opposite_step_when_the_estimate_points_uphill():
    """f(θ) = cos θ at θ = 0.5, z = 1, ε = 4: c = (cos(θ+ε) − cos(θ−ε)) / 2ε = −sin θ sin ε / ε > 0
    while f'(θ) = −sin θ < 0, so θ + ηĝ is the best of the three candidates (the quadratic of
    the transcription test never gives that branch: its central differences are exact)."""
    c = -np.sin(0.5) * np.sin(4.0) / 4.0
    assert c > 0 > -np.sin(0.5)
    tx = zojax.zo_cons(1.0, 4.0, sampler=Table({(1,): np.ones((1, 1), np.float32)}))
    params = {"w": jnp.full((1,), 0.5)}
    updates, state = tx.update(None, tx.init(params), params, value_fn=lambda p: jnp.cos(p["w"][0]))
    np.testing.assert_allclose(np.asarray(updates["w"]), [c], rtol=1e-5)
    np.testing.assert_allclose(float(zojax.step_info(state).projected_grad), c, rtol=1e-5)
