"""Step time and compiled memory of zojax's ZO steps against model size and sequence length.

Models are OPT-shaped with random float32 weights (built from `OPTConfig.hf_tensors()`
shapes, no checkpoint): hidden sizes `--widths` with 64-dimensional heads and a 4x FFN, at a
fixed depth and vocabulary; then one width (`--seq-width`) at sequence lengths `--seqs`. The
loss is the next-token cross-entropy on random token ids, perturbed layer by layer through
`param_hook`. Each forward and step is compiled once (memory from XLA's `memory_analysis()`,
peak = argument + output - alias + temp), warmed up once and timed in `--runs` interleaved
rounds per model (medians).
Linear cost shows as a log-log slope of 1 (x2 per doubling).

    python benchmarks/scaling.py [--widths 256 512 1024] [--layers 6] [--vocab 50272] \
        [--batch 8] [--seq 64] [--seqs 32 64 128 256] [--seq-width 512] \
        [--optimizers mezo lozo] [--sampler gaussian] [--runs 5] [--memory-only]
"""

import argparse
import itertools
import sys

import jax
import jax.numpy as jnp
import numpy as np

from common import (
    SAMPLERS,
    ZO_OPTIMIZERS,
    Memory,
    SharedSteps,
    compile_step,
    environment,
    interleaved_medians,
    lm_loss,
    n_params,
    past_warmup,
    random_batch,
    table,
    zo_optimizer,
    zo_step,
)
from zojax.models import Model, OPTConfig


def random_opt(hidden: int, layers: int, vocab: int, max_positions: int, seed: int = 0) -> Model:
    """An OPT model with N(0, 0.02) matrices and embeddings, unit norm scales, zero biases."""
    config = OPTConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        ffn_dim=4 * hidden,
        num_attention_heads=max(hidden // 64, 1),
        max_position_embeddings=max_positions,
        word_embed_proj_dim=hidden,
    )
    rng = np.random.default_rng(seed)
    params = {}
    for t in config.hf_tensors():
        shape = t.shape(layers)
        if t.path[-1] == "bias":
            value = np.zeros(shape, np.float32)
        elif t.path[-1] == "scale":
            value = np.ones(shape, np.float32)
        else:
            value = 0.02 * rng.standard_normal(shape, np.float32)
        node = params
        for k in t.path[:-1]:
            node = node.setdefault(k, {})
        node[t.path[-1]] = jnp.asarray(value)
    return Model(config, params)


def measure(model: Model, batch: int, seq: int, args) -> dict:
    """{"forward" or optimizer: (median seconds or None, Memory)}; the forward and the steps
    are timed in interleaved rounds."""
    ids, mask = random_batch(model.config.vocab_size, batch, seq)
    loss = lm_loss(model.apply)
    forward = jax.jit(loss).lower(model.params, ids, mask).compile()
    runners = {"forward": lambda: forward(model.params, ids, mask).block_until_ready()}
    memory = {"forward": Memory.of(forward)}
    shared = SharedSteps(model.params, ids, mask)
    for name in args.optimizers:
        tx = zo_optimizer(name, args.sampler, model.stacked)
        compiled = compile_step(zo_step(tx, loss), model.params, tx.init(model.params), ids, mask)
        runners[name] = shared.add(compiled, past_warmup(tx.init(model.params)))
        memory[name] = Memory.of(compiled)
    seconds = dict.fromkeys(runners) if args.memory_only else interleaved_medians(runners, args.runs)
    summary = ", ".join(f"{k} {'-' if t is None else f'{t:.2f} s'}" for k, t in seconds.items())
    print(f"  hidden {model.config.hidden_size}, seq {seq}: {summary}", file=sys.stderr, flush=True)
    return {k: (seconds[k], memory[k]) for k in runners}


def slope(x, y) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(x), np.log(np.maximum(y, 1e-9)), 1)[0])


