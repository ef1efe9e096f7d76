"""The fine-tuning loop: ZO or first-order steps, evaluation, logging, checkpoints, resume.

    from zojax import train
    cfg = train.default_config()          # an ml_collections.ConfigDict
    cfg.task, cfg.optimizer = "sst2", "lozo"
    summary = train.run(cfg)

One jit-compiled, donated step per batch shape. The data order is a pure function of
``(seed, step)``, the optimizer state carries its keys, and checkpoints hold params,
optimizer state, the best dev score and the config: a run killed at any point and resumed
with ``resume=True`` ends with exactly the parameters of an uninterrupted run.

Everything runs on the device mesh ``cfg.mesh`` (``zojax.sharding``): parameters are read
straight onto their shards, batches are split over the data axes, and with
``cfg.distributed`` every host of a pod slice runs this same function on the same config
(each computes the same data order and feeds the rows its devices hold); only process 0
writes logs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import zojax
from zojax import sharding, tasks
from zojax.optim import registry
from zojax.tasks import scoring

ZO_OPTIMIZERS = registry.names(zeroth_order=True)
FO_OPTIMIZERS = registry.names(zeroth_order=False)
OPTIMIZERS = registry.names()
MODES = ("full", "lora", "prefix")
OBJECTIVES = ("classification", "lm", "f1")
DEFAULT_MODEL = "smollm2-135m"
# Fields that may differ between a run and its resumption.
RESUMABLE_CHANGES = ("resume", "progress", "distributed")


def default_config() -> ml_collections.ConfigDict:
    """Every field the loop reads, with the embedded default's values."""
    return ml_collections.ConfigDict(
        dict(
            model=DEFAULT_MODEL,  # "smollm2-135m", an HF folder, a .gguf file or a hub id
            dtype="float32",
            task="tiny_sentiment",
            data_dir="",  # "" -> bundled data or the Hugging Face hub
            num_train=0,  # 0 -> the task's MeZO-protocol default
            num_dev=0,
            num_test=0,
            num_demos=0,  # in-context demonstrations prepended at evaluation
            max_length=256,
            mode="full",  # "lora" or "prefix": train adapters, the base model frozen
            lora_targets="q_proj,v_proj",
            lora_rank=8,
            lora_alpha=16.0,
            prefix_tokens=5,
            export_hf=False,  # write the fine-tuned model as a transformers folder (full, lora)
            objective="classification",  # "lm" (gold candidate) or, for SQuAD/DROP, "f1" (non-differentiable)
            max_new_tokens=50,  # generation tasks
            optimizer="lozo",
            learning_rate=3e-5,
            eps=1e-3,
            rank=2,
            nu=50,
            momentum=0.9,  # LOZO-M's beta
            b1=0.7,  # AdaMeZO
            b2=0.9,
            horizon=10,
            sampler="gaussian",
            weight_decay=0.0,
            steps=150,
            batch_size=16,
            eval_every=50,
            eval_batch_size=32,
            checkpoint_every=50,
            max_consecutive_skips=10,
            output_dir="runs/default",
            seed=0,
            resume=False,
            progress=True,
            mesh="1,-1,1",  # devices along (data, fsdp, tensor); -1 takes the rest
            distributed="",  # "auto" (TPU VM pods, SLURM) or "HOST:PORT,NUM_PROCESSES,PROCESS_ID"
        )
    )


