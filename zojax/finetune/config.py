"""The run's config: every field with its default and a one-line description, validation
before anything is loaded, and which fields a resumed run may change.

    cfg = finetune.default_config()            # an ml_collections.ConfigDict
    cfg.task, cfg.optimizer = "sst2", "lozo"
    finetune.validate(cfg)

The optimizer's hyperparameter fields come from ``zojax.optim.registry.HYPERPARAMS``, so a
newly registered optimizer's hyperparameters appear here (and in ``--help``) by themselves.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path
from typing import Any

import ml_collections

from zojax import sharding, tasks
from zojax.optim import registry

DEFAULT_MODEL = "smollm2-135m"
MODES = ("full", "lora", "prefix")
OBJECTIVES = ("classification", "lm", "f1")
SCHEDULES = ("constant", "linear", "cosine")
DECAY_RULES = ("shape", "official")


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    default: Any
    doc: str
    resumable: bool = False  # may differ on resume: it does not change the steps already taken


# One line each; ``--help`` prints them. Resumable fields change cadences, paths, outputs or
# the hardware, never the trajectory already taken.
_RUN_FIELDS = [
    Field("model", DEFAULT_MODEL, f"{DEFAULT_MODEL!r}, a Hugging Face folder, a .gguf file or a hub id"),
    Field("dtype", "float32", "parameter dtype: float32 or bfloat16"),
    Field("task", "tiny_sentiment", f"one of {', '.join(sorted(tasks.TASKS))}"),
    Field("data_dir", "", "folder with the task's files; '' -> bundled data or the Hugging Face hub", True),
    Field("num_train", 0, "training examples; 0 -> the task's MeZO-protocol default"),
    Field("num_dev", 0, "dev examples (model selection); 0 -> protocol default"),
    Field("num_test", 0, "test examples; 0 -> protocol default", True),
    Field("num_heldout", 0, "held-out training-split examples (disjoint from train and dev) whose training loss is logged at each evaluation; 0 -> none"),
    Field("data_seed", -1, "seed of the data sample (train, dev, held-out, test, demonstrations); -1 -> seed"),
    Field("num_demos", 0, "in-context demonstrations prepended at evaluation"),
    Field("calibrate", False, "evaluation only: content-free calibration (Zhao et al. 2021), scores divided by those of 'N/A', '', '[MASK]'"),
    Field("max_length", 256, "tokens per row (contexts keep their last tokens)"),
    Field("pad_to", "16", "batch lengths: multiples of N ('16'), 'pow2', or a list '64,128,256' (each run compiles one step per length)"),
    Field("mode", "full", "'full', or 'lora' / 'prefix': train adapters, the base model frozen"),
    Field("lora_targets", "q_proj,v_proj", "comma-separated projection names LoRA adapts"),
    Field("lora_rank", 8, "LoRA rank r"),
    Field("lora_alpha", 16.0, "LoRA scale numerator (scale alpha / r)"),
    Field("prefix_tokens", 5, "prefix-tuning: key/value tokens per layer"),
    Field("objective", "classification", "'classification', 'lm' (gold candidate) or 'f1' (SQuAD/DROP, ZO only)"),
    Field("max_new_tokens", 50, "generation tasks: answer tokens generated"),
    Field("optimizer", "lozo", f"one of {', '.join(registry.names())}"),
    Field("learning_rate", 3e-5, "peak learning rate; finite and > 0 (0 only with steps=0)"),
]
_UPDATE_FIELDS = [
    Field("schedule", "constant", f"learning-rate schedule after warm-up: {', '.join(SCHEDULES)} (decays to 0 at steps)"),
    Field("warmup_steps", 0, "steps of linear warm-up from 0 to learning_rate"),
    Field("clip", 0.0, "largest global norm of a parameter update; 0 -> no clipping"),
    Field("weight_decay", 0.0, "decoupled weight decay: θ ← θ − η (d + λ θ)"),
    Field("decay_rule", "shape", "leaves decayed: 'shape' (matrices, embeddings) or 'official' (names without bias/layer_norm)"),
]
_LOOP_FIELDS = [
    Field("steps", 150, "optimizer steps (may be extended on resume with a step-independent schedule)", True),
    Field("batch_size", 16, "training examples per step"),
    Field("eval_every", 50, "steps between dev evaluations (and at the end); 0 -> none", True),
    Field("eval_batch_size", 32, "examples per evaluation batch", True),
    Field("checkpoint_every", 50, "steps between checkpoints (and at the end); 0 -> none", True),
    Field("keep_checkpoints", 2, "checkpoints kept: the latest ones, and the best-dev step's", True),
    Field("max_consecutive_skips", 10, "stop after this many consecutive skipped (non-finite) steps", True),
    Field("workdir", "runs/default", "the run folder: config, metrics, checkpoints, summary", True),
    Field("export_hf", False, "write the best-dev model as a transformers folder workdir/hf (full, lora)", True),
    Field("export_adapter", False, "lora: also write a PEFT adapter folder workdir/adapter", True),
    Field("seed", 0, "seed of the data order, the adapters and z"),
    Field("progress", True, "show a progress bar", True),
    Field("mesh", "1,-1,1", "devices along (data, fsdp, tensor); -1 takes the rest", True),
    Field("distributed", "", "'auto' (TPU pods, SLURM) or 'HOST:PORT,NUM_PROCESSES,PROCESS_ID'", True),
    Field("compilation_cache", "auto", "JAX compilation cache folder; 'auto' -> workdir's parent/.jax_cache, '' -> off", True),
    Field("wandb", "", "Weights & Biases project to log to ('' -> off; needs wandb installed)", True),
    Field("profile", 0, "write a jax.profiler trace of this many steps to workdir/profile; 0 -> off", True),
]


def fields() -> list[Field]:
    """Every config field in ``--help`` order."""
    hyper = [
        Field(k, v, registry.HYPERPARAM_DOCS[k]) for k, v in registry.HYPERPARAMS.items()
    ]
    return _RUN_FIELDS + hyper + _UPDATE_FIELDS + _LOOP_FIELDS


def default_config() -> ml_collections.ConfigDict:
    """Every field the run reads, with the embedded default's values."""
    return ml_collections.ConfigDict({f.name: f.default for f in fields()})