def time_columns(results: list[dict], names: list[str]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells: each function's median time, and steps' time / (2 x forward)."""
    headers, rows = [], [[] for _ in results]
    for name in names:
        headers += [f"{name} s"] + ([f"{name} / 2 fwd"] if name != "forward" else [])
        for row, r in zip(rows, results):
            row.append(f"{r[name][0]:.3f}")
            if name != "forward":
                row.append(f"{r[name][0] / (2 * r['forward'][0]):.2f}")
    return headers, rows


def memory_columns(results: list[dict], names: list[str]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells: each function's compiled peak and temp in MB."""
    headers = [f"{name} {kind}" for name in names for kind in ("peak", "temp")]
    rows = [[f"{m / 2**20:,.0f}" for name in names for m in (r[name][1].peak, r[name][1].temp)] for r in results]
    return headers, rows


def fits(x, results: list[dict], names: list[str], memory_only: bool, what: str) -> list[str]:
    """Log-log slopes of time, compiled peak and temp against `x`, per function."""
    lines = []
    for name in names:
        series = {} if memory_only else {"time": [r[name][0] for r in results]}
        series |= {"peak": [r[name][1].peak for r in results], "temp": [r[name][1].temp for r in results]}
        slopes = {k: slope(x, y) for k, y in series.items()}
        parts = [f"{k} ~ {what}^{a:.2f} (x{2**a:.2f} per doubling)" for k, a in slopes.items()]
        lines.append(f"  {name:<8} " + "; ".join(parts))
    return lines


def print_sweep(lead_headers, lead_cells, x, results, names, args, what):
    if not args.memory_only:
        headers, cells = time_columns(results, names)
        print(table([*lead_headers, *headers], [[*a, *b] for a, b in zip(lead_cells, cells)]) + "\n")
    headers, cells = memory_columns(results, names)
    print(table([*lead_headers, *(f"{h} MB" for h in headers)], [[*a, *b] for a, b in zip(lead_cells, cells)]))
    print(f"\nlog-log fits against {what}:")
    print("\n".join(fits(x, results, names, args.memory_only, what)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=50272)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64, help="sequence length of the width sweep")
    parser.add_argument("--seqs", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--seq-width", type=int, default=512, help="hidden size of the sequence sweep")
    parser.add_argument("--optimizers", nargs="+", choices=ZO_OPTIMIZERS, default=["mezo", "lozo"])
    parser.add_argument("--sampler", choices=SAMPLERS, default="gaussian")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--memory-only", action="store_true", help="compile and report memory, no timing")
    args = parser.parse_args()
    names = ["forward", *args.optimizers]
    max_positions = max(2048, args.seq, *args.seqs)

    cache = {}  # (width, seq) -> results; the sweeps share one point

    def point(width, seq):
        if (width, seq) not in cache:
            model = random_opt(width, args.layers, args.vocab, max_positions)
            cache[width, seq] = (n_params(model.params), measure(model, args.batch, seq, args))
        return cache[width, seq]

    by_width = [point(w, args.seq) for w in args.widths]
    by_seq = [point(args.seq_width, s) for s in args.seqs]

    runs = "compiled memory only" if args.memory_only else f"median of {args.runs} rounds"
    print(
        f"OPT-shaped models, random float32 weights, {args.layers} layers, vocab {args.vocab}, "
        f"batch {args.batch}, LM loss, sampler {args.sampler}, {runs} ({environment()})"
    )
    print("memory: XLA memory_analysis of the compiled functions; peak = argument + output - alias + temp")
    print("(the peak includes the params; temp is the scratch: activations, z, the update)\n")

    print(f"against model size (seq {args.seq})\n")
    lead = [[w, max(w // 64, 1), 4 * w, f"{n / 1e6:.1f}M"] for w, (n, _) in zip(args.widths, by_width)]
    sizes = [n for n, _ in by_width]
    print_sweep(["hidden", "heads", "ffn", "params"], lead, sizes, [r for _, r in by_width], names, args, "params")

    print(f"\nagainst sequence length (hidden {args.seq_width}, {by_seq[0][0] / 1e6:.1f}M params)\n")
    lead = [[s, args.batch * s] for s in args.seqs]
    print_sweep(["seq", "tokens"], lead, args.seqs, [r for _, r in by_seq], names, args, "seq")
    if not args.memory_only:
        print("time ratios between consecutive lengths:")
        for name in names:
            t = [r[name][0] for _, r in by_seq]
            print(f"  {name:<8} " + ", ".join(f"{b / a:.2f}" for a, b in itertools.pairwise(t)))


if __name__ == "__main__":
    main()