def validate(cfg) -> None:
    """Check names and ranges before anything is loaded; errors list the valid choices."""
    known = set(default_config().keys())
    unknown = sorted(set(cfg.keys()) - known)
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; valid fields: {sorted(known)}")
    for field, choices in (("optimizer", OPTIMIZERS), ("mode", MODES), ("objective", OBJECTIVES)):
        if cfg[field] not in choices:
            raise ValueError(f"unknown {field} {cfg[field]!r}; choose one of {list(choices)}")
    if cfg.task.lower() not in tasks.TASKS:
        raise ValueError(f"unknown task {cfg.task!r}; choose one of {sorted(tasks.TASKS)}")
    if cfg.model != DEFAULT_MODEL and not Path(cfg.model).exists() and cfg.model.count("/") != 1:
        raise ValueError(
            f"unknown model {cfg.model!r}; use {DEFAULT_MODEL!r}, a Hugging Face folder, a .gguf file, "
            "or a hub id like 'facebook/opt-1.3b'"
        )
    generation = tasks.get_task(cfg.task).kind == "generation"
    if generation and cfg.objective == "classification":
        raise ValueError(f"task {cfg.task!r} generates its answers: use objective 'lm' or 'f1'")
    if cfg.objective == "f1" and not (generation and cfg.optimizer in ZO_OPTIMIZERS):
        raise ValueError("objective 'f1' is non-differentiable: it needs a generation task and a ZO optimizer")
    if cfg.export_hf and cfg.mode == "prefix":
        raise ValueError("export_hf: a prefix cannot be folded into the weights; use mode 'full' or 'lora'")
    if cfg.data_dir and not Path(cfg.data_dir).is_dir():
        raise ValueError(f"data_dir {cfg.data_dir!r} is not a directory")
    for field in ("steps", "eval_every", "checkpoint_every", "num_demos", "num_train", "num_dev", "num_test"):
        if cfg[field] < 0:
            raise ValueError(f"{field} must be >= 0, got {cfg[field]}")
    for field in ("batch_size", "eval_batch_size", "max_length", "max_consecutive_skips", "max_new_tokens"):
        if cfg[field] < 1:
            raise ValueError(f"{field} must be >= 1, got {cfg[field]}")
    sharding.parse_mesh(cfg.mesh)
    distributed_arguments(cfg.distributed)


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


def make_optimizer(cfg, params, stacked) -> optax.GradientTransformation:
    """The optimizer named by ``cfg.optimizer`` (``zojax.optim.registry``); weight decay
    skips biases and norms."""
    hyperparams = {k: cfg[k] for k in registry.HYPERPARAMS if k in cfg}
    return registry.optimizer(
        cfg.optimizer, cfg.learning_rate, weight_decay=cfg.weight_decay, decay_mask=zojax.decay_mask(params, stacked),
        stacked=stacked, key=cfg.seed, **hyperparams,
    )


# --------------------------------------------------------------------------- data


@dataclasses.dataclass
class Split:
    examples: list  # tasks.Example: gold answers of generation tasks
    encoded: list  # tasks.Encoded


@dataclasses.dataclass
class Data:
    task: Any
    train: Split
    dev: Split
    test: Split
    notes: tuple


def load_data(cfg, tokenizer) -> Data:
    sizes = {k: cfg[k] or None for k in ("num_train", "num_dev", "num_test")}
    data = tasks.load_task(cfg.task, cfg.data_dir or None, seed=cfg.seed, **sizes)

    def split(examples, demonstrations: bool) -> Split:
        if demonstrations and cfg.num_demos:
            examples = tasks.with_demonstrations(examples, data.train, cfg.num_demos, seed=cfg.seed)
        return Split(examples, tasks.encode(examples, tokenizer, cfg.max_length))

    return Data(data.task, split(data.train, False), split(data.dev, True), split(data.test, True), data.notes)


def train_batch(cfg, encoded: list, step: int) -> tuple[tasks.Batch, np.ndarray]:
    """The batch of ``step`` and its example indices; epoch e's order is a permutation
    seeded by (seed, e)."""
    per_epoch = max(len(encoded) // cfg.batch_size, 1)
    epoch, i = divmod(step, per_epoch)
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(encoded))
    rows = {"lm": "gold", "f1": "context"}.get(cfg.objective) or tasks.scoring_rows(encoded)
    chosen = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
    return tasks.collate([encoded[j] for j in chosen], rows=rows, max_length=cfg.max_length), chosen


