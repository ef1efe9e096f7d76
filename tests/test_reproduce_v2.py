"""The second reproduction driver's planning and statistics: no model, a few seconds."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from experiments import reproduce as R
from experiments import reproduce_v2 as V
from zojax.finetune.configs import reproduce_v2 as C


@pytest.fixture
def results(tmp_path, monkeypatch):
    """The driver reading and writing under an empty tmp root, the sample's majority fixed."""
    monkeypatch.setattr(R, "ROOT", tmp_path)
    monkeypatch.setattr(V, "majority", lambda: {"class": 1, "test": 0.509, "train_counts": [440, 560]})
    return tmp_path


def finish(root, row, heldout, correct=None, test=0.5):
    """A finished row: held-out losses at steps 0, 100, ... (the last at row.steps), its
    test predictions (correct: a bool per example), its summary."""
    d = root / row.output_dir
    d.mkdir(parents=True, exist_ok=True)
    steps = np.linspace(0, row.steps, len(heldout)).astype(int)
    with (d / "metrics.jsonl").open("w") as f:
        for t in range(1, row.steps + 1):
            f.write(json.dumps({"step": t, "loss": 1.0, "step_time": 2.0}) + "\n")
        for t, v in zip(steps, heldout):
            f.write(json.dumps({"step": int(t), "event": "eval", "dev": 0.5, "heldout_loss": v}) + "\n")
    if correct is not None:
        test = float(np.mean(correct))
        examples = [{"index": i, "predicted": 1 if c else 0, "gold": 1, "score": float(c)} for i, c in enumerate(correct)]
        (d / "predictions.json").write_text(json.dumps({"split": "test", "examples": examples}))
    (d / "summary.json").write_text(json.dumps({"test": test, "best_dev": 0.6, "best_step": row.steps, "zero_shot": None}))


def test_lr_grid_is_half_decades():
    assert [V.lr_of(k) for k in (-10, -9, -8)] == [1e-5, 3.16e-5, 1e-4]


def test_plan_grid_extends_past_an_edge_until_the_winner_is_interior():
    assert V.plan_grid(0, {}) == ([0, -1, 1], None, False)
    assert V.plan_grid(0, {0: 1.0, -1: 2.0}) == ([0, -1, 1], None, False)  # +1 not ended
    assert V.plan_grid(0, {0: 1.0, -1: 2.0, 1: 3.0}) == ([0, -1, 1], 0, True)
    # the low edge wins: -2 is added, then -3; -2 interior wins
    assert V.plan_grid(0, {0: 2.0, -1: 1.0, 1: 3.0}) == ([0, -1, 1, -2], None, False)
    assert V.plan_grid(0, {0: 2.0, -1: 1.0, 1: 3.0, -2: 0.5}) == ([0, -1, 1, -2, -3], None, False)
    assert V.plan_grid(0, {0: 2.0, -1: 1.0, 1: 3.0, -2: 0.5, -3: 0.9}) == ([0, -1, 1, -2, -3], -2, True)
    # a failed (inf) or diverged (nan) row loses; the top edge extends upward; ties take the lower k
    assert V.plan_grid(0, {0: 1.0, -1: math.inf, 1: 0.5}) == ([0, -1, 1, 2], None, False)
    assert V.plan_grid(0, {0: 1.0, -1: 1.0, 1: math.nan, -2: 3.0}) == ([0, -1, 1, -2], -1, True)
    # at most max_size values: an edge winner then stands
    assert V.plan_grid(0, {0: 2.0, -1: 1.0, 1: 3.0}, max_size=3) == ([0, -1, 1], -1, True)


def test_reach_needs_the_loss_to_stay_at_or_below_the_target():
    steps = [0, 100, 200, 300]
    assert V.reach(steps, [1.0, 0.5, 0.7, 0.4], 0.6, 2) == 600  # dips at 100, back above at 200
    assert V.reach(steps, [1.0, 0.5, 0.4, 0.3], 0.6, 2) == 200
    assert V.reach(steps, [1.0, 0.5, 0.4, 0.6], 0.6, 3) == 300  # equal counts as reached
    assert V.reach(steps, [1.0, 0.5, 0.4, 0.7], 0.6, 2) is None
    assert V.reach(steps, [0.1, 0.1, 0.1, 0.1], 0.6, 2) == 0
    assert V.reach(steps, [1.0, float("nan"), 0.4, 0.4], 0.6, 2) == 400  # NaN is not below


