"""The protocol of the reproduction table (issue #8): SmolLM2-135M on the MeZO-style tasks,
one config per (task, method); ``experiments/reproduce.py`` runs the grid and builds the table.

    zojax-train --config=reproduce:sst2,lozo \
        --config.learning_rate=3e-05 --workdir=experiments/results/runs/sst2/lozo/lr3e-05

Shrunk to fit a 2-core CPU (see experiments/results/table.md for what finished):
every ZO method takes ``ZO_STEPS`` steps of batch 16 (2 forward passes each), so all ZO
methods spend the same forward passes; first-order Adam takes ``FO_STEPS`` steps (counted
as 3 forward passes each). Samples: 1,000 train (the MeZO protocol), dev ``min(200,
protocol)`` drawn disjointly from the training split, test 500 from the validation split
(all of it where it is smaller). z from the counter-based "hash" sampler (Gaussian-like,
E[zzᵀ] = I; several times cheaper than jax.random.normal on CPU).
"""

from zojax.finetune.config import default_config

ZO_STEPS = 100
FO_STEPS = 40
EVAL_EVERY = 50
CHECKPOINT_EVERY = 10
NUM_TRAIN, NUM_DEV, NUM_TEST = 1000, 200, 500
NUM_DEMOS = 4  # in-context demonstrations (max_length 256 keeps the last tokens)
SAMPLER = "hash"

METHODS = {
    "zero-shot": dict(steps=0),
    "icl": dict(steps=0, num_demos=NUM_DEMOS),
    "mezo": dict(optimizer="mezo", learning_rate=3e-5),
    "lozo": dict(optimizer="lozo", learning_rate=3e-5, rank=2, nu=50),
    "lozo-m": dict(optimizer="lozo-m", learning_rate=3e-5, rank=2, nu=50, momentum=0.9),
    "adamezo": dict(optimizer="adamezo", learning_rate=1e-7, b1=0.7, b2=0.9, horizon=10),
    "adamezo-lowrank": dict(optimizer="adamezo-lowrank", learning_rate=1e-7, b1=0.7, b2=0.9, horizon=10, rank=2, nu=50),
    "ft": dict(optimizer="adam", learning_rate=1e-5, steps=FO_STEPS, eval_every=20),
}
# The MeZO protocol's dev sizes (CB and COPA: 100); the table uses at most NUM_DEV.
PROTOCOL_DEV = {"cb": 100, "copa": 100}


def get_config(spec: str = "sst2,lozo"):
    try:
        task, method = spec.split(",")
        overrides = METHODS[method]
    except (ValueError, KeyError):
        raise ValueError(f"config argument {spec!r} must be 'task,method' with method in {list(METHODS)}") from None
    cfg = default_config()
    cfg.update(dict(
        task=task, data_dir="../shared/data", batch_size=16, steps=ZO_STEPS, eval_every=EVAL_EVERY,
        checkpoint_every=CHECKPOINT_EVERY, sampler=SAMPLER, eps=1e-3, seed=0, progress=False,
        num_train=NUM_TRAIN, num_dev=min(NUM_DEV, PROTOCOL_DEV.get(task, 500)), num_test=NUM_TEST,
        workdir=f"experiments/results/runs/{task}/{method}",
    ))
    cfg.update(overrides)
    if cfg.steps == 0:  # evaluation only: no dev selection, so no dev set to score
        cfg.num_dev = 1
    return cfg