# --------------------------------------------------------------------------- what is trained


@dataclasses.dataclass(frozen=True)
class Trainable:
    """The tree the optimizer updates and how the model uses it.

    ``apply(base, params, ids, mask, param_hook=None)`` -> logits; ``view(base, params)``
    -> the tree ``model.generate`` takes; ``export(base, params)`` -> full parameters for
    ``save_hf`` (None: not exportable). ``base`` is the frozen model (None in full mode).
    """

    params: Any
    stacked: Any
    base: Any
    apply: Callable
    view: Callable
    export: Callable | None


def make_trainable(cfg, model) -> Trainable:
    if cfg.mode == "full":
        full_apply = lambda base, p, *args, **kw: model.apply(p, *args, **kw)
        return Trainable(model.params, model.stacked, None, full_apply, lambda base, p: p, lambda base, p: p)
    from zojax import peft

    if cfg.mode == "lora":
        targets = tuple(t.strip() for t in cfg.lora_targets.split(","))
        adapters = peft.lora(model, targets, cfg.lora_rank, cfg.lora_alpha, key=cfg.seed)
        return Trainable(adapters.params, adapters.stacked, model.params, adapters.apply, adapters.attach, adapters.merge)
    adapters = peft.prefix(model, cfg.prefix_tokens, key=cfg.seed)
    return Trainable(adapters.params, adapters.stacked, model.params, adapters.apply, adapters.attach, None)


# --------------------------------------------------------------------------- steps


def make_loss(cfg, model, trainable: Trainable, train: Split):
    """``loss(base, params, batch, index, param_hook=None)``; the hook lets ZO perturb layer
    by layer. The ``"f1"`` objective is −F1 of greedy answers, computed on the host."""
    if cfg.objective == "f1":
        answers = [ex.answers for ex in train.examples]

        def host_f1(tokens, index):
            predicted = tasks.decode_answers(model.tokenizer, tokens)
            return np.float32(np.mean([tasks.metrics.f1(p, answers[i]) for p, i in zip(predicted, index)]))

        def loss(base, params, batch, index):
            tokens = model.generate(trainable.view(base, params), batch.input_ids, batch.attention_mask, cfg.max_new_tokens, model.tokenizer.eos_token_id)
            return -jax.pure_callback(host_f1, jax.ShapeDtypeStruct((), jnp.float32), tokens, index)

        return loss
    score = scoring.lm_loss if cfg.objective == "lm" else scoring.classification_loss

    def loss(base, params, batch, index, param_hook=None):
        logits = trainable.apply(base, params, batch.input_ids, batch.attention_mask, param_hook=param_hook)
        return score(logits, batch)

    return loss


def make_step(cfg, loss, tx, param_shardings=None):
    """jit(step)(base, params, opt_state, batch, index) -> (params, opt_state, record);
    params and state are donated, the frozen ``base`` is not. New params keep
    ``param_shardings`` (a tree like params) when given."""
    zeroth_order = cfg.optimizer in ZO_OPTIMIZERS

    def step(base, params, opt_state, batch, index):
        if zeroth_order:
            if cfg.objective == "f1":
                value_fn = lambda p: loss(base, p, batch, index)
            else:
                value_fn = lambda p, param_hook=None: loss(base, p, batch, index, param_hook)
            updates, new_state = tx.update(None, opt_state, params, value_fn=value_fn)
            info = zojax.step_info(new_state)
            ok = info.skipped == zojax.step_info(opt_state).skipped
            value = (info.f_plus + info.f_minus) / 2
        else:
            value, grads = jax.value_and_grad(loss, argnums=1)(base, params, batch, index)
            updates, new_state = tx.update(grads, opt_state, params)
            ok = jnp.isfinite(value)
            new_state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state, opt_state)
        new_params = optax.apply_updates(params, updates)
        # A skipped step leaves the parameters untouched, whatever else the chain adds.
        new_params = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_params, params)
        if param_shardings is not None:
            new_params = jax.lax.with_sharding_constraint(new_params, param_shardings)
        return new_params, new_state, {"loss": value, "skipped": ~ok}

    return jax.jit(step, donate_argnums=(1, 2))