def test_mcnemar_exact_hand_computed():
    # b = 2 (only a right), c = 1: P[Bin(3, 1/2) <= 1] = 4/8, p = 1
    assert V.mcnemar([1, 1, 1, 0], [0, 0, 1, 1]) == (2, 1, 1.0)
    # b = 5, c = 0: 2 / 32
    assert V.mcnemar([1] * 5 + [0], [0] * 5 + [0]) == (5, 0, pytest.approx(0.0625))
    # b = 10, c = 2: 2 (1 + 12 + 66) / 4096
    a = [1] * 10 + [0] * 2 + [1] * 3
    b = [0] * 10 + [1] * 2 + [1] * 3
    assert V.mcnemar(a, b) == (10, 2, pytest.approx(158 / 4096))
    assert V.mcnemar([1, 0], [1, 0]) == (0, 0, 1.0)


def test_zoom_range_starts_below_the_lowest_zo_loss_after_step_0():
    steps = np.array([0, 100, 200])
    curves = {"mezo": [(steps, np.array([1.0, 0.6, 0.5])), (steps, np.array([1.0, 0.55, np.nan]))],
              "zo-adam": [(steps, np.array([0.3, 0.7, 1.1]))],  # 0.3 is at step 0: not counted
              "ft": [(steps, np.array([1.0, 0.4, 0.3]))]}  # not a ZO method
    assert V.zoom_range(curves) == pytest.approx((0.49, 0.5 + V.ZOOM))
    assert V.zoom_range({"ft": curves["ft"]}) is None


def test_plan_orders_controls_grids_round_robin_then_main_runs(results):
    rows = V.plan()
    assert [r.kind for r in rows[:3]] == ["control"] * 3
    assert [r.method for r in rows[3:3 + len(V.TRAINED)]] == list(V.TRAINED)  # one value per method in turn
    assert all(r.kind == "grid" for r in rows[3:]) and len(rows) == 3 + 3 * len(V.TRAINED)
    start = V.GRID_START["mezo"]
    for k, loss in ((start, 0.5), (start - 1, 0.6), (start + 1, 0.7)):  # the start wins: interior
        finish(results, V.grid_row("mezo", k), [0.7, loss])
    for k, loss in ((start, 0.5), (start - 1, 0.6), (start + 1, 0.4)):  # the top edge wins
        finish(results, V.grid_row("lozo", k), [0.7, loss])
    rows = V.plan()
    assert V.grid_row("lozo", start + 2) in rows and V.grid("lozo")[2] is False
    mains = [r for r in rows if r.kind == "main"]
    assert mains == [V.Row("mezo", "main", V.lr_of(start), s, C.MAIN_STEPS) for s in C.SEEDS]
    assert V.command(mains[1])[4:6] == [f"--config.learning_rate={V.fmt_lr(V.lr_of(start))}", f"--config.steps={C.MAIN_STEPS}"]


def test_first_methods_run_their_grids_and_main_runs_before_the_others(results):
    start = V.GRID_START["lozo"]
    for k, loss in ((start, 0.5), (start - 1, 0.6), (start + 1, 0.7)):  # LOZO's grid settles at its start
        finish(results, V.grid_row("lozo", k), [0.7, loss])
    rows = V.plan(first=("adamezo", "lozo"))
    assert sorted(rows, key=str) == sorted(V.plan(), key=str)  # the same rows, another order
    trained = [r for r in rows if r.kind != "control"]
    adamezo = V.GRID_START["adamezo"]
    assert trained[:7] == [
        V.grid_row("lozo", start), V.grid_row("adamezo", adamezo),
        V.grid_row("lozo", start - 1), V.grid_row("adamezo", adamezo - 1),
        V.grid_row("lozo", start + 1), V.grid_row("adamezo", adamezo + 1),
        V.Row("lozo", "main", V.lr_of(start), C.SEEDS[0], C.MAIN_STEPS),
    ]
    # after those 7 rows, LOZO's main seeds 1 and 2, then the other methods' grids
    assert [r.method for r in trained[9:9 + len(V.TRAINED) - 2]] == [m for m in V.TRAINED if m not in ("adamezo", "lozo")]
    with pytest.raises(ValueError, match="unknown methods.*'sgd'"):
        V.plan(first=("sgd",))


