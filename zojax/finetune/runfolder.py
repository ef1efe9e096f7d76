"""The run folder: what makes a folder a zojax run, its record of config and environment,
whether it is finished, and the outputs around the loop (compilation cache, profile,
Weights & Biases, export)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import uuid
from importlib import metadata
from pathlib import Path

import jax

from zojax.finetune.config import config_differences

RUN_FILE = "run.json"


def write_json(path: Path, value) -> None:
    """Write ``value`` as JSON atomically (a kill leaves the old file or the new one)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2))
    tmp.replace(path)


def environment() -> dict:
    """Versions, devices and the zojax source's git commit (if it is a checkout)."""
    versions = {}
    for name in ("zojax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    source = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        git = {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())} if commit.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        git = None
    devices = jax.devices()
    return {
        "python": sys.version.split()[0], "platform": platform.platform(), "host": platform.node(),
        "versions": versions, "git": git, "backend": devices[0].platform,
        "devices": [d.device_kind for d in devices], "processes": jax.process_count(),
    }


def open_run(workdir: Path, cfg, write: bool = True) -> dict | None:
    """Make ``workdir`` this run's folder, or check that it already is: returns the summary
    of a finished run with this config, else None (a new or unfinished run, its config and
    this start's environment recorded in run.json when ``write``).

    Refuses a non-empty folder that is not a zojax run, and an earlier run whose config
    differs in a field a resumed run may not change (naming the fields).
    """
    run_file = workdir / RUN_FILE
    if run_file.exists():
        saved = json.loads(run_file.read_text())
        differ = config_differences(saved["config"], cfg)
        if differ:
            now = cfg.to_dict()
            raise ValueError(
                f"{workdir} holds a run with another config; it cannot continue with these fields changed: "
                + ", ".join(f"{k} (run {saved['config'].get(k)!r}, now {now.get(k)!r})" for k in differ)
                + "; use another workdir for a new run"
            )
        summary_file = workdir / "summary.json"
        if summary_file.exists():
            summary = json.loads(summary_file.read_text())
            if summary.get("steps") == cfg.steps:
                return summary
    elif workdir.exists() and any(workdir.iterdir()):
        raise FileExistsError(
            f"workdir {workdir} is not empty and holds no zojax run ({RUN_FILE}); choose an empty or new folder"
        )
    else:
        saved = {"id": uuid.uuid4().hex[:12], "starts": []}
    if write:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "summary.json").unlink(missing_ok=True)  # steps extended: no longer finished
        starts = saved.get("starts", []) + [{"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": environment()}]
        write_json(run_file, {"id": saved.get("id"), "config": cfg.to_dict(), "starts": starts})
    return None


def compilation_cache(cfg) -> None:
    """Turn on JAX's persistent compilation cache in ``cfg.compilation_cache``; "auto":
    ``$JAX_COMPILATION_CACHE_DIR`` if set, else a ``.jax_cache`` folder beside the run folder."""
    folder = cfg.compilation_cache
    if folder == "auto":
        folder = os.environ.get("JAX_COMPILATION_CACHE_DIR") or Path(cfg.workdir).absolute().parent / ".jax_cache"
    if folder:
        jax.config.update("jax_compilation_cache_dir", str(folder))


def wandb_arguments(cfg, workdir: Path) -> dict | None:
    """``wandb.init`` arguments for ``cfg.wandb`` (None: off); the W&B run id is the run
    folder's (run.json), so a resumed run continues the same W&B run."""
    if not cfg.wandb:
        return None
    run_id = "zojax-" + json.loads((Path(workdir) / RUN_FILE).read_text())["id"]
    return {"project": cfg.wandb, "id": run_id, "name": Path(workdir).name, "config": cfg.to_dict()}


_tracing = False


def profile(cfg, workdir: Path, taken: int | None) -> None:
    """Trace steps 2..1+``cfg.profile`` of this start (the first one compiles) into
    ``workdir/profile`` with ``jax.profiler``; ``taken``: steps taken so far in this start,
    None at the end."""
    global _tracing
    if not cfg.profile:
        return
    if taken == 1 and not _tracing:
        jax.profiler.start_trace(str(Path(workdir) / "profile"))
        _tracing = True
    elif _tracing and (taken is None or taken == 1 + cfg.profile):
        jax.profiler.stop_trace()
        _tracing = False


def export(cfg, setup, params, workdir: Path, write: bool = True) -> None:
    """``cfg.export_hf``: the model with ``params`` as a transformers folder ``workdir/hf``;
    ``cfg.export_adapter``: the LoRA adapters as a PEFT folder ``workdir/adapter``."""
    from zojax import sharding

    if cfg.export_hf:
        from zojax import models

        full = sharding.to_host(setup.trainable.export(setup.base, params))
        if write:
            models.save_hf(setup.model, full, workdir / "hf")
    if cfg.export_adapter:
        from zojax.finetune.export import save_adapter

        if write:
            save_adapter(cfg, setup.trainable, sharding.to_host(params), workdir / "adapter")
