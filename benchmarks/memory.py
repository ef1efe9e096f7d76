"""Compiled peak memory of the jitted ZO steps against the forward pass they are built from, on
SmolLM2-135M (float32) and an OPT-1.3B-shaped model (bfloat16).

Every function is compiled ahead of time from parameter shapes only (nothing is run), with
params and optimizer state donated, on a `--batch` x `--seq` batch with the next-token
cross-entropy loss; the ZO steps perturb the model through its `param_hook`. The "plain value_fn"
rows (float32 models) take the generic path a model of one's own takes, `value_fn(params)`
without `param_hook`: a perturbed copy of the tree, or `zojax.in_place_update`. Memory is XLA's
`memory_analysis()`: peak = argument + output - alias + temp. The goal is a ZO step's peak at
most 1.10x the forward's (`jax.jit(loss)`); the first-order row is jax.grad + optax.adam.

    python benchmarks/memory.py [--models smollm2 opt-1.3b] [--batch 16] [--seq 64] \
        [--optimizers mezo lozo lozo-m adamezo] [--samplers gaussian hash threefry] [--horizon 10]
"""

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import optax

import zojax.models
from common import (
    SAMPLERS,
    ZO_OPTIMIZERS,
    Memory,
    environment,
    fo_step,
    lm_loss,
    mb,
    n_params,
    plain_step,
    random_batch,
    table,
    zo_optimizer,
    zo_step,
)
from zojax.models import Model, OPTConfig

GOAL = 1.10  # ZO step peak / forward peak

OPT_1_3B = OPTConfig(
    vocab_size=50272, hidden_size=2048, num_hidden_layers=24, ffn_dim=8192, num_attention_heads=32,
    max_position_embeddings=2048, word_embed_proj_dim=2048,
)


def shapes_of(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def opt_shapes(config: OPTConfig, dtype) -> dict:
    """The parameter tree of `config` as ShapeDtypeStructs: enough to compile, nothing allocated."""
    params = {}
    for t in config.hf_tensors():
        node = params
        for k in t.path[:-1]:
            node = node.setdefault(k, {})
        node[t.path[-1]] = jax.ShapeDtypeStruct(t.shape(config.num_hidden_layers), dtype)
    return params


def models(names):
    """(label, Model with ShapeDtypeStruct params) for each requested model."""
    for name in names:
        if name == "smollm2":
            model = zojax.models.load_default()
            yield "SmolLM2-135M, float32", Model(model.config, shapes_of(model.params))
        else:
            yield "OPT-1.3B-shaped, bfloat16", Model(OPT_1_3B, opt_shapes(OPT_1_3B, jnp.bfloat16))


def compiled_memory(fn, *args) -> Memory:
    """Memory of `fn` jit-compiled with its first two arguments (params, state) donated."""
    donate = (0, 1) if len(args) == 4 else ()
    return Memory.of(jax.jit(fn, donate_argnums=donate).lower(*args).compile())


def measure(model: Model, args) -> tuple[Memory, dict]:
    """The forward's Memory and {(optimizer, sampler): Memory}, the first-order row included."""
    ids, mask = random_batch(model.config.vocab_size, args.batch, args.seq)
    loss = lm_loss(model.apply)
    forward = compiled_memory(loss, model.params, ids, mask)
    rows = {}
    for name in args.optimizers:
        for sampler in args.samplers:
            start = time.perf_counter()
            tx = zo_optimizer(name, sampler, model.stacked, horizon=args.horizon)
            state = jax.eval_shape(tx.init, model.params)
            rows[name, sampler] = compiled_memory(zo_step(tx, loss), model.params, state, ids, mask)
            print(f"  compiled {name} / {sampler} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    if not args.no_generic and all(x.dtype == jnp.float32 for x in jax.tree.leaves(model.params)):
        for name in args.optimizers:
            tx = zo_optimizer(name, "gaussian", model.stacked, horizon=args.horizon)
            state = jax.eval_shape(tx.init, model.params)
            for in_place in (False, True):
                label = f"{name}, plain value_fn" + (", in_place_update" if in_place else "")
                rows[label, "gaussian"] = compiled_memory(plain_step(tx, loss, in_place), model.params, state, ids, mask)
    if not args.no_first_order:
        tx = optax.adam(1e-5)
        rows["first-order adam", "-"] = compiled_memory(
            fo_step(tx, loss), model.params, jax.eval_shape(tx.init, model.params), ids, mask
        )
    return forward, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=("smollm2", "opt-1.3b"), default=["smollm2", "opt-1.3b"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--optimizers", nargs="+", choices=ZO_OPTIMIZERS, default=["mezo", "lozo", "lozo-m", "adamezo"])
    parser.add_argument("--samplers", nargs="+", choices=(*SAMPLERS, "threefry"), default=[*SAMPLERS, "threefry"])
    parser.add_argument("--horizon", type=int, default=10, help="AdaMeZO's horizon")
    parser.add_argument("--no-generic", action="store_true",
                        help="skip the generic path's rows (value_fn without param_hook, float32 models only)")
    parser.add_argument("--no-first-order", action="store_true", help="skip the jax.grad + adam step")
    args = parser.parse_args()

    results = [(label, model, *measure(model, args)) for label, model in models(args.models)]
    print(
        f"Compiled peak memory, batch {args.batch}x{args.seq}, LM loss, params and state donated "
        f"({environment()})\npeak = argument + output - alias + temp (XLA memory_analysis); goal: ZO peak / forward <= {GOAL}"
    )
    for label, model, forward, rows in results:
        print(f"\n{label} ({n_params(model.params) / 1e6:,.0f}M params)\n")
        lines = [["forward (jit of the loss)", "-", *(mb(x) for x in forward), mb(forward.peak), "1.00", "-"]]
        for (name, sampler), m in rows.items():
            ratio = m.peak / forward.peak
            verdict = "-" if sampler == "-" else "met" if ratio <= GOAL else "missed"
            lines.append([name, sampler, *(mb(x) for x in m), mb(m.peak), f"{ratio:.2f}", verdict])
        print(table(["function", "sampler", "argument", "output", "alias", "temp", "peak", "peak / fwd", f"<= {GOAL}"], lines))


if __name__ == "__main__":
    main()
