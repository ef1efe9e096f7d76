"""The one writer and reader of a run's records: ``metrics.jsonl``, TensorBoard scalars, an
optional Weights & Biases run, the loss plot and the summary table.

metrics.jsonl holds strict JSON, one line per step (``{"step", "loss", "lr", "f_plus",
"f_minus", "c", "skipped", "step_time"}``; ZO fields are null for first-order steps,
non-finite numbers are null) and one line per event (``{"step", "event": "zero_shot" |
"eval", "dev", ...}``). A run resumed at step s first drops every record after s, so after
any number of kills the file has one record per step.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np


def jsonable(value):
    """``value`` with arrays as (lists of) floats and non-finite floats as None."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        value = np.asarray(value)
        return jsonable(value.tolist()) if value.ndim else jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def dumps(record: dict) -> str:
    return json.dumps(jsonable(record), allow_nan=False)


def read_metrics(path: Path) -> tuple[dict[int, dict], list[dict]]:
    """({step: step record}, events sorted by step) from a metrics.jsonl, keeping the last
    record of each step or (event, step) (files written before resume truncated them repeat
    steps) and skipping a line cut short by a kill."""
    steps, events = {}, {}
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "event" in r:
                events[(r["event"], r["step"])] = r
            elif "loss" in r:
                steps[r["step"]] = r
    return steps, sorted(events.values(), key=lambda r: r["step"])


def losses(steps: dict[int, dict]) -> tuple[np.ndarray, np.ndarray]:
    """(training loss, step time) of steps 1..n of :func:`read_metrics`'s step records, n the
    last step of an unbroken run from 1; null is NaN."""
    n = 0
    while n + 1 in steps:
        n += 1
    value = lambda r, k: np.nan if r.get(k) is None else r[k]
    return (np.array([value(steps[i], "loss") for i in range(1, n + 1)], np.float64),
            np.array([value(steps[i], "step_time") for i in range(1, n + 1)], np.float64))


class Records:
    """Writes the records of the run in ``workdir`` that starts (or resumes) at ``start``;
    does nothing unless ``enabled`` (process 0 of a multi-host run)."""

    def __init__(self, workdir: Path, start: int, enabled: bool = True, wandb: dict | None = None):
        self.workdir, self.enabled = Path(workdir), enabled
        self.wandb = None
        if not enabled:
            return
        metrics = self.workdir / "metrics.jsonl"
        keep = []
        if start and metrics.exists():
            for line in metrics.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= start:
                        keep.append(line)
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
        tmp = metrics.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        tmp.replace(metrics)
        self.jsonl = metrics.open("a")
        from tensorboardX import SummaryWriter

        if not start:
            shutil.rmtree(self.workdir / "tensorboard", ignore_errors=True)
        # purge_step: TensorBoard drops the events logged after the checkpoint.
        self.tb = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=start + 1 if start else None)
        if wandb:
            import wandb as wandb_module

            self.wandb = wandb_module.init(dir=str(self.workdir), resume="allow", **wandb)

    def text(self, message: str) -> None:
        if self.enabled:
            print(message, flush=True)

    def write(self, record: dict) -> None:
        """Append a step or event record (see the module docstring)."""
        if not self.enabled:
            return
        self.jsonl.write(dumps(record) + "\n")
        self.jsonl.flush()
        prefix = f"{record['event']}/" if "event" in record else ""
        scalars = {prefix + k: v for k, v in jsonable(record).items() if k not in ("step", "event")
                   and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for k, v in scalars.items():
            self.tb.add_scalar(k, v, record["step"])
        if self.wandb is not None:
            self.wandb.log(scalars, step=record["step"])

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()
            if self.wandb is not None:
                self.wandb.finish()


def plot_loss(metrics: Path, png: Path, zeroth_order: bool) -> None:
    """The training loss against forward passes (ZO: 2 per step) or steps (first-order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss, _ = losses(read_metrics(metrics)[0])
    if not len(loss):
        return
    x = np.arange(1, len(loss) + 1) * (2 if zeroth_order else 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, loss, lw=0.8)
    ax.set_xlabel("forward passes" if zeroth_order else "steps (forward + backward)")
    ax.set_ylabel("training loss")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def summary_table(summary: dict) -> str:
    """The summary as aligned text, naming the metric (accuracy, or F1 for SQuAD/DROP)."""
    metric = summary.get("metric", "accuracy")
    fmt = lambda v: "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"
    zs = summary.get("zero_shot") or {}
    rows = [
        ("task", summary["task"]), ("optimizer", summary["optimizer"]), ("steps", summary["steps"]),
        (f"zero-shot dev / test {metric}", f"{fmt(zs.get('dev'))} / {fmt(zs.get('test'))}"),
        (f"best dev {metric} (step)", "—" if summary["best_dev"] is None else f"{fmt(summary['best_dev'])} ({summary['best_step']})"),
        (f"test {metric} (best-dev params)", fmt(summary["test"])),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
