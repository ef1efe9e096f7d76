"""The reproduction driver's pure parts: no model, a few seconds."""

import json
import math
import os

import numpy as np
import pytest

from experiments import reproduce as R
from zojax import finetune


@pytest.fixture
def results(tmp_path, monkeypatch):
    """The driver reading and writing under an empty tmp root."""
    monkeypatch.setattr(R, "ROOT", tmp_path)
    return tmp_path


def finish(root, row, test, best_dev, best_step=50, losses=(1.0, 0.9, 0.8)):
    d = root / row.output_dir
    d.mkdir(parents=True, exist_ok=True)
    with (d / "metrics.jsonl").open("w") as f:
        for i, v in enumerate(losses, 1):
            f.write(json.dumps({"step": i, "loss": v, "skipped": False, "step_time": 1.0 + i}) + "\n")
    summary = {"task": row.task, "test": test, "best_dev": best_dev, "best_step": best_step, "seed": 0,
               "zero_shot": {"dev": 0.5, "test": 0.5}}
    (d / "summary.json").write_text(json.dumps(summary))


def test_moving_average_is_trailing():
    np.testing.assert_allclose(R.moving_average([4, 2, 0, 6], 2), [4, 3, 1, 3])
    np.testing.assert_allclose(R.moving_average([1, 2, 3], 5), [1, 1.5, 2])


def test_forwards_to_reach_hand_computed():
    loss = [10, 8, 6, 4, 2, 0]
    # window 2 moving averages from step 2: 9, 7, 5, 3, 1 -> first <= 5 at step 4
    assert R.forwards_to_reach(loss, 5.0, forwards_per_step=2, window=2) == 8
    assert R.forwards_to_reach(loss, 5.0, forwards_per_step=3, window=2) == 12
    # steps before a full window do not count, even if the partial average is low enough
    assert R.forwards_to_reach([0, 10, 10], 1.0, 2, window=2) is None
    assert R.forwards_to_reach(loss, -1.0, 2, window=2) is None
    assert R.forwards_to_reach(loss, 9.0, 2, window=2) == 4  # MA at step 2 equals the target


def test_median_step_time_skips_compilation():
    assert R.median_step_time([100.0, 1.0, 3.0, 2.0]) == 2.0
    assert math.isnan(R.median_step_time([100.0]))


def test_read_metrics_keeps_the_last_record_of_a_resumed_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [
        {"step": 0, "event": "zero_shot", "dev": 0.5, "test": 0.5},
        {"step": 1, "loss": 3.0, "step_time": 9.0}, {"step": 2, "loss": 2.0, "step_time": 1.0},
        {"step": 3, "loss": 1.0, "step_time": 1.0},  # logged after the checkpoint at 2, then killed
        {"step": 3, "loss": 1.0, "step_time": 2.0}, {"step": 4, "loss": 0.5, "step_time": 2.0},
    ]
    path.write_text("\n".join(json.dumps(r) for r in lines) + '\n{"step": 5, "lo')  # a cut line
    loss, times, evals = R.read_metrics(path)
    np.testing.assert_array_equal(loss, [3.0, 2.0, 1.0, 0.5])
    np.testing.assert_array_equal(times, [9.0, 1.0, 2.0, 2.0])
    assert [e["event"] for e in evals] == ["zero_shot"]


def test_table_marks_unfinished_rows_and_never_fills_them(results):
    tasks, methods = ["sst2", "rte"], ["zero-shot", "mezo", "lozo"]
    finish(results, R.Row("sst2", "zero-shot"), test=0.611, best_dev=0.6, best_step=0)
    finish(results, R.Row("sst2", "mezo", R.GRID["mezo"][0]), test=0.734, best_dev=0.70)
    finish(results, R.Row("sst2", "mezo", R.GRID["mezo"][1]), test=0.999, best_dev=0.65)  # worse dev: not chosen
    failed = results / R.Row("sst2", "lozo", R.GRID["lozo"][0]).log_dir
    failed.mkdir(parents=True)
    (failed / "FAILED").write_text("exit code 1\n")
    table = R.render_table(tasks, methods)
    main = table.split("## Test accuracy")[1].split("##")[0]
    mezo_line = next(l for l in main.splitlines() if l.startswith("| MeZO"))
    assert "73.4" in mezo_line and "99.9" not in mezo_line  # the dev-selected lr
    assert mezo_line.endswith("| not finished |")  # RTE's MeZO has not run
    lozo_line = next(l for l in main.splitlines() if l.startswith("| LOZO"))
    assert lozo_line == "| LOZO | 0 | failed | not finished |"
    assert "61.1" in next(l for l in main.splitlines() if l.startswith("| zero-shot"))
    # every unfinished row in the command list is marked and carries no accuracy
    commands = table.split("## Every row")[1].splitlines()
    for row in R.plan(tasks, methods):
        line = next(l for l in commands if f"--workdir={row.output_dir}`" in l)
        if R.status(row) != "finished":
            assert ("not finished" in line) or ("failed" in line)
            assert [c.strip() for c in line.split("|")[5:8]] == ["", "", ""]
    # RTE reuses the lr chosen on SST-2 once its grid is complete
    for m, rest in (("mezo", R.GRID["mezo"][2:]), ("lozo", R.GRID["lozo"][2:])):
        for lr in rest:
            finish(results, R.Row("sst2", m, lr), test=0.5, best_dev=0.5)
    finish(results, R.Row("sst2", "lozo", R.GRID["lozo"][1]), test=0.7, best_dev=0.7)
    rte = {r.method: r for r in R.plan(tasks, methods) if r.task == "rte"}
    assert rte["mezo"].lr == R.GRID["mezo"][0] and "chosen on SST-2 dev" in rte["mezo"].note
    assert rte["lozo"].lr == R.GRID["lozo"][1]


