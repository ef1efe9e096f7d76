"""Everything a run is built from, in one call: ``build(cfg)`` -> a :class:`Setup` holding
the model, the data, the trainable tree, the loss, the optimizer, the one jitted step and
the jitted prediction. The loop, the comparisons and the reproduction's memory rows all
build through it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import zojax
from zojax import sharding, tasks
from zojax.finetune.config import DEFAULT_MODEL, data_seed, loss_rows, pad_lengths, validate
from zojax.finetune.evaluate import make_predict
from zojax.finetune.step import make_step
from zojax.optim import registry
from zojax.tasks import scoring

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
    heldout: Split = dataclasses.field(default_factory=lambda: Split([], []))


def load_data(cfg, tokenizer) -> Data:
    """The task's samples (seeded by ``data_seed(cfg)``), encoded; dev and test with their
    demonstrations; ``heldout`` as training examples (``cfg.num_heldout``)."""
    sizes = {k: cfg[k] or None for k in ("num_train", "num_dev", "num_test")}
    seed = data_seed(cfg)
    data = tasks.load_task(cfg.task, cfg.data_dir or None, seed=seed, num_heldout=cfg.num_heldout, **sizes)

    def split(examples, demonstrations: bool) -> Split:
        if demonstrations and cfg.num_demos:
            examples = tasks.with_demonstrations(examples, data.train, cfg.num_demos, seed=seed)
        return Split(examples, tasks.encode(examples, tokenizer, cfg.max_length) if examples else [])

    return Data(data.task, split(data.train, False), split(data.dev, True), split(data.test, True), data.notes,
                split(data.heldout, False))


def train_batches(cfg, encoded: list) -> Callable[[int], tuple[tasks.Batch, np.ndarray]]:
    """``batch_of(step)``: the training batch of ``step`` and its example indices; epoch e's
    order is a permutation seeded by (seed, e). What depends on the whole split (its scoring
    rows, target width and the epoch's order) is computed once, not at every step."""
    per_epoch = max(len(encoded) // cfg.batch_size, 1)
    rows = loss_rows(cfg, encoded)
    layout = dict(rows=rows, bucket=pad_lengths(cfg), max_length=cfg.max_length, targets=tasks.most_targets(encoded, rows))

    @functools.lru_cache(maxsize=1)
    def order(epoch: int) -> np.ndarray:
        return np.random.default_rng([cfg.seed, epoch]).permutation(len(encoded))

    def batch_of(step: int) -> tuple[tasks.Batch, np.ndarray]:
        epoch, i = divmod(step, per_epoch)
        chosen = order(epoch)[i * cfg.batch_size : (i + 1) * cfg.batch_size].copy()
        return tasks.collate([encoded[j] for j in chosen], **layout), chosen

    return batch_of


# --------------------------------------------------------------------------- what is trained


@dataclasses.dataclass(frozen=True)
class Trainable:
    """The tree the optimizer updates and how the model uses it.

    ``apply(base, params, ids, mask, param_hook=None, at=None)`` -> logits; ``view(base, params)``
    -> the tree ``model.generate`` takes; ``export(base, params)`` -> full parameters for
    ``save_hf`` (None: not exportable); ``adapters``: the ``zojax.peft`` object (None in
    full mode). ``base`` is the frozen model (None in full mode).
    """

    params: Any
    stacked: Any
    base: Any
    apply: Callable
    view: Callable
    export: Callable | None
    adapters: Any = None


def make_trainable(cfg, model) -> Trainable:
    if cfg.mode == "full":
        full_apply = lambda base, p, *args, **kw: model.apply(p, *args, **kw)
        return Trainable(model.params, model.stacked, None, full_apply, lambda base, p: p, lambda base, p: p)
    from zojax import peft

    if cfg.mode == "lora":
        targets = tuple(t.strip() for t in cfg.lora_targets.split(","))
        a = peft.lora(model, targets, cfg.lora_rank, cfg.lora_alpha, key=cfg.seed)
        return Trainable(a.params, a.stacked, model.params, a.apply, a.attach, a.merge, a)
    a = peft.prefix(model, cfg.prefix_tokens, key=cfg.seed)
    return Trainable(a.params, a.stacked, model.params, a.apply, a.attach, None, a)


def make_loss(cfg, model, trainable: Trainable, train: Split):
    """``loss(params, base, batch, index, param_hook=None)``; the hook lets ZO perturb layer
    by layer. The ``"f1"`` objective is −F1 of greedy answers, computed on the host (no hook:
    generation runs the whole model)."""
    if cfg.objective == "f1":
        answers = [ex.answers for ex in train.examples]

        def host_f1(tokens, index):
            predicted = tasks.decode_answers(model.tokenizer, tokens)
            return np.float32(np.mean([tasks.metrics.f1(p, answers[i]) for p, i in zip(predicted, index)]))

        def f1_loss(params, base, batch, index):
            tokens = model.generate(trainable.view(base, params), batch.input_ids, batch.attention_mask, cfg.max_new_tokens, model.tokenizer.eos_token_id)
            return -jax.pure_callback(host_f1, jax.ShapeDtypeStruct((), jnp.float32), tokens, index)

        return f1_loss
    score = scoring.lm_loss if cfg.objective == "lm" else scoring.classification_loss

    def loss(params, base, batch, index, param_hook=None):
        logits = trainable.apply(base, params, batch.input_ids, batch.attention_mask, param_hook=param_hook,
                                 at=scoring.logit_positions(batch))
        return score(logits, batch)

    return loss


# --------------------------------------------------------------------------- the optimizer


def learning_rate(cfg) -> optax.ScalarOrSchedule:
    """``cfg.learning_rate`` after ``cfg.warmup_steps`` of linear warm-up from 0, then
    constant or decaying to 0 at ``cfg.steps`` (linear or cosine); a plain float when
    constant without warm-up."""
    peak, warmup = cfg.learning_rate, cfg.warmup_steps
    rest = max(cfg.steps - warmup, 1)
    if cfg.schedule == "constant" and not warmup:
        return peak
    after = {
        "constant": lambda: optax.constant_schedule(peak),
        "linear": lambda: optax.linear_schedule(peak, 0.0, rest),
        "cosine": lambda: optax.cosine_decay_schedule(peak, rest),
    }[cfg.schedule]()
    if not warmup:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_optimizer(cfg, params, stacked) -> optax.GradientTransformation:
    """The optimizer named by ``cfg.optimizer`` (``zojax.optim.registry``) with its schedule
    and weight decay (``cfg.decay_rule``), then, if ``cfg.clip``, the update's global norm
    clipped to it."""
    hyperparams = {k: cfg[k] for k in registry.HYPERPARAMS if k in cfg}
    tx = registry.optimizer(
        cfg.optimizer, learning_rate(cfg), weight_decay=cfg.weight_decay,
        decay_mask=zojax.decay_mask(params, stacked, rule=cfg.decay_rule), stacked=stacked, key=cfg.seed,
        **hyperparams,
    )
    return optax.chain(tx, optax.clip_by_global_norm(cfg.clip)) if cfg.clip else tx


# --------------------------------------------------------------------------- build


def load_model(cfg, mesh=None):
    """``cfg.model`` in ``cfg.dtype``, each tensor read onto its shards of ``mesh`` if given."""
    from zojax import models

    placement = None if mesh is None else sharding.loader_sharding(mesh)
    if cfg.model == DEFAULT_MODEL:
        return models.load_default(cfg.dtype, placement)
    return models.load(cfg.model, cfg.dtype, placement)


@dataclasses.dataclass
class Setup:
    """A run's pieces. ``step(params, opt_state, base, batch, index) -> (params, opt_state,
    record)`` is jitted with params and state donated (``tx``, ``opt_state`` and ``step``
    are None when ``cfg.steps`` is 0: evaluation only); ``predict(base, params, batch)`` ->
    each example's best candidate. ``params`` are placed on ``mesh`` (when one is given)."""

    cfg: Any
    model: Any
    data: Data
    trainable: Trainable
    mesh: Any
    params: Any
    base: Any
    tx: optax.GradientTransformation
    opt_state: Any
    loss: Callable
    step: Callable
    predict: Callable
    zeroth_order: bool


def build(cfg, model=None, mesh=None) -> Setup:
    """Validate ``cfg`` and assemble its run (``model`` defaults to loading ``cfg.model``
    onto ``mesh``)."""
    validate(cfg)
    model = load_model(cfg, mesh) if model is None else model
    if model.tokenizer is None:
        raise ValueError(f"model {cfg.model!r} has no tokenizer; tasks need one")
    data = load_data(cfg, model.tokenizer)
    trainable = make_trainable(cfg, model)
    params, shardings = trainable.params, None
    if mesh is not None:
        shardings = sharding.param_shardings(params, mesh)
        params = sharding.place(params, shardings)
    zeroth_order = registry.is_zeroth_order(cfg.optimizer)
    loss = make_loss(cfg, model, trainable, data.train)
    tx = opt_state = step = None
    if cfg.steps:  # evaluation only (steps=0) needs no optimizer
        tx = make_optimizer(cfg, params, trainable.stacked)
        if mesh is None:
            opt_state, state_shardings = jax.jit(tx.init)(params), None
        else:
            opt_state, state_shardings = sharding.init_state(tx, params, shardings)
        step = jax.jit(make_step(tx, loss, zeroth_order, shardings, state_shardings), donate_argnums=(0, 1))
    return Setup(cfg, model, data, trainable, mesh, params, trainable.base, tx, opt_state, loss, step,
                 make_predict(trainable), zeroth_order)
