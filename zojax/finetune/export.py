"""A run's parameters as folders other tools load: a transformers model folder (full or
LoRA merged; a prefix cannot be folded into the weights) and, for LoRA, a PEFT adapter
folder (``adapter_config.json`` + ``adapter_model.safetensors``) that ``peft`` loads onto
the base model.

    zojax-train export --workdir=runs/sst2                  # best-dev params -> runs/sst2/hf
    zojax-train export --workdir=runs/sst2 --step=100 --out=sst2-step100
    zojax-train export --workdir=runs/lora --adapter         # -> runs/lora/adapter
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from zojax import sharding
from zojax.finetune.checkpoints import Checkpoints, holding
from zojax.finetune.config import default_config
from zojax.finetune.runfolder import RUN_FILE


def save_adapter(cfg, trainable, adapters, out: Path) -> Path:
    """LoRA ``adapters`` as a PEFT folder: per layer l and target W at ``layers/.../name``,
    ``lora_A.weight = lora_a[l]ᵀ`` [r, in] and ``lora_B.weight = lora_b[l]ᵀ`` [out, r] under
    the transformers module name of W, scale ``lora_alpha / r`` as in zojax."""
    from safetensors.numpy import save_file

    model = trainable.adapters.model
    modules = {t.path[:-1]: t.hf_name.rsplit(".", 1)[0] for t in model.config.hf_tensors() if t.path[-1] == "kernel"}
    tensors = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(adapters):
        names = tuple(str(getattr(k, "key", k)) for k in path)
        module, which = modules[names[:-1]], {"lora_a": "lora_A", "lora_b": "lora_B"}[names[-1]]
        for layer, matrix in enumerate(np.asarray(leaf, np.float32)):
            tensors[f"base_model.model.{module.format(i=layer)}.{which}.weight"] = np.ascontiguousarray(matrix.T)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    targets = sorted({t.strip() for t in cfg.lora_targets.split(",")})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": cfg.model, "r": cfg.lora_rank,
        "lora_alpha": cfg.lora_alpha, "target_modules": targets, "lora_dropout": 0.0, "bias": "none",
        "fan_in_fan_out": False, "inference_mode": True, "use_rslora": False, "init_lora_weights": True,
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out


def export_run(workdir: Path, step: int | None = None, out: Path | str | None = None, adapter: bool = False) -> Path:
    """Write the run in ``workdir`` at ``step`` (None: its best-dev params, else its latest
    checkpoint) as a transformers folder, or with ``adapter`` as a PEFT adapter folder;
    ``out`` defaults to ``workdir/hf`` or ``workdir/adapter``. Returns the folder."""
    from zojax.finetune.setup import load_model, make_optimizer, make_trainable

    workdir = Path(workdir)
    if not (workdir / RUN_FILE).exists():
        raise ValueError(f"{workdir} is not a zojax run folder (no {RUN_FILE})")
    cfg = default_config()
    saved = json.loads((workdir / RUN_FILE).read_text())["config"]
    cfg.update({k: v for k, v in saved.items() if k in cfg})
    if cfg.mode == "prefix" and not adapter:
        raise ValueError("a prefix-tuning run cannot be exported as a transformers model: a prefix is extra keys "
                         "and values in every layer, not a change of the weights")
    if adapter and cfg.mode != "lora":
        raise ValueError(f"--adapter writes a PEFT LoRA folder; this run's mode is {cfg.mode!r}")
    ckpt, best = Checkpoints(workdir / "checkpoints"), Checkpoints(workdir / "best")
    if step is None:  # the best-dev step the latest checkpoint records, else best/'s, else the latest
        latest = ckpt.latest()
        recorded = ckpt.meta(latest)["best"]["step"] if latest is not None else None
        step = recorded or best.latest() or latest
        if step is None:
            raise ValueError(f"{workdir} holds no checkpoint (checkpoint_every=0 and no evaluation?)")
    source = holding(step, ckpt, best)
    if source is None:
        raise ValueError(f"{workdir} holds no checkpoint of step {step}; it has {sorted(set(ckpt.steps()) | set(best.steps()))}")
    model = load_model(cfg)
    trainable = make_trainable(cfg, model)
    like = {"params": trainable.params}
    if source is ckpt:
        like["opt_state"] = make_optimizer(cfg, trainable.params, trainable.stacked).init(trainable.params)
    params = sharding.to_host(source.restore(step, like)[0]["params"])
    if adapter:
        return save_adapter(cfg, trainable, params, Path(out) if out else workdir / "adapter")
    from zojax import models

    return models.save_hf(model, trainable.export(trainable.base, params), Path(out) if out else workdir / "hf")