def test_dev_ties_go_to_the_lower_final_loss(results):
    finish(results, R.Row("sst2", "mezo", R.GRID["mezo"][0]), test=0.5, best_dev=0.7, losses=(1.0, 1.0))
    finish(results, R.Row("sst2", "mezo", R.GRID["mezo"][1]), test=0.6, best_dev=0.7, losses=(1.0, 0.5))
    for lr in R.GRID["mezo"][2:]:
        finish(results, R.Row("sst2", "mezo", lr), test=0.9, best_dev=0.6, losses=(0.1, 0.1))
    sel = R.selection("sst2", "mezo")
    assert sel["lr"] == R.GRID["mezo"][1] and sel["complete"]


@pytest.mark.parametrize("row", [
    R.Row("sst2", "zero-shot"), R.Row("cb", "icl"), R.Row("sst2", "lozo-m", 1e-4), R.Row("rte", "ft", 3e-5),
    R.Row("copa", "adamezo-lowrank", 1e-7),
])
def test_command_round_trips_through_the_cli_parser(row, monkeypatch):
    monkeypatch.chdir(R.ROOT)  # data_dir is relative to the repository root
    cmd = R.command(row)
    assert cmd[:3] == ["python", "-m", "experiments.run"]
    cfg = R.row_config(row)
    assert set(cfg.keys()) == set(finetune.default_config().keys())
    finetune.validate(cfg)
    assert cfg.task == row.task and cfg.workdir == str(row.output_dir) and cfg.seed == 0
    if row.lr is None:
        assert cfg.steps == 0
    else:
        assert cfg.learning_rate == row.lr and cfg.steps > 0
        assert cfg.optimizer == ("adam" if row.method == "ft" else row.method)


def test_zo_rows_spend_the_same_forward_passes():
    cfgs = [R.row_config(R.Row("sst2", m, R.GRID[m][0])) for m in R.TRAINED if m != "ft"]
    assert len({c.steps * R.ZO_FORWARDS for c in cfgs}) == 1
    assert len({c.batch_size for c in cfgs}) == 1


def test_plan_runs_every_method_on_sst2_first_then_tasks_by_cost(results):
    rows = R.plan(["sst2", "rte", "copa"], list(R.METHODS))
    first = rows[: len(R.METHODS)]
    assert {r.task for r in first} == {"sst2"} and {r.method for r in first} == set(R.METHODS)
    sst2 = [r for r in rows if r.task == "sst2"]
    assert {(r.method, r.lr) for r in sst2 if r.lr is not None} == {(m, lr) for m in R.TRAINED for lr in R.GRID[m]}
    # then the cheapest task, the rest of SST-2's grid, and the dearest task
    blocks = [r.task for r in rows[len(R.METHODS):]]
    assert [t for i, t in enumerate(blocks) if i == 0 or blocks[i - 1] != t] == ["copa", "sst2", "rte"]
    assert len({r.output_dir for r in rows}) == len(rows)


def test_one_driver_at_a_time_and_a_stopped_driver_frees_its_lock(results, monkeypatch):
    monkeypatch.chdir(results)  # main() works from ROOT
    lock = results / R.LOCK
    lock.parent.mkdir(parents=True)
    lock.write_text(f"{os.getppid()}\n")  # a live process other than this one
    assert R.main(["--tasks", "copa", "--methods", "zero-shot"]) == 1
    assert (results / R.RESULTS / "table.md").exists()  # the table is rebuilt before the refusal
    monkeypatch.setattr(R, "_child", None)
    with pytest.raises(SystemExit) as stopped:  # SIGTERM: the child is stopped, the lock removed
        R._terminate(15, None)
    assert stopped.value.code == 143 and not lock.exists()


@pytest.mark.parametrize("flat", [True, False])
def test_reach_table_warns_when_mezo_reaches_its_own_target_early(results, flat):
    steps = 2 * R.SMOOTH
    losses = [1.0] * steps if flat else list(np.linspace(1.0, 0.1, steps))
    finish(results, R.Row("copa", "mezo", R.GRID["mezo"][0]), test=0.6, best_dev=0.6, losses=losses)
    text = "\n".join(R.reach_table("copa", [R.Row("copa", "mezo", R.GRID["mezo"][0])]))
    assert ("says little" in text) == flat
    assert f"| MeZO | {R.fmt_lr(R.GRID['mezo'][0])} | {R.SMOOTH * 2 if flat else steps * 2} |" in text
