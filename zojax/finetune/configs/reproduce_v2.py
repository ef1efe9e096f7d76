"""The protocol of the second reproduction (issue #19): SmolLM2-135M on SST-2, one config per
method; ``experiments/reproduce_v2.py`` runs the rows (grids, main runs, controls) and the table.

    zojax-train --config=reproduce_v2:mezo --config.learning_rate=3.16e-05 --config.steps=300 \
        --config.seed=0 --workdir=experiments/results/v2/runs/grid/mezo/lr3.16e-05

Sample (fixed by ``data_seed``; ``seed`` changes z and the batch order only): train 1,000
from SST-2's training split, dev 200 from it (as the first reproduction), a held-out set of
256 more from it (disjoint; its training loss is logged every ``EVAL_EVERY`` steps), test
all 872 validation examples. Batch 16, z from the counter-based "hash" sampler, ε = 1e-3.
"""

from zojax.finetune.config import default_config
from zojax.finetune.configs import reproduce as V1

TASK = "sst2"
NUM_TRAIN, NUM_DEV, NUM_TEST, NUM_HELDOUT = 1000, 200, 872, 256
DATA_SEED = 0
GRID_STEPS = 300  # learning-rate grid rows
MAIN_STEPS = 1000  # main rows (2,000 forward passes for a ZO method)
FT_STEPS = 300  # first-order Adam's rows (a step counted as 3 forward passes: 900)
SEEDS = (0, 1, 2)
EVAL_EVERY = 100
CHECKPOINT_EVERY = 100

# The first reproduction's method settings (LOZO rank 2, ν 50; AdaMeZO β1 0.7, β2 0.9, h 10),
# ZO-Adam with its registry defaults, the controls.
METHODS = {
    "zero-shot": dict(steps=0),
    "zero-shot-calibrated": dict(steps=0, calibrate=True),
    "icl": dict(steps=0, num_demos=V1.NUM_DEMOS),
    **{m: V1.METHODS[m] for m in ("mezo", "lozo", "lozo-m", "adamezo", "adamezo-lowrank")},
    "zo-adam": dict(optimizer="zo-adam", learning_rate=1e-5),
    "ft": dict(optimizer="adam", learning_rate=1e-5, steps=FT_STEPS),
}


def get_config(method: str = "mezo"):
    if method not in METHODS:
        raise ValueError(f"config argument {method!r} must be one of {list(METHODS)}")
    cfg = default_config()
    cfg.update(dict(
        task=TASK, data_dir="../shared/data", batch_size=16, steps=MAIN_STEPS, eval_every=EVAL_EVERY,
        checkpoint_every=CHECKPOINT_EVERY, sampler=V1.SAMPLER, eps=1e-3, seed=0, data_seed=DATA_SEED,
        progress=False, num_train=NUM_TRAIN, num_dev=NUM_DEV, num_test=NUM_TEST, num_heldout=NUM_HELDOUT,
        workdir=f"experiments/results/v2/runs/{method}",
    ))
    cfg.update(METHODS[method])
    if cfg.steps == 0:  # evaluation only: no dev selection, so no dev set to score
        cfg.num_dev = 1
    return cfg
