"""``run(cfg)``: a whole fine-tuning run in its run folder ``cfg.workdir``.

    workdir/run.json          the resolved config and, per start, the environment
    workdir/metrics.jsonl     one record per step and per evaluation (zojax.finetune.records)
    workdir/checkpoints/<N>   params + optimizer state + metadata: the last keep_checkpoints,
                              and the best-dev step's when it is a checkpoint step
    workdir/best/<N>          the best-dev params among the training evaluations, when no
                              checkpoint holds them (each copy of SmolLM2-135M is 540 MB)
    workdir/summary.json      the final scores; also tensorboard/, loss.png, hf/, adapter/
    workdir/predictions.json  the test predictions of the scored parameters, one per example

One jitted, donated step per batch shape. The data order is a pure function of
``(seed, step)`` and the optimizer state carries its keys, so a run killed at any moment
and started again with the same command continues from its last checkpoint and ends with
exactly the parameters and metrics of an uninterrupted run. Rerunning a finished run's
command prints its summary. On a device mesh (``cfg.mesh``) with ``cfg.distributed`` every
host runs this same function on the same config; only process 0 writes.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from zojax import sharding
from zojax.finetune import records, runfolder
from zojax.finetune.checkpoints import Checkpoints, holding
from zojax.finetune.config import distributed_arguments, validate
from zojax.finetune.evaluate import content_free_prior, heldout_loss, make_heldout_loss, make_predict, mean_score, metric_name, predictions
from zojax.finetune.setup import build, learning_rate, train_batches


def start_processes(cfg) -> None:
    """Join the other hosts of a multi-host run (``cfg.distributed``); check what they need."""
    arguments = distributed_arguments(cfg.distributed)
    if arguments is None:
        return
    sharding.initialize(**arguments)
    if jax.process_count() > 1 and cfg.objective == "f1":
        raise ValueError("objective 'f1' scores answers on one host; it cannot run on several processes")


def skip_error(skips: int, step: int, cfg) -> FloatingPointError:
    return FloatingPointError(
        f"{skips} consecutive steps were skipped, the last at step {step}: their loss, update or parameters "
        f"were not finite; try a smaller learning_rate (now {cfg.learning_rate}) or eps (now {cfg.eps})"
    )


def run(cfg) -> dict:
    """Train and evaluate as ``cfg`` says, in ``cfg.workdir``; returns the summary (also in
    ``workdir/summary.json``) with the final ``params``. A finished run's summary is
    returned as it is (without params)."""
    validate(cfg)
    start_processes(cfg)
    main = jax.process_index() == 0
    out = Path(cfg.workdir)
    finished = runfolder.open_run(out, cfg) if main else None
    if jax.process_count() > 1:  # the others read the folder once process 0 has made it a run's
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("zojax.finetune.open_run")
        finished = finished if main else runfolder.open_run(out, cfg, write=False)
    if finished is not None:
        print(f"{out} holds a finished run of {finished['steps']} steps; its summary:\n{records.summary_table(finished)}")
        return finished
    runfolder.compilation_cache(cfg)
    mesh = sharding.make_mesh(cfg.mesh)
    s = build(cfg, mesh=mesh)
    params, opt_state, base = s.params, s.opt_state, s.base
    predict = s.predict
    if cfg.calibrate:  # evaluation only (validated): the zero-shot model's content-free prior
        if not s.data.test.examples:
            raise ValueError("calibrate: the test split is empty")
        prior = content_free_prior(cfg, s.model, s.trainable, params, s.data.test.examples[0])
        predict = make_predict(s.trainable, prior)
    per_example = lambda p, split: predictions(cfg, s.model, s.trainable, p, split, predict, mesh)
    evaluate_on = lambda p, split: mean_score(per_example(p, split))
    heldout_fn = make_heldout_loss(s.loss) if cfg.num_heldout else None
    heldout = lambda p: {"heldout_loss": heldout_loss(cfg, heldout_fn, p, base, s.data.heldout, mesh)} if heldout_fn else {}
    ckpt, best_ckpt = Checkpoints(out / "checkpoints"), Checkpoints(out / "best")
    start = ckpt.latest() or 0
    if start > cfg.steps:
        raise ValueError(f"steps={cfg.steps} is below the step of {out}'s latest checkpoint ({start})")
    if start:
        state, meta = ckpt.restore(start, {"params": params, "opt_state": opt_state})
        params, opt_state, best = state["params"], state["opt_state"], meta["best"]
    log = records.Records(out, start, enabled=main, wandb=runfolder.wandb_arguments(cfg, out))
    best_ckpt.keep_only([best["step"]] if start else [])  # steps after the checkpoint are redone
    if start:
        log.text(f"resumed from step {start}")
    else:
        test_records = per_example(params, s.data.test)
        zero_shot = {"dev": evaluate_on(params, s.data.dev), "test": mean_score(test_records)}
        log.write({"step": 0, "event": "zero_shot", **zero_shot, **heldout(params)})
        log.text(f"zero-shot ({cfg.num_demos} demonstrations): dev {zero_shot['dev']:.3f}  test {zero_shot['test']:.3f}")
        best = {"dev": None, "step": 0, "zero_shot": zero_shot}  # among training evaluations

    lr = learning_rate(cfg)
    skips = flat = 0  # consecutive skipped steps; consecutive ZO steps with c exactly 0
    forced: set[int] = set()  # steps after the latest checkpoint skipped for non-finite parameters
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), (params, opt_state))
    batch_of = train_batches(cfg, s.data.train.encoded)

    def redo(steps: int):
        """The state after ``steps`` steps, redone from the latest checkpoint (or the start)."""
        latest = ckpt.latest() or 0
        if latest:
            state = ckpt.restore(latest, {"params": like[0], "opt_state": like[1]})[0]
            p, o = state["params"], state["opt_state"]
        else:
            fresh = build(cfg, mesh=mesh)
            p, o = fresh.params, fresh.opt_state
        for t in range(latest, steps):
            batch = sharding.shard_rows(batch_of(t), mesh)
            p, o, _ = s.step(p, o, base, *batch, skip=np.bool_(t + 1 in forced))
        return p, o

    shapes = set()  # the training batches' shapes in this process
    bar = progress_bar(cfg, start, enabled=main)
    for step in range(start, cfg.steps):
        runfolder.profile(cfg, out, step - start)
        t0 = time.perf_counter()
        batch = sharding.shard_rows(batch_of(step), mesh)
        shapes.add(tuple(x.shape for x in batch[0]))  # one compiled step each (every array's shape)
        params, opt_state, record = s.step(params, opt_state, base, *batch, skip=np.bool_(False))
        record = {"c": None, "f_plus": None, "f_minus": None, **{k: v.tolist() for k, v in sharding.to_host(record).items()}}
        if not record.pop("finite"):
            # The update made parameters non-finite and the step's input was donated: redo the
            # state before this step and skip it, as a non-finite loss would be skipped.
            forced.add(step + 1)
            params = opt_state = None
            params, opt_state = redo(step + 1)
            record["skipped"] = True
        record.update(step=step + 1, lr=float(lr(step) if callable(lr) else lr), step_time=time.perf_counter() - t0)
        skips = skips + 1 if record["skipped"] else 0
        log.write(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}", step_s=f"{record['step_time']:.2f}")
        if skips >= min(cfg.max_consecutive_skips, cfg.steps):
            raise skip_error(skips, step + 1, cfg)
        # A piecewise-constant objective (F1 of generated answers) gives c = 0 as a matter of course.
        responds = not s.zeroth_order or cfg.objective == "f1" or record["skipped"] or np.any(record["c"])
        flat = 0 if responds else flat + 1
        if flat >= cfg.max_consecutive_skips:
            raise FloatingPointError(
                f"f(θ+εz) and f(θ−εz) were equal (c = 0, no update) in {flat} consecutive steps, the last at step "
                f"{step + 1}: the loss no longer responds to the parameters, as after a too large learning_rate "
                f"(now {cfg.learning_rate}), or eps (now {cfg.eps}) is below the parameters' precision"
            )
        done = step + 1
        checkpointing = cfg.checkpoint_every and (done % cfg.checkpoint_every == 0 or done == cfg.steps)
        if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
            dev = evaluate_on(params, s.data.dev)
            log.write({"step": done, "event": "eval", "dev": dev, **heldout(params)})
            if best["dev"] is None or dev > best["dev"]:  # ties: the earlier step
                best = {**best, "dev": dev, "step": done}
                if not checkpointing:  # else this step's checkpoint holds the params
                    best_ckpt.save(done, {"params": params}, {"dev": dev})
                    # The previous best stays until a checkpoint records the new one.
                    best_ckpt.keep_only([done, *([b] if (b := saved_best(ckpt)) else [])])
        if checkpointing:
            ckpt.save(done, {"params": params, "opt_state": opt_state}, {"step": done, "best": best, "config": cfg.to_dict()})
            ckpt.keep_only({*ckpt.steps()[-cfg.keep_checkpoints :], best["step"]})
            best_ckpt.keep_only([] if best["step"] in ckpt.steps() else [best["step"]])
            forced.clear()
    bar.close()
    if shapes:
        lengths = sorted({shape[0][1] for shape in shapes})  # input_ids [N, T]
        log.text(f"the training step compiled for {len(shapes)} batch shape(s), lengths {lengths} (pad_to={cfg.pad_to!r})")
    runfolder.profile(cfg, out, None)

    # The test scores the best-dev parameters among the evaluations during training (the
    # zero-shot model is not a candidate: it has its own test score), read back from their
    # checkpoint; without evaluations, the final ones.
    chosen = params
    if best["step"] not in (0, cfg.steps):
        source = holding(best["step"], ckpt, best_ckpt)
        chosen = source.restore(best["step"], dict(zip(("params", "opt_state"), like[: 2 if source is ckpt else 1])))[0]["params"]
    if start or cfg.steps:  # evaluation only: the zero-shot test records are the run's
        test_records = per_example(chosen, s.data.test)
    test = mean_score(test_records)
    runfolder.export(cfg, s, chosen, out, write=main)
    summary = {
        "task": cfg.task, "model": cfg.model, "optimizer": cfg.optimizer, "steps": cfg.steps, "seed": cfg.seed,
        "metric": metric_name(cfg.task), "zero_shot": best.get("zero_shot"), "best_dev": best["dev"],
        "best_step": best["step"], "test": test, "notes": list(s.data.notes),
    }
    log.close()
    if main:
        records.plot_loss(out / "metrics.jsonl", out / "loss.png", s.zeroth_order)
        runfolder.write_json(out / "predictions.json", {"split": "test", "step": best["step"], "examples": test_records})
        runfolder.write_json(out / "summary.json", records.jsonable(summary))
        log.text(records.summary_table(summary))
    return {**summary, "params": params}


def saved_best(ckpt: Checkpoints) -> int | None:
    """The best step recorded by the latest checkpoint (None without one)."""
    latest = ckpt.latest()
    return None if latest is None else ckpt.meta(latest)["best"]["step"] or None


def progress_bar(cfg, start: int, enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, initial=start, disable=not (cfg.progress and enabled), desc=f"{cfg.optimizer} {cfg.task}", unit="step")
