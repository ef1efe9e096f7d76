"""Helpers shared by the benchmark scripts: timing, the LM loss, optimizers, compiled steps,
compiled memory and table printing.

The scripts import this module as `common` (run them as `python benchmarks/<name>.py`, which
puts this folder on the path).
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import zojax
from zojax.finetune.step import make_step
from zojax.optim import registry

ZO_OPTIMIZERS = registry.names(zeroth_order=True)
SAMPLERS = ("gaussian", "hash")


def median_time(fn, runs: int, warmup: int = 2) -> float:
    """Median wall time of `fn()` over `runs` calls after `warmup` untimed ones; `fn` must
    block until its result is ready."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(runners: dict, runs: int, warmup: int = 1) -> dict:
    """{name: median seconds} of no-argument blocking callables, timed in rounds of one call
    each (after `warmup` rounds), so that a change of load on a shared machine hits them all
    alike and ratios between them stay meaningful. Each round's times go to stderr."""
    for _ in range(warmup):
        for fn in runners.values():
            fn()
    times = {name: [] for name in runners}
    for r in range(runs):
        for name, fn in runners.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        last = ", ".join(f"{n} {t[-1]:.2f}" for n, t in times.items())
        print(f"  round {r + 1}/{runs} (s): {last}", file=sys.stderr, flush=True)
    return {name: statistics.median(t) for name, t in times.items()}


def random_batch(vocab_size: int, batch: int, seq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random token ids [batch, seq] (int32) and an all-ones attention mask."""
    ids = np.random.default_rng(seed).integers(0, vocab_size, (batch, seq), dtype=np.int32)
    return ids, np.ones_like(ids)


def lm_loss(apply):
    """`loss(params, ids, mask, param_hook=None)`: mean next-token cross-entropy of `apply`'s
    logits. The `param_hook` keyword makes zojax perturb the model layer by layer."""

    def loss(params, ids, mask, param_hook=None):
        logits = apply(params, ids, mask, param_hook=param_hook)[:, :-1]
        logp = jax.nn.log_softmax(logits, axis=-1)
        picked = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
        return -jnp.mean(picked)

    return loss


def zo_optimizer(name: str, sampler: str, stacked, learning_rate: float = 1e-7, horizon: int = 10):
    """The registry's optimizer `name` (one of ZO_OPTIMIZERS) with z drawn by `sampler`."""
    return registry.optimizer(name, learning_rate, stacked=stacked, key=0, sampler=sampler, horizon=horizon)


def past_warmup(state):
    """AdaMeZO's official form takes plain MeZO steps until `horizon` + 1 steps have been applied.
    Return `state` as if they had been (history filled with counters 1..h), so that the timed
    steps take the Adam branch without h + 1 slow warm-up steps; other states are returned as is."""

    def advance(s):
        if not isinstance(s, zojax.AdaMeZOState):
            return s
        h = s.history_counter.shape[0]
        return s._replace(
            info=s.info._replace(count=jnp.int32(h + 1)),
            history_counter=jnp.arange(1, h + 1, dtype=jnp.int32),
            history_grad=jnp.full((h,), 0.1, jnp.float32),
            applied=jnp.int32(h + 1),
        )

    return jax.tree.map(advance, state, is_leaf=lambda s: isinstance(s, zojax.AdaMeZOState))


def zo_step(tx, loss):
    """`step(params, state, ids, mask) -> (params, state, record)`: the fine-tuning loop's ZO step."""
    return make_step(tx, loss, zeroth_order=True)


def plain_step(tx, loss, in_place: bool):
    """`step(params, state, ids, mask) -> (params, state)` through the generic path, as for a
    model of one's own: `value_fn(params)` without `param_hook`, so the optimizer perturbs a copy
    of the whole tree, or (`in_place`) the parameters themselves (`zojax.in_place_update`)."""

    def step(params, state, ids, mask):
        value_fn = lambda p: loss(p, ids, mask)
        if in_place:
            return zojax.in_place_update(tx, params, state, value_fn)
        updates, state = tx.update(None, state, params, value_fn=value_fn)
        return optax.apply_updates(params, updates), state

    return step


def fo_step(tx, loss):
    """`step(params, state, ids, mask) -> (params, state, record)`: the loop's first-order step."""
    return make_step(tx, loss, zeroth_order=False)


def copy_tree(tree):
    """Fresh buffers, so that donating them leaves the original untouched."""
    return jax.tree.map(jnp.copy, tree)


def compile_step(step, params, state, ids, mask):
    """`step` jit-compiled ahead of time with params and state donated."""
    return jax.jit(step, donate_argnums=(0, 1)).lower(params, state, ids, mask).compile()


class SharedSteps:
    """Compiled donated steps `(params, state, ids, mask) -> (params, state[, record])` that pass one copy
    of the parameters from each to the next (each keeps its own optimizer state), so that many
    can be timed side by side in the memory of a single copy. `add` returns a no-argument
    function that runs one step and waits for it."""

    def __init__(self, params, ids, mask):
        self.params, self.ids, self.mask = copy_tree(params), ids, mask

    def add(self, compiled, state):
        carry = [state]

        def one():
            self.params, carry[0] = compiled(self.params, carry[0], self.ids, self.mask)[:2]
            jax.block_until_ready(self.params)

        return one


class Memory(NamedTuple):
    """Bytes from XLA's `memory_analysis()` of a compiled function."""

    argument: int
    output: int
    alias: int
    temp: int

    @property
    def peak(self) -> int:
        """Live at once: inputs, outputs not written over donated inputs, and scratch."""
        return self.argument + self.output - self.alias + self.temp

    @classmethod
    def of(cls, compiled) -> Memory:
        m = compiled.memory_analysis()
        return cls(m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes, m.temp_size_in_bytes)


def mb(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.0f} MB"


def table(headers: list[str], rows: list[list], indent: str = "  ") -> str:
    """A plain-text table; the first column is left-aligned, the others right-aligned."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return indent + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(cells[0]), indent + "  ".join("-" * w for w in widths), *map(line, cells[1:])])


def n_params(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))


def environment() -> str:
    return f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)"