RENAMED = {"output_dir": "workdir"}


def validate(cfg) -> None:
    """Check names and ranges before anything is loaded; errors name the field and the
    valid choices."""
    known = {f.name for f in fields()}
    for old, new in RENAMED.items():
        if old in cfg:
            raise ValueError(f"config field {old!r} is now called {new!r}")
    unknown = sorted(set(cfg.keys()) - known)
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; valid fields: {sorted(known)}")
    for field, choices in (
        ("optimizer", registry.names()), ("mode", MODES), ("objective", OBJECTIVES), ("schedule", SCHEDULES),
        ("decay_rule", DECAY_RULES),
    ):
        if cfg[field] not in choices:
            raise ValueError(f"unknown {field} {cfg[field]!r}; choose one of {list(choices)}")
    if cfg.task.lower() not in tasks.TASKS:
        raise ValueError(f"unknown task {cfg.task!r}; choose one of {sorted(tasks.TASKS)}")
    if cfg.model != DEFAULT_MODEL and not Path(cfg.model).exists() and cfg.model.count("/") != 1:
        raise ValueError(
            f"unknown model {cfg.model!r}; use {DEFAULT_MODEL!r}, a Hugging Face folder, a .gguf file, "
            "or a hub id like 'facebook/opt-1.3b'"
        )
    if not str(cfg.workdir).strip():
        raise ValueError("workdir must name a folder (it is '')")
    generation = tasks.get_task(cfg.task).kind == "generation"
    if generation and cfg.objective == "classification":
        raise ValueError(f"task {cfg.task!r} generates its answers: use objective 'lm' or 'f1'")
    if cfg.objective == "f1" and not (generation and registry.is_zeroth_order(cfg.optimizer)):
        raise ValueError("objective 'f1' is non-differentiable: it needs a generation task and a ZO optimizer")
    if cfg.export_hf and cfg.mode == "prefix":
        raise ValueError("export_hf: a prefix cannot be folded into the weights; use mode 'full' or 'lora'")
    if cfg.export_adapter and cfg.mode != "lora":
        raise ValueError(f"export_adapter writes a PEFT LoRA adapter folder; mode is {cfg.mode!r}, not 'lora'")
    if cfg.data_dir and not Path(cfg.data_dir).is_dir():
        raise ValueError(f"data_dir {cfg.data_dir!r} is not a directory")
    if cfg.data_seed < -1:
        raise ValueError(f"data_seed must be >= 0, or -1 to follow seed; got {cfg.data_seed}")
    if cfg.num_heldout and cfg.objective == "f1":
        raise ValueError("num_heldout: the held-out loss needs a differentiable objective, not 'f1'")
    if cfg.calibrate:
        if cfg.steps:
            raise ValueError(f"calibrate is for evaluation-only runs (steps=0); steps is {cfg.steps}")
        if tasks.get_task(cfg.task).kind != "classification":
            raise ValueError(f"calibrate needs a classification task with fixed candidates; {cfg.task!r} is not one")
        if cfg.num_demos:
            raise ValueError("calibrate: content-free inputs with in-context demonstrations are not supported; use num_demos=0")
    for field in ("steps", "eval_every", "checkpoint_every", "num_demos", "num_train", "num_dev", "num_test",
                  "num_heldout", "warmup_steps", "profile"):
        if cfg[field] < 0:
            raise ValueError(f"{field} must be >= 0, got {cfg[field]}")
    for field in ("batch_size", "eval_batch_size", "max_length", "max_consecutive_skips", "max_new_tokens",
                  "keep_checkpoints"):
        if cfg[field] < 1:
            raise ValueError(f"{field} must be >= 1, got {cfg[field]}")
    lr = cfg.learning_rate
    if not (math.isfinite(lr) and (lr > 0 or (lr == 0 and cfg.steps == 0))):
        raise ValueError(f"learning_rate must be finite and > 0 (0 only for evaluation, steps=0), got {lr}")
    for field in ("clip", "weight_decay"):
        if not (math.isfinite(cfg[field]) and cfg[field] >= 0):
            raise ValueError(f"{field} must be finite and >= 0, got {cfg[field]}")
    if cfg.warmup_steps > cfg.steps:
        raise ValueError(f"warmup_steps ({cfg.warmup_steps}) must not exceed steps ({cfg.steps})")
    if cfg.wandb and importlib.util.find_spec("wandb") is None:
        raise ValueError(f"wandb={cfg.wandb!r}: the wandb package is not installed (pip install wandb)")
    pad_lengths(cfg)
    sharding.parse_mesh(cfg.mesh)
    distributed_arguments(cfg.distributed)