def test_table_from_fake_finished_rows(results):
    start = V.GRID_START
    for m, losses in (("mezo", (0.5, 0.6, 0.7)), ("lozo", (0.5, 0.6, 0.7))):
        for k, loss in zip((start[m], start[m] - 1, start[m] + 1), losses):
            finish(results, V.grid_row(m, k), [0.7, loss])
    n = 40
    mezo_correct = np.arange(n) < 20
    lozo_correct = np.arange(n) < 34  # 14 more right, none fewer: McNemar p = 2 / 2^14
    curves = {"mezo": [0.7, 0.6, 0.55, 0.5], "lozo": [0.7, 0.5, 0.45, 0.4]}
    for s in C.SEEDS:
        for m in ("mezo", "lozo"):
            finish(results, V.main_row(m, start[m], s), curves[m], mezo_correct if m == "mezo" else lozo_correct)
    finish(results, V.Row("zero-shot", "control"), [0.7], test=0.549)
    V.write_outputs()
    table = (results / V.RESULTS / "table.md").read_text()
    assert "| zero-shot | 54.9 |" in table and "| majority class (class 1 of train counts [440, 560]) | 50.9 |" in table
    assert "| in-context (4) | not started |" in table
    # LOZO: 85.0 in every seed; McNemar b = 14, c = 0
    p = 2 / 2**14
    assert f"| LOZO | {V.fmt_lr(V.lr_of(start['lozo']))} | 85.0 | 85.0 | 85.0 | 85.0 ± 0.0 | seed 0: 14, 0, {p:.3g}" in table
    assert "| MeZO | 3.16e-05 | 50.0 | 50.0 | 50.0 | 50.0 ± 0.0 |" in table
    assert "(b) LOZO is more accurate than MeZO: supported" in table
    assert "(b) AdaMeZO is more accurate than MeZO: not decided at this budget" in table
    # MeZO's final loss 0.5 in each seed: LOZO at 0.5 by step 100 (200 forward passes) and stays; MeZO at 2000
    steps_per_eval = C.MAIN_STEPS // 3
    assert f"| LOZO | {steps_per_eval * 2} | {steps_per_eval * 2} | {steps_per_eval * 2} |" in table
    assert "(a) LOZO reaches MeZO's final held-out loss with fewer forward passes than MeZO: supported" in table
    assert "(a) ZO-Adam reaches MeZO's final held-out loss with fewer forward passes than MeZO: not decided at this budget" in table
    assert "(c) LOZO and AdaMeZO keep MeZO's memory: not decided at this budget" in table
    assert (results / V.RESULTS / "heldout.png").exists()


