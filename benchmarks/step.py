"""Time and compiled memory of one jitted zeroth-order step on SmolLM2-135M, against the
forward pass it is built from.

The loss is the next-token cross-entropy of `model.apply(params, ids, mask, param_hook=...)` on
random token ids (float32), so each optimizer perturbs the model layer by layer inside its scan.
An ideal ZO step costs two forward passes: the printed ratio is step / (2 x forward), next to
the goal for that optimizer. Steps are jitted with params and state donated and compiled ahead
of time. Everything is warmed up once, then timed in `--runs` interleaved rounds (one call of
each per round, so that load from other processes hits all alike; medians are printed). The
steps pass one copy of the parameters to each other (learning rate 1e-7). AdaMeZO's state is
advanced past its `horizon` plain-MeZO steps, so the timed steps build the Adam moments. Memory
comes from XLA's `memory_analysis()` of the same compiled steps; the first-order row is
jax.grad + optax.adam. One table holds every step: time, step / (2 x forward) against its goal,
and compiled peak / forward.

`--generic` adds MeZO through the generic path a model of one's own takes (`value_fn(params)`
without `param_hook`): on a perturbed copy of the tree, and with `zojax.in_place_update`.
`--torch-threads N [N ...]` adds MeZO's PyTorch reference step (`vs_torch.TorchMeZO`,
transformers' LLaMA with the same weights) with N threads, in the same rounds.

    python benchmarks/step.py [--batch 16] [--seq 64] [--runs 5] \
        [--optimizers mezo lozo lozo-m adamezo adamezo-lowrank] [--samplers gaussian hash] \
        [--horizon 10] [--no-first-order] [--breakdown] [--generic] [--torch-threads 1]

`--breakdown` also times, in the same rounds and per kind of direction, z generated and added to
every leaf (in place, as a MeZO update does), the sum of h z added in one pass (an AdaMeZO
update's replay) and one forward pass perturbed through the hook. It splits each step into two
perturbed forwards and the rest (the update), and its `parts` column is the step's ratio as the
sum of those parts timed alone: two perturbed forward passes and the update's draws of z.
"""

import argparse
import sys

import jax
import jax.numpy as jnp
import optax

import zojax
import zojax.models
from common import (
    SAMPLERS,
    ZO_OPTIMIZERS,
    Memory,
    SharedSteps,
    compile_step,
    environment,
    fo_step,
    interleaved_medians,
    lm_loss,
    mb,
    n_params,
    past_warmup,
    random_batch,
    table,
    zo_optimizer,
    plain_step,
    zo_step,
)

# step / (2 x forward) the library aims for, with the exact Gaussian; with `hash` z every method 1.05.
GOALS = {"mezo": 1.15, "lozo": 1.05, "lozo-m": 1.05, "adamezo": 1.3, "adamezo-lowrank": 1.05}


def goal(optimizer: str, sampler: str):
    if sampler == "hash" and optimizer in GOALS:
        return 1.05
    return GOALS.get(optimizer)


def direction_kind(optimizer: str, sampler: str):
    """A label and the sampler of the z that the optimizer's two forward passes use."""
    base = zojax.perturb.get_sampler(sampler)
    if optimizer.startswith("lozo") or optimizer.endswith("lowrank"):
        return f"low-rank {sampler}", zojax.LowRank(2, 50, base)
    return f"dense {sampler}", base