def loss_rows(cfg, encoded) -> str:
    """The ``rows`` of ``tasks.collate`` that the training objective scores: the gold
    candidate (``"lm"``), the prompt alone (``"f1"``: generation), else
    ``tasks.scoring_rows(encoded)``. Training batches and the held-out loss both use it."""
    return {"lm": "gold", "f1": "context"}.get(cfg.objective) or tasks.scoring_rows(encoded)


def pad_lengths(cfg) -> int | str | tuple[int, ...]:
    """The ``bucket`` of ``tasks.collate`` that ``cfg.pad_to`` names: an int (multiples of
    it), ``"pow2"``, or a tuple of lengths, each at most ``max_length``."""
    spec = str(cfg.pad_to).strip()
    if spec == "pow2":
        return spec
    try:
        lengths = tuple(int(x) for x in spec.split(","))
    except ValueError:
        lengths = ()
    if not lengths or min(lengths) < 1:
        raise ValueError(f"pad_to must be a positive int, 'pow2' or a list like '64,128,256'; got {cfg.pad_to!r}")
    if len(lengths) == 1 and "," not in spec:
        return lengths[0]
    if max(lengths) > cfg.max_length:
        raise ValueError(f"pad_to lengths must be at most max_length ({cfg.max_length}); got {cfg.pad_to!r}")
    return lengths


def distributed_arguments(spec: str) -> dict | None:
    """``jax.distributed.initialize`` arguments of the ``distributed`` field: None when
    empty, {} for ``"auto"``, else from ``"HOST:PORT,NUM_PROCESSES,PROCESS_ID"``."""
    if not spec:
        return None
    if spec == "auto":
        return {}
    parts = spec.split(",")
    if len(parts) != 3 or ":" not in parts[0] or not (parts[1].isdigit() and parts[2].isdigit()):
        raise ValueError(f"distributed must be '', 'auto' or 'HOST:PORT,NUM_PROCESSES,PROCESS_ID'; got {spec!r}")
    return {"coordinator_address": parts[0], "num_processes": int(parts[1]), "process_id": int(parts[2])}


def data_seed(cfg) -> int:
    """The seed of the data sample: ``cfg.data_seed``, or ``cfg.seed`` when it is -1."""
    return cfg.seed if cfg.data_seed == -1 else cfg.data_seed


def resumable_fields(saved: dict) -> set[str]:
    """Fields a run resumed from ``saved`` (its config) may change: the resumable ones,
    except ``steps`` when the schedule decays over the steps (the earlier steps' learning
    rates would change)."""
    out = {f.name for f in fields() if f.resumable}
    if saved.get("schedule", "constant") != "constant":
        out.discard("steps")
    return out


def config_differences(saved: dict, cfg) -> list[str]:
    """Fields whose value differs between a saved run's config and ``cfg`` and that a
    resumed run may not change; a field the run predates counts as having its default."""
    now, defaults = cfg.to_dict(), default_config().to_dict()
    free = resumable_fields(saved)
    return sorted(k for k in set(saved) | set(now) if k not in free and saved.get(k, defaults.get(k)) != now.get(k))