def test_rate_check_runs_a_tied_neighbour_or_the_lower_one_after_the_main_runs(results):
    start = V.GRID_START["adamezo"]
    # the start wins by 0.004 over the lower neighbour and by 0.2 over the upper one
    for k, loss in ((start, 0.500), (start - 1, 0.504), (start + 1, 0.700)):
        finish(results, V.grid_row("adamezo", k), [0.7, loss])
    at_300 = {0: 0.50, 1: 0.51, 2: 0.49}  # sd over seeds at step 300: 0.01 > 0.004
    mains = [V.main_row("adamezo", start, s) for s in C.SEEDS]
    n = 40
    for r in mains[:-1]:
        finish(results, r, [0.7, 0.6, 0.55, at_300[r.seed]] + [0.5] * 6 + [0.48], np.arange(n) < 20)
    assert V.check_reasons("adamezo") == {} and not [r for r in V.plan() if r.kind == "check"]  # a seed unfinished
    finish(results, mains[-1], [0.7, 0.6, 0.55, at_300[2]] + [0.5] * 6 + [0.48])
    assert V.check_reasons("adamezo") == {start - 1: "tie"}
    check = V.Row("adamezo", "check", V.lr_of(start - 1), C.SEEDS[0], C.MAIN_STEPS)
    rows = V.plan()
    assert [r for r in rows if r.kind == "check"] == [check] and rows[-1] == check  # after every main row
    first = V.plan(first=("adamezo",))
    assert first.index(check) == first.index(mains[-1]) + 1  # with its group, before the others' grids
    assert V.command(check)[-1] == f"--workdir={V.RESULTS}/runs/check/adamezo/lr{V.fmt_lr(check.lr)}/seed{C.SEEDS[0]}"
    finish(results, check, [0.7] * 10 + [0.45], np.arange(n) < 30)  # 10 more right than the chosen rate, none fewer
    mezo = V.GRID_START["mezo"]
    for k in (mezo, mezo - 1, mezo + 1):
        finish(results, V.grid_row("mezo", k), [0.7, 0.5 if k == mezo else 0.6])
    finish(results, V.main_row("mezo", mezo, C.SEEDS[0]), [0.7, 0.46], np.arange(n) < 25)  # 5 more right than the chosen rate
    V.write_outputs()
    table = (results / V.RESULTS / "table.md").read_text()
    section = table.split("## Rate check")[1].split("## Peak memory")[0]
    chosen = ("chosen; seed spread at step 300 0.0100, main runs' mean 0.5000 at step 300, 0.4800 at the end")
    p5, p10 = f"{2 / 2**5:.3g}", f"{2 / 2**10:.3g}"
    assert f"| AdaMeZO | {V.fmt_lr(V.lr_of(start))} | {chosen} | 0.5000 | 0.4800 | 50.0 |  | 0, 5, {p5} | not reached |" in section
    # MeZO's seed-0 final loss 0.46: the check goes below it at its last evaluation
    assert (f"| AdaMeZO | {V.fmt_lr(check.lr)} | within the seed spread | 0.5040 | 0.4500 | 75.0 | 10, 0, {p10} "
            f"| 5, 0, {p5} | {C.MAIN_STEPS * R.ZO_FORWARDS} |") in section
    # a spread below the gap: nothing to check while the loss falls after step 300 ...
    for r, v in zip(mains, (0.500, 0.501, 0.499)):
        finish(results, r, [0.7, 0.6, 0.55, v] + [0.5] * 6 + [0.48])
    assert V.check_reasons("adamezo") == {}
    V.write_outputs()
    section = (results / V.RESULTS / "table.md").read_text().split("## Rate check")[1].split("## Peak memory")[0]
    assert ("- AdaMeZO: no check. Its grid neighbours' held-out losses are 0.0040 or more above the winner's "
            "(seed spread 0.0010), and its main runs' mean held-out loss falls from 0.5000 at step 300 to 0.4800 at the end."
            ) in section and "| method | lr |" not in section
    # ... and the lower neighbour when the main runs end above their loss at step 300
    for r, v in zip(mains, (0.500, 0.501, 0.499)):
        finish(results, r, [0.7, 0.6, 0.55, v] + [0.5] * 6 + [0.9])
    assert V.check_reasons("adamezo") == {start - 1: "rises"}


def test_a_row_run_again_at_another_code_version_is_compared_with_its_earlier_run(results):
    row = V.grid_row("mezo", V.GRID_START["mezo"])
    for d, code, loss in ((results / V.earlier_dir(row), "a" * 64, 0.61), (results / row.output_dir, "b" * 64, 0.6)):
        finish(results, row, [0.7, loss])
        log = d.with_name(d.name + ".log")
        log.mkdir(parents=True, exist_ok=True)
        (log / "provenance.jsonl").write_text(json.dumps({"git_head": "0123456789ab", "zojax_sha256": code}) + "\n")
        if d != results / row.output_dir:
            (results / row.output_dir).rename(d)
    V.write_outputs()
    table = (results / V.RESULTS / "table.md").read_text()
    assert (f"| grid MeZO lr 3.16e-05 seed 0 | {'a' * 12} (0123456789) | {'b' * 12} | differ first at eval at step 300 "
            "(heldout_loss: 0.61 vs 0.6); test 50.0 vs 50.0 |") in table
    assert f"Finished rows ran code {'b' * 12} (1 row)." in table
    # the same numbers with other timings: identical
    (results / V.earlier_dir(row) / "metrics.jsonl").write_text(
        (results / row.output_dir / "metrics.jsonl").read_text().replace('"step_time": 2.0', '"step_time": 3.5'))
    assert V.compare_runs(results / V.earlier_dir(row), results / row.output_dir).startswith("identical (")
    # other predictions: counted
    examples = [{"index": i, "predicted": i % 2, "gold": 1} for i in range(4)]
    (results / V.earlier_dir(row) / "predictions.json").write_text(json.dumps({"examples": examples}))
    examples[0]["predicted"] = 1
    (results / row.output_dir / "predictions.json").write_text(json.dumps({"examples": examples}))
    assert V.compare_runs(results / V.earlier_dir(row), results / row.output_dir).endswith(
        "; test 50.0 vs 50.0, 1 of 4 test predictions changed")