def make_predict(trainable: Trainable):
    """jit(predict)(base, params, batch) -> each example's highest-scoring candidate."""
    return jax.jit(lambda base, p, b: scoring.predict(trainable.apply(base, p, b.input_ids, b.attention_mask), b))


def evaluate(cfg, model, trainable: Trainable, params, split: Split, predict_fn, mesh=None) -> float:
    """Accuracy of the highest mean log-likelihood candidate, or for generation tasks the
    mean token F1 of greedy answers, over ``split`` (batches split over ``mesh`` if given)."""
    put = (lambda b: b) if mesh is None else (lambda b: sharding.shard_rows(b, mesh))
    if not split.encoded:
        return float("nan")
    total = 0.0
    # Batches of similar lengths pad less (benchmarks/scoring.py: 0.71x RTE's evaluation time).
    order = sorted(range(len(split.encoded)), key=lambda i: split.encoded[i].length)
    rows = tasks.scoring_rows(split.encoded)
    for start in range(0, len(order), cfg.eval_batch_size):
        indices = order[start : start + cfg.eval_batch_size]
        chunk = [split.encoded[i] for i in indices]
        if model.tokenizer is not None and tasks.get_task(cfg.task).kind == "generation":
            batch = tasks.collate(chunk, rows="context", max_length=cfg.max_length)
            full = trainable.view(trainable.base, params)
            ids, mask = put((batch.input_ids, batch.attention_mask))
            tokens = sharding.to_host(model.generate(full, ids, mask, cfg.max_new_tokens, model.tokenizer.eos_token_id))
            examples = [split.examples[i] for i in indices]
            total += sum(tasks.metrics.f1(p, ex.answers) for p, ex in zip(tasks.decode_answers(model.tokenizer, tokens), examples))
        else:
            batch = tasks.collate(chunk, rows=rows, max_length=cfg.max_length)
            total += int(np.sum(sharding.to_host(predict_fn(trainable.base, params, put(batch))) == batch.gold))
    return total / len(split.encoded)


# --------------------------------------------------------------------------- checkpoints


class Checkpoints:
    """Atomic orbax checkpoints of {params, opt_state} plus JSON metadata under ``dir``."""

    def __init__(self, directory: Path, keep: int = 2):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        self.manager = ocp.CheckpointManager(directory.absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=keep))

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict, meta: dict) -> None:
        args = self.ocp.args.Composite(state=self.ocp.args.StandardSave(state), meta=self.ocp.args.JsonSave(meta))
        self.manager.save(step, args=args, force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, like: dict) -> tuple[dict, dict]:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
        args = self.ocp.args.Composite(state=self.ocp.args.StandardRestore(abstract), meta=self.ocp.args.JsonRestore())
        out = self.manager.restore(step, args=args)
        return out.state, out.meta


def config_differences(saved: dict, cfg) -> list[str]:
    """Fields whose value differs between a checkpoint's config and ``cfg``; a field the
    checkpoint predates counts as having its default value."""
    now, defaults = cfg.to_dict(), default_config().to_dict()
    return sorted(
        k for k in set(saved) | set(now) if k not in RESUMABLE_CHANGES and saved.get(k, defaults.get(k)) != now.get(k)
    )


# --------------------------------------------------------------------------- the run


def load_model(cfg, mesh=None):
    """``cfg.model`` in ``cfg.dtype``, each tensor read onto its shards of ``mesh`` if given."""
    from zojax import models

    placement = None if mesh is None else sharding.loader_sharding(mesh)
    if cfg.model == DEFAULT_MODEL:
        return models.load_default(cfg.dtype, placement)
    return models.load(cfg.model, cfg.dtype, placement)


