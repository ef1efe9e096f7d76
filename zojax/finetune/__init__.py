"""Fine-tuning runs: a config, ``build(cfg)`` of everything a run needs, and ``run(cfg)``.

    from zojax import finetune
    cfg = finetune.default_config()          # an ml_collections.ConfigDict
    cfg.task, cfg.optimizer, cfg.workdir = "sst2", "lozo", "runs/sst2"
    summary = finetune.run(cfg)              # or from a shell: zojax-train --config.task=sst2 ...

Modules, one job each: ``config`` (fields, defaults, validation, resume rules), ``setup``
(``build``: model, data, trainable tree, loss, optimizer, step, predict), ``step`` (the one
ZO / first-order step), ``evaluate``, ``checkpoints``, ``records`` (metrics.jsonl,
TensorBoard, plots), ``runfolder`` (what a run folder holds), ``loop`` (``run``),
``export`` (a run's checkpoint -> transformers or PEFT folder) and ``cli``.
"""

from zojax.finetune.config import config_differences, default_config, fields, validate
from zojax.finetune.evaluate import content_free_prior, evaluate, heldout_loss, make_predict, metric_name, predictions
from zojax.finetune.loop import run
from zojax.finetune.setup import (
    Data,
    Setup,
    Split,
    Trainable,
    build,
    load_data,
    load_model,
    make_loss,
    make_optimizer,
    make_trainable,
    train_batches,
)
from zojax.finetune.step import all_finite, make_step
from zojax.finetune import export  # noqa: I001  (export_run, save_adapter)

__all__ = [
    "Data", "Setup", "Split", "Trainable", "all_finite", "build", "content_free_prior", "export", "config_differences",
    "default_config", "evaluate", "fields", "heldout_loss", "load_data", "load_model", "make_loss", "make_optimizer",
    "make_predict", "make_step", "make_trainable", "metric_name", "predictions", "run", "train_batches", "validate",
]