def test_every_row_names_the_boot_of_the_machine_it_started_on(results):
    """Host names repeat across machines; the boot id in provenance.jsonl does not."""
    boot = Path("/proc/sys/kernel/random/boot_id")
    if not boot.exists():
        pytest.skip("no /proc boot id here")
    new, old = V.grid_row("mezo", V.GRID_START["mezo"]), V.grid_row("lozo", V.GRID_START["lozo"])
    here = R.provenance(resume=False)
    assert here["machine"]["cores"] == os.cpu_count()
    for row, prov in ((new, here), (old, {"git_head": "0123456789ab", "load": [1.0, 2.0, 3.0]})):
        finish(results, row, [0.7, 0.6])
        (results / row.log_dir).mkdir(parents=True, exist_ok=True)
        (results / row.log_dir / "provenance.jsonl").write_text(json.dumps(prov) + "\n")
    V.write_outputs()
    lines = (results / V.RESULTS / "table.md").read_text().splitlines()
    line = {row: next(ln for ln in lines if ln.startswith(f"| {V.row_name(row)} | finished |")) for row in (new, old)}
    assert f"| {boot.read_text().strip()[:8]} |" in line[new]
    assert "| — | 1.0, 2.0, 3.0 |" in line[old]


def test_a_rate_check_that_beats_mezo_leaves_a_not_supported_claim_undecided(results):
    n, start = 40, V.GRID_START
    for m in ("mezo", "adamezo"):
        for k, loss in ((start[m], 0.500), (start[m] - 1, 0.504), (start[m] + 1, 0.700)):
            finish(results, V.grid_row(m, k), [0.7, loss])
    at_300 = {0: 0.50, 1: 0.51, 2: 0.49}  # spread 0.01 > 0.004: the lower neighbour is checked
    for s in C.SEEDS:
        finish(results, V.main_row("mezo", start["mezo"], s), [0.7] + [0.6] * 9 + [0.45], np.arange(n) < 20)
        finish(results, V.main_row("adamezo", start["adamezo"], s), [0.7, 0.6, 0.55, at_300[s]] + [0.5] * 7,
               np.arange(n) < 20)
    check = V.check_row("adamezo", start["adamezo"] - 1)
    assert V.check_reasons("adamezo") == {start["adamezo"] - 1: "tie"}

    def claims():
        V.write_outputs()
        table = (results / V.RESULTS / "table.md").read_text()
        return [line for line in table.splitlines() if line.startswith("- (a) AdaMeZO reach")
                or line.startswith("- (b) AdaMeZO is")]

    a, b = claims()  # check not run yet: the claims stand on the chosen rate alone
    assert ": not supported (" in a and "rate check" not in a and ": not supported (" in b and "rate check" not in b
    # the check reaches MeZO's 0.45 at step 500 (1000 forward passes, MeZO 2000) and gets 12 more right, none fewer
    finish(results, check, [0.7] * 5 + [0.44] * 6, np.arange(n) < 32)
    a, b = claims()
    assert a.endswith(f"seed 2: not reached vs 2000; rate check lr {V.fmt_lr(check.lr)}, seed 0: 1000 vs 2000; "
                      f"held-out loss evaluated every {C.EVAL_EVERY} steps).") and ": not decided at this budget (" in a
    assert b.endswith(f"; rate check lr {V.fmt_lr(check.lr)}, seed 0: 12, 0, {2 / 2**12:.3g}).")
    assert ": not decided at this budget (" in b
    # a check no better than MeZO is quoted and leaves "not supported" as it is
    finish(results, check, [0.7] * 10 + [0.46], np.arange(n) < 20)
    a, b = claims()
    assert ": not supported (" in a and "rate check lr" in a and "seed 0: not reached vs 2000; held" in a
    assert ": not supported (" in b and b.endswith(f"seed 0: 0, 0, 1).")