def start_processes(cfg) -> None:
    """Join the other hosts of a multi-host run (``cfg.distributed``); check what they need."""
    arguments = distributed_arguments(cfg.distributed)
    if arguments is None:
        return
    sharding.initialize(**arguments)
    if jax.process_count() > 1 and cfg.objective == "f1":
        raise ValueError("objective 'f1' scores answers on one host; it cannot run on several processes")


def run(cfg) -> dict:
    """Train and evaluate as ``cfg`` says; returns the summary (also written to
    ``output_dir/summary.json``)."""
    validate(cfg)
    start_processes(cfg)
    mesh = sharding.make_mesh(cfg.mesh)
    out = Path(cfg.output_dir)
    ckpt = Checkpoints(out / "checkpoints")
    if ckpt.latest() is not None and not cfg.resume:
        raise FileExistsError(f"{out} holds checkpoints of an earlier run: pass resume=True or another output_dir")
    out.mkdir(parents=True, exist_ok=True)

    model = load_model(cfg, mesh)
    if model.tokenizer is None:
        raise ValueError(f"model {cfg.model!r} has no tokenizer; tasks need one")
    data = load_data(cfg, model.tokenizer)
    trainable = make_trainable(cfg, model)
    param_shardings = sharding.param_shardings(trainable.params, mesh)
    params, base = sharding.place(trainable.params, param_shardings), trainable.base
    tx = make_optimizer(cfg, params, trainable.stacked)
    opt_state = jax.jit(tx.init)(params)
    step_fn = make_step(cfg, make_loss(cfg, model, trainable, data.train), tx, param_shardings)
    predict_fn = make_predict(trainable)
    evaluate_on = lambda params, split: evaluate(cfg, model, trainable, params, split, predict_fn, mesh)

    log = Log(out, cfg, enabled=jax.process_index() == 0)
    start, best = 0, {"dev": None, "step": 0}  # the best dev score among training evaluations
    if cfg.resume and ckpt.latest() is not None:
        state, meta = ckpt.restore(ckpt.latest(), {"params": params, "opt_state": opt_state})
        differ = config_differences(meta["config"], cfg)
        if differ:
            raise ValueError(
                "cannot resume with a changed config; fields that differ: "
                + ", ".join(f"{k} (saved {meta['config'].get(k)!r}, now {cfg.to_dict().get(k)!r})" for k in differ)
            )
        params, opt_state, start, best = state["params"], state["opt_state"], meta["step"], meta["best"]
        if best["step"] == 0:  # older checkpoints count the zero-shot dev score as the best so far
            best["dev"] = None
        log.text(f"resumed from step {start}")
    else:
        zero_shot = {
            split: evaluate_on(params, getattr(data, split)) for split in ("dev", "test")
        }
        log.event({"step": 0, "event": "zero_shot", **zero_shot})
        log.text(f"zero-shot ({cfg.num_demos} demonstrations): dev {zero_shot['dev']:.3f}  test {zero_shot['test']:.3f}")
        best = {"dev": None, "step": 0, "zero_shot": zero_shot}

    best_ckpt = Checkpoints(out / "best", keep=1)
    consecutive_skips = 0
    bar = progress_bar(cfg, start, enabled=log.enabled)
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        batch = sharding.shard_rows(train_batch(cfg, data.train.encoded, step), mesh)
        params, opt_state, record = step_fn(base, params, opt_state, *batch)
        record = {k: v.item() for k, v in sharding.to_host(record).items()}
        elapsed = time.perf_counter() - t0
        consecutive_skips = consecutive_skips + 1 if record["skipped"] else 0
        log.event({"step": step + 1, **record, "step_time": elapsed})
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}", step_s=f"{elapsed:.2f}")
        if consecutive_skips >= cfg.max_consecutive_skips:
            raise FloatingPointError(
                f"{consecutive_skips} consecutive steps had a non-finite loss (step {step + 1}); "
                f"try a smaller learning_rate (now {cfg.learning_rate}) or eps (now {cfg.eps})"
            )
        done = step + 1
        if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
            dev = evaluate_on(params, data.dev)
            log.event({"step": done, "event": "eval", "dev": dev})
            if best["dev"] is None or dev > best["dev"]:  # ties: the earlier step
                best = {**best, "dev": dev, "step": done}
                best_ckpt.save(done, {"params": params}, {"dev": dev})
        if cfg.checkpoint_every and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            meta = {"step": done, "best": best, "config": cfg.to_dict()}
            ckpt.save(done, {"params": params, "opt_state": opt_state}, meta)
    bar.close()

    # The test scores the best-dev parameters among the evaluations during training (the
    # zero-shot model is not a candidate: it has its own test score), read back from their
    # checkpoint rather than from a copy kept in memory; without evaluations, the final ones.
    final_params, chosen = params, params
    if best["step"] not in (0, cfg.steps):
        chosen = best_ckpt.restore(best["step"], {"params": params})[0]["params"]
    test = evaluate_on(chosen, data.test)
    if cfg.export_hf:
        from zojax import models

        exported = sharding.to_host(trainable.export(base, chosen))
        if log.enabled:
            models.save_hf(model, exported, out / "hf")
    summary = {
        "task": cfg.task, "model": cfg.model, "optimizer": cfg.optimizer, "steps": cfg.steps, "seed": cfg.seed,
        "zero_shot": best.get("zero_shot"), "best_dev": best["dev"], "best_step": best["step"], "test": test,
        "notes": list(data.notes),
    }
    log.finish(summary)
    return {**summary, "params": final_params}


