"""The papers' settings on OPT models, one per (model, method, task):

    zojax-train --config=paper:opt-13b,lozo,sst2

Hyperparameters as published: MeZO (Malladi et al. 2023, Table 15: 20,000 steps, batch
16, lr ∈ {1e-6, 1e-7}, ε = 1e-3, constant schedule), LOZO / LOZO-M (Chen et al. 2024:
rank 2, ν = 50, β = 0.9, otherwise MeZO's grid), AdaMeZO (Cai et al. 2026: horizon 10,
β1 = 0.7, β2 = 0.9, lr 1e-7). Learning rates are the grids' lower ends; sweep
``--config.learning_rate`` over the grid for the dev-selected figure. SQuAD and DROP
train on the gold answer's LM loss (``--config.objective=f1`` for MeZO's non-differentiable
objective) and report F1.
"""

from zojax.finetune.config import default_config

MODELS = {"opt-13b": "facebook/opt-13b", "opt-30b": "facebook/opt-30b", "opt-66b": "facebook/opt-66b"}
METHODS = {
    "mezo": dict(optimizer="mezo", learning_rate=1e-7, eps=1e-3),
    "lozo": dict(optimizer="lozo", learning_rate=1e-7, eps=1e-3, rank=2, nu=50),
    "lozo-m": dict(optimizer="lozo-m", learning_rate=1e-7, eps=1e-3, rank=2, nu=50, momentum=0.9),
    "adamezo": dict(optimizer="adamezo", learning_rate=1e-7, eps=1e-3, b1=0.7, b2=0.9, horizon=10),
}
TASKS = ("sst2", "rte", "cb", "boolq", "wsc", "wic", "multirc", "copa", "record", "squad", "drop")
GENERATION = ("squad", "drop")


def get_config(spec: str = "opt-13b,lozo,sst2"):
    try:
        model, method, task = spec.split(",")
        chosen = MODELS[model], METHODS[method]
    except (ValueError, KeyError):
        raise ValueError(
            f"config argument {spec!r} must be 'model,method,task' with model in {sorted(MODELS)}, "
            f"method in {sorted(METHODS)}, task in {list(TASKS)}"
        ) from None
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {list(TASKS)}")
    cfg = default_config()
    cfg.update(dict(
        model=chosen[0], dtype="bfloat16", task=task, steps=20_000, batch_size=16, eval_every=4_000,
        checkpoint_every=1_000, objective="lm" if task in GENERATION else "classification",
        workdir=f"runs/{model}/{method}/{task}", **chosen[1],
    ))
    return cfg