def parts_runners(model, loss, ids, mask, sampler, horizon: int, shared: SharedSteps) -> dict:
    """No-argument functions timing the parts of a step, by label: `z` adds z to every leaf in
    place (`perturb` with a scale of 0 passed at run time, on the shared donated params: the work
    of a MeZO update); `replay` adds the sum of `horizon` z of different counters in one pass (the
    work of an AdaMeZO update); `perturbed` is one forward pass perturbed through the hook."""
    key = zojax.perturb.as_key(0)

    def add_z(params, scale, ids, mask):
        return zojax.perturb.perturb(params, sampler, key, 0, scale, model.stacked), scale

    def add_replay(params, scale, ids, mask):
        def one(k, p):
            return p + scale * sum(sampler(k, i, p.shape) for i in range(horizon))

        return zojax.perturb.for_each_leaf(one, key, params, model.stacked), scale

    hook = zojax.perturb.make_param_hook(sampler, key, 0, 1e-3)
    perturbed = jax.jit(lambda p: loss(p, ids, mask, param_hook=hook))
    return {
        "z": shared.add(compile_step(add_z, model.params, jnp.float32(0), ids, mask), jnp.float32(0)),
        "replay": shared.add(compile_step(add_replay, model.params, jnp.float32(0), ids, mask), jnp.float32(0)),
        "perturbed": lambda: perturbed(model.params).block_until_ready(),
    }


def parts(optimizer: str, seconds: dict, kind: str, forward_s: float) -> float:
    """The step / (2 x forward) of the step's parts timed alone: its two perturbed forward passes
    and its update's regeneration of z (MeZO, LOZO: one z; AdaMeZO: the replay of h)."""
    update = seconds[f"replay: {kind}"] if optimizer.startswith("adamezo") else seconds[f"z: {kind}"]
    return (2 * seconds[f"perturbed: {kind}"] + update) / (2 * forward_s)


