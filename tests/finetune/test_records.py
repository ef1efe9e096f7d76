"""metrics.jsonl: strict JSON, one record per step after a resume, older files still read."""

import json
import math

import numpy as np

from zojax.finetune import records


def refuse(constant):
    raise ValueError(constant)


def test_records_are_strict_json_and_a_resume_drops_what_follows_its_step(tmp_path):
    log = records.Records(tmp_path, start=0)
    log.write({"step": 0, "event": "zero_shot", "dev": 0.5, "test": float("nan")})
    for step in range(1, 6):
        log.write({"step": step, "loss": [float("inf"), 1.0 / step][step > 1], "c": np.float32(step),
                   "f_plus": np.array([1.0, np.nan]), "skipped": step == 1})
    log.write({"step": 4, "event": "eval", "dev": 0.75})
    log.close()
    lines = [json.loads(line, parse_constant=refuse) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["test"] is None and lines[1]["loss"] is None and lines[1]["f_plus"] == [1.0, None]
    assert lines[2]["c"] == 2.0 and lines[1]["skipped"] is True

    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')  # cut by a kill
    records.Records(tmp_path, start=3).close()  # resumed from the checkpoint of step 3
    kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("event")) for r in kept] == [(0, "zero_shot"), (1, None), (2, None), (3, None)]
    records.Records(tmp_path, start=0).close()  # a fresh start
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_read_metrics_keeps_the_last_record_of_a_step_and_losses_stop_at_a_gap(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [
        {"step": 0, "event": "zero_shot", "dev": 0.5, "test": 0.5},
        {"step": 1, "loss": 3.0, "step_time": 9.0}, {"step": 2, "loss": None, "step_time": 1.0},
        {"step": 3, "loss": 1.0, "step_time": 1.0},  # written before a kill by an older zojax, repeated
        {"step": 3, "loss": 1.5, "step_time": 2.0}, {"step": 5, "loss": 0.5, "step_time": 2.0},
    ]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    steps, events = records.read_metrics(path)
    loss, times = records.losses(steps)
    assert loss[0] == 3.0 and math.isnan(loss[1]) and loss[2] == 1.5 and len(loss) == 3
    np.testing.assert_array_equal(times, [9.0, 1.0, 2.0])
    assert [e["event"] for e in events] == ["zero_shot"]


def test_summary_table_names_the_metric():
    summary = {"task": "squad", "optimizer": "mezo", "steps": 4, "metric": "F1", "zero_shot": {"dev": 0.1, "test": None},
               "best_dev": 0.25, "best_step": 2, "test": 0.3}
    table = records.summary_table(summary)
    assert "test F1 (best-dev params)  0.300" in table and "0.100 / —" in table and "0.250 (2)" in table
