"""This checkout's models against another checkout's, side by side in one process: forward time,
ZO step time over two forwards, and compiled memory, on a SmolLM2-135M-shaped LLaMA.

Both sides get the same random float32 parameters (the params pytree layout is unchanged since
the functional models), the same batch, the same loss and this checkout's optimizers; only the
model code differs. Times are medians of `--runs` interleaved rounds (one call of each per
round, so load from other processes hits both alike); memory is XLA's `memory_analysis()` of
the same compiled functions (peak = argument + output - alias + temp), which does not depend on
load. Used to check the `flax.nnx` modules against the functional models they replaced:

    git worktree add /tmp/before 401178e     # the last commit with the functional models
    python benchmarks/models_vs_checkout.py /tmp/before [--batch 16] [--seq 64] [--runs 5] \
        [--optimizers mezo lozo adamezo] [--sampler gaussian]

`--runs 0` prints the memory columns only (times "nan"), without running anything. The last
column compares the compiled modules themselves: identical programs (but for names and source
metadata), else the same number of each optimised HLO op, else the op totals.
"""

import argparse
import collections
import contextlib
import re
import sys
from pathlib import Path

import jax

import zojax.models
from common import (
    Memory,
    SharedSteps,
    compile_step,
    environment,
    interleaved_medians,
    lm_loss,
    mb,
    past_warmup,
    random_batch,
    table,
    zo_optimizer,
    zo_step,
)

SMOLLM2 = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
)


def op_counts(compiled) -> collections.Counter:
    """How many of each HLO op the optimised module holds (names and layouts aside)."""
    return collections.Counter(re.findall(r"= \S+ ([a-z][\w-]*)\(", compiled.as_text()))


def canonical(compiled) -> str:
    """The optimised module's text without what does not change the computation: source
    metadata, the module's name and instruction names (numbered in order of appearance)."""
    text = re.sub(r",? ?metadata=\{[^}]*\}", "", compiled.as_text())
    # The FileNames / FunctionNames / FileLocations / StackFrames tables: Python source only.
    text = re.sub(r"^(FileNames|FunctionNames|FileLocations|StackFrames)\n(.+\n)*", "", text, flags=re.M)
    text = re.sub(r"^HloModule \S+", "HloModule m", text, flags=re.M)
    names: dict[str, str] = {}
    return re.sub(r"%[\w.\-]+", lambda m: names.setdefault(m.group(0), f"%v{len(names)}"), text)


def hlo_change(before: tuple, after: tuple) -> str:
    (ops_before, text_before), (ops_after, text_after) = before, after
    if text_before == text_after:
        return "identical"
    if ops_before == ops_after:
        return "same op counts"
    return f"{sum(ops_before.values())} -> {sum(ops_after.values())} ops"


def other_models(checkout: Path):
    """`zojax.models` of another checkout, imported beside this one's (whose modules are put
    back), and that checkout's `zojax.models.*` modules, for :func:`their_modules`."""
    ours = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "zojax" or k.startswith("zojax.")}
    sys.path.insert(0, str(checkout))
    try:
        import zojax.models as theirs

        modules = {k: m for k, m in sys.modules.items() if k.startswith("zojax.models")}
    finally:
        sys.path.remove(str(checkout))
        for k in [k for k in sys.modules if k == "zojax" or k.startswith("zojax.")]:
            del sys.modules[k]
        sys.modules.update(ours)
    if not theirs.__file__.startswith(str(checkout)):
        raise RuntimeError(f"imported {theirs.__file__}, not the checkout {checkout}")
    return theirs, modules


@contextlib.contextmanager
def their_modules(modules: dict):
    """`zojax.models.*` resolved to the other checkout's inside the block (its code imports
    some modules at call time, e.g. the family registry)."""
    ours = {k: sys.modules[k] for k in modules if k in sys.modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for k in modules:
            del sys.modules[k]
        sys.modules.update(ours)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="the other checkout's root (a git worktree)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--optimizers", nargs="+", default=["mezo", "lozo", "adamezo"])
    parser.add_argument("--sampler", default="gaussian")
    parser.add_argument("--horizon", type=int, default=10, help="AdaMeZO's horizon")
    args = parser.parse_args()

    theirs, modules = other_models(args.checkout.absolute())
    new = zojax.models.init(zojax.models.LlamaConfig(**SMOLLM2))
    models = {"before": theirs.Model(theirs.LlamaConfig(**SMOLLM2), new.params), "after": new}
    ids, mask = random_batch(SMOLLM2["vocab_size"], args.batch, args.seq)

    runners, memory, ops = {}, {}, {}

    def compile_side(side, model):
        loss = lm_loss(model.apply)
        forward = jax.jit(loss).lower(model.params, ids, mask).compile()
        memory[side, "forward"], ops[side, "forward"] = Memory.of(forward), (op_counts(forward), canonical(forward))
        runners[side, "forward"] = lambda f=forward, p=model.params: f(p, ids, mask).block_until_ready()
        shared = SharedSteps(model.params, ids, mask)
        for name in args.optimizers:
            tx = zo_optimizer(name, args.sampler, model.stacked, horizon=args.horizon)
            compiled = compile_step(zo_step(tx, loss), model.params, tx.init(model.params), ids, mask)
            memory[side, name], ops[side, name] = Memory.of(compiled), (op_counts(compiled), canonical(compiled))
            runners[side, name] = shared.add(compiled, past_warmup(tx.init(model.params)))
            print(f"  compiled {side} {name}", file=sys.stderr, flush=True)

    with their_modules(modules):
        compile_side("before", models["before"])
    compile_side("after", models["after"])
    if args.runs:
        seconds = interleaved_medians({f"{s} {n}": f for (s, n), f in runners.items()}, args.runs)
    else:  # memory only
        seconds = {f"{s} {n}": float("nan") for s, n in runners}

    print(
        f"SmolLM2-135M-shaped LLaMA, float32, batch {args.batch}x{args.seq}, LM loss, sampler {args.sampler}; "
        f"before = {args.checkout}, after = this checkout; median of {args.runs} interleaved rounds ({environment()})\n"
    )
    rows = []
    for name in ["forward", *args.optimizers]:
        cells = [name]
        for side in models:
            t, peak = seconds[f"{side} {name}"], memory[side, name].peak
            ratio = t / (2 * seconds[f"{side} forward"])
            cells += [f"{t:.3f}", "-" if name == "forward" else f"{ratio:.3f}", mb(peak),
                      f"{peak / memory[side, 'forward'].peak:.3f}"]
        before_t, after_t = seconds[f"before {name}"], seconds[f"after {name}"]
        cells += [f"{after_t / before_t:.3f}", f"{memory['after', name].peak / memory['before', name].peak:.4f}",
                  hlo_change(ops["before", name], ops["after", name])]
        rows.append(cells)
    sides = [f"{s} {c}" for s in models for c in ("s", "step/2fwd", "peak", "peak/fwd")]
    print(table(["function", *sides, "time after/before", "peak after/before", "HLO"], rows))
    print("  (HLO: 'identical' when the optimised modules are the same program but for names and source\n"
          "  metadata; 'same op counts' when they hold the same number of each op; else the op totals)")


if __name__ == "__main__":
    main()