def torch_reference(model, ids, mask, threads: int):
    """A no-argument function running one step of MeZO's PyTorch reference with `threads` threads."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM

    from vs_torch import TorchMeZO

    with tempfile.TemporaryDirectory() as d:
        zojax.models.save_hf(model, model.params, d)
        hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval().requires_grad_(False)
    reference, t_ids, t_mask = TorchMeZO(hf, 1e-7, 1e-3), torch.from_numpy(ids).long(), torch.from_numpy(mask).long()
    default = torch.get_num_threads()

    def step():
        torch.set_num_threads(threads)
        reference.step(t_ids, t_mask)
        torch.set_num_threads(default)

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--optimizers", nargs="+", choices=ZO_OPTIMIZERS, default=list(ZO_OPTIMIZERS))
    parser.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    parser.add_argument("--horizon", type=int, default=10, help="AdaMeZO's horizon")
    parser.add_argument("--no-first-order", action="store_true", help="skip the jax.grad + adam step")
    parser.add_argument("--breakdown", action="store_true", help="also time z generation and one perturbed forward")
    parser.add_argument("--generic", action="store_true", help="also MeZO through a plain value_fn: copy and in place")
    parser.add_argument("--torch-threads", type=int, nargs="*", default=[], help="also MeZO's PyTorch reference step")
    args = parser.parse_args()

    model = zojax.models.load_default()
    ids, mask = random_batch(model.config.vocab_size, args.batch, args.seq)
    loss = lm_loss(model.apply)

    forward = jax.jit(loss).lower(model.params, ids, mask).compile()
    forward_mem = Memory.of(forward)
    runners = {"forward": lambda: forward(model.params, ids, mask).block_until_ready()}
    shared = SharedSteps(model.params, ids, mask)
    memory = {}  # (optimizer, sampler) -> Memory
    for name in args.optimizers:
        for sampler in args.samplers:
            tx = zo_optimizer(name, sampler, model.stacked, horizon=args.horizon)
            compiled = compile_step(zo_step(tx, loss), model.params, tx.init(model.params), ids, mask)
            runners[f"{name} / {sampler}"] = shared.add(compiled, past_warmup(tx.init(model.params)))
            memory[name, sampler] = Memory.of(compiled)
            print(f"  compiled {name} / {sampler}", file=sys.stderr, flush=True)
    if args.generic:
        tx = zo_optimizer("mezo", "gaussian", model.stacked)
        for label, in_place in (("mezo, plain value_fn (copy)", False), ("mezo, plain value_fn, in_place_update", True)):
            compiled = compile_step(plain_step(tx, loss, in_place), model.params, tx.init(model.params), ids, mask)
            runners[f"{label} / gaussian"] = shared.add(compiled, tx.init(model.params))
            memory[label, "gaussian"] = Memory.of(compiled)
    if not args.no_first_order:
        tx = optax.adam(1e-5)
        compiled = compile_step(fo_step(tx, loss), model.params, tx.init(model.params), ids, mask)
        runners["first-order adam / -"] = shared.add(compiled, tx.init(model.params))
        memory["first-order adam", "-"] = Memory.of(compiled)
    for n in args.torch_threads:
        runners[f"PyTorch reference MeZO, {n} thread{'s' * (n > 1)} / torch.normal"] = torch_reference(model, ids, mask, n)
    kinds = dict(direction_kind(n, s) for n in args.optimizers for s in args.samplers) if args.breakdown else {}
    for kind, sampler in kinds.items():
        for part, run in parts_runners(model, loss, ids, mask, sampler, args.horizon, shared).items():
            runners[f"{part}: {kind}"] = run

    seconds = interleaved_medians(runners, args.runs)
    forward_s = seconds["forward"]

    print(
        f"SmolLM2-135M ({n_params(model.params) / 1e6:.1f}M params), batch {args.batch}x{args.seq}, float32, "
        f"LM loss, median of {args.runs} interleaved rounds ({environment()})"
    )
    print(f"\nforward (jit, no hook): {forward_s:.3f} s; an ideal ZO step is 2 x forward = {2 * forward_s:.3f} s\n")
    rows = []
    mezo_s = seconds.get("mezo / gaussian")
    for label, t in seconds.items():
        if label == "forward" or label.startswith(("z: ", "replay: ", "perturbed: ")):
            continue
        name, sampler = label.rsplit(" / ", 1)
        mem = memory.get((name, sampler))
        ratio = t / (2 * forward_s)
        aim = goal(name, sampler)
        verdict = "-" if aim is None else "met" if ratio <= aim else f"missed by {ratio / aim - 1:.0%}"
        zo = sampler != "-"
        row = [name, sampler, f"{t:.3f}", f"{ratio:.2f}" if zo else f"({ratio:.2f})", f"<= {aim}" if aim else "-", verdict,
               f"{mem.peak / forward_mem.peak:.2f}" if mem else "-"]
        if kinds:
            kind = direction_kind(name, sampler)[0] if name in args.optimizers else None
            if kind in kinds:
                row += [f"{t - 2 * seconds['perturbed: ' + kind]:.3f}", f"{parts(name, seconds, kind, forward_s):.2f}"]
            else:
                row += ["-", "-"]
        rows.append(row)
    print(table(["step", "sampler", "time s", "step / 2 fwd", "goal", "vs goal", "peak / fwd", *(["rest s", "parts"] if kinds else [])], rows))
    print(f"  (peak: XLA memory_analysis, argument + output - alias + temp; the forward's is {mb(forward_mem.peak)})")
    if mezo_s:
        for label, t in seconds.items():
            if label.startswith("PyTorch"):
                print(f"  {label.rsplit(' / ', 1)[0]}: {t / mezo_s:.2f}x zojax's MeZO step (gaussian)")
    if kinds:
        print("  (rest s = step - 2 x its perturbed forward below: the update, z regenerated and applied)")
        print(
            "  (parts = (2 x perturbed fwd s + the update's z s, or replay s for AdaMeZO) / (2 x forward): the "
            "step's parts, timed alone below)"
        )

    if kinds:
        print(
            "\nparts of a step, timed in the same rounds (z s: z generated and added to every leaf in place; "
            f"replay s: the sum of {args.horizon} z added in one pass)\n"
        )
        rows = []
        for kind in kinds:
            z_s, replay_s, perturbed_s = (seconds[f"{part}: {kind}"] for part in ("z", "replay", "perturbed"))
            rows.append([kind, f"{z_s:.3f}", f"{z_s / forward_s:.2f}", f"{replay_s:.3f}", f"{perturbed_s:.3f}",
                         f"{perturbed_s / forward_s:.2f}"])
        print(table(["direction", "z s", "z / fwd", "replay s", "perturbed fwd s", "perturbed / fwd"], rows))


if __name__ == "__main__":
    main()