# --------------------------------------------------------------------------- logging


def progress_bar(cfg, start: int, enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, initial=start, disable=not (cfg.progress and enabled), desc=f"{cfg.optimizer} {cfg.task}", unit="step")


class Log:
    """metrics.jsonl, TensorBoard scalars, a loss-curve PNG and a summary table; all of it
    only when ``enabled`` (process 0 of a multi-host run)."""

    def __init__(self, out: Path, cfg, enabled: bool = True):
        self.out, self.cfg, self.enabled = out, cfg, enabled
        if enabled:
            from tensorboardX import SummaryWriter

            self.jsonl = (out / "metrics.jsonl").open("a")
            self.tb = SummaryWriter(str(out / "tensorboard"))

    def text(self, message: str) -> None:
        if self.enabled:
            print(message, flush=True)

    def event(self, record: dict) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(k if "event" not in record else f"{record['event']}/{k}", v, record["step"])

    def finish(self, summary: dict) -> None:
        if not self.enabled:
            return
        self.tb.close()
        self.jsonl.close()
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        plot_loss(self.out / "metrics.jsonl", self.out / "loss.png", self.cfg.optimizer in ZO_OPTIMIZERS)
        zs = summary["zero_shot"] or {}
        rows = [
            ("task", summary["task"]), ("optimizer", summary["optimizer"]), ("steps", summary["steps"]),
            ("zero-shot dev / test", f"{zs.get('dev', float('nan')):.3f} / {zs.get('test', float('nan')):.3f}"),
            ("best dev (step)", "—" if summary["best_dev"] is None else f"{summary['best_dev']:.3f} ({summary['best_step']})"),
            ("test (best-dev params)", f"{summary['test']:.3f}"),
        ]
        width = max(len(k) for k, _ in rows)
        self.text("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


def plot_loss(metrics: Path, png: Path, zeroth_order: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    if not steps:
        return
    x = [r["step"] * (2 if zeroth_order else 1) for r in steps]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, [r["loss"] for r in steps], lw=0.8)
    ax.set_xlabel("forward passes" if zeroth_order else "steps (forward + backward)")
    ax.set_ylabel("training loss")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
