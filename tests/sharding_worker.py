"""Subprocess side of tests/test_sharding.py: ZO steps of a tiny LLaMA on several placements.

    python tests/sharding_worker.py meshes MODEL_DIR OUT                      # 8 CPU devices
    python tests/sharding_worker.py multihost MODEL_DIR OUT PORT PROCESS_ID   # 1 of 2 processes x 4 devices
    python tests/sharding_worker.py memory OUT                                # 8 CPU devices, compile only

``meshes`` writes OUT.npz: the params after STEPS steps of each optimizer on one device and
on each mesh of MESHES, and of MeZO with ``gather_hook`` on 2x4 and data-parallel only on
8x1x1; and z drawn on one device and on a mesh splitting every matrix 8 ways. OUT.json holds
the collectives of every compiled step. ``multihost`` runs MeZO's steps on a 2x4 mesh
spanning both processes, each feeding only its own rows of the batch; process 0 writes
OUT.npz. Exit code 77: this jaxlib has no gloo CPU collectives.
"""

import collections
import functools
import json
import os
import re
import sys

MODE = sys.argv[1]
# Backend optimisation level 0 halves XLA:CPU's compile time, which is most of these tests' time.
os.environ["XLA_FLAGS"] = (
    f"--xla_force_host_platform_device_count={4 if MODE == 'multihost' else 8} --xla_backend_optimization_level=0"
)

import jax
import jax.experimental.multihost_utils
import jax.numpy as jnp
import numpy as np
import optax

import zojax
import zojax.models
from zojax import perturb
from zojax import sharding as S

STEPS = 5
BATCH, LENGTH = 8, 16
MESHES = ("2,4,1", "2,1,4")  # data x fsdp; data x tensor
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def optimizers(stacked):
    """threefry z for MeZO, the hash sampler for the others (it compiles faster)."""
    common = {"eps": 1e-2, "stacked": stacked, "key": 7}
    return {
        "mezo": zojax.mezo(1e-3, **common),
        "lozo": zojax.lozo(1e-3, rank=2, nu=2, base_sampler="hash", **common),  # V redrawn at steps 0, 2, 4
        "adamezo": zojax.adamezo(1e-4, horizon=3, sampler="hash", **common),  # Adam steps from step 3
    }


def make_batch():
    return np.random.default_rng(0).integers(0, 512, (BATCH, LENGTH)).astype(np.int32)


def load(model_dir, mesh=None):
    if mesh is None:
        return zojax.models.load(model_dir)
    with open(os.path.join(model_dir, "config.json")) as f:
        config = zojax.models.config_from_hf(json.load(f))
    return zojax.models.load(model_dir, sharding=S.loader_sharding(mesh, config=config))


def make_step(model, tx, mesh=None, gather=False):
    """jit(step)(params, state, ids): mean next-token cross-entropy through the model's
    per-layer param_hook; on a mesh the new params keep the rules' shardings."""

    def loss(params, ids, param_hook=None):
        if gather:
            gathered = S.gather_hook(mesh, hook=param_hook)
            # "no rows": the hook alone, so tables are perturbed and gathered whole
            param_hook = (lambda *a: gathered(*a)) if gather == "no rows" else gathered
        logits = model.apply(params, ids, jnp.ones_like(ids), param_hook=param_hook)
        logp = jax.nn.log_softmax(logits[:, :-1])
        return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))

    def step(params, state, ids):
        value_fn = lambda p, param_hook=None: loss(p, ids, param_hook)
        updates, state = tx.update(None, state, params, value_fn=value_fn)
        params = optax.apply_updates(params, updates)
        if mesh is not None:
            params = jax.lax.with_sharding_constraint(params, S.param_shardings(params, mesh))
        return params, state

    return jax.jit(step)


def run_steps(compiled, params, state, ids):
    for _ in range(STEPS):
        params, state = compiled(params, state, ids)
    return params


def collectives(hlo: str) -> list[tuple[str, str, int]]:
    """(op, result shape, executions per call) of every collective in compiled HLO text; an op
    in a loop body counts once per trip (the scan over layers, two_point's loop over ±ε)."""
    comps, entry, name = {}, None, None
    for line in hlo.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            name = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
            entry = name if line.startswith("ENTRY") else entry
            comps[name] = []
        elif name:
            comps[name].append(line)
    callers = collections.defaultdict(list)  # computation -> [(caller, runs per run of the caller)]
    for caller, lines in comps.items():
        for line in lines:
            trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
            for kind, callee in re.findall(r"\b(body|condition|calls|to_apply)=%([\w.\-]+)", line):
                callers[callee].append((caller, int(trips.group(1)) if kind == "body" and trips else 1))
            for branches in re.findall(r"branch_computations=\{([^}]*)\}", line):
                for branch in branches.split(","):
                    callers[branch.strip().lstrip("%")].append((caller, 1))

    @functools.cache
    def runs(comp):
        return 1 if comp == entry else sum(runs(c) * n for c, n in callers[comp])

    ops = "|".join(COLLECTIVES)
    return [
        (m.group(2), m.group(1), runs(comp))
        for comp, lines in comps.items()
        for line in lines
        if (m := re.search(rf"= (\S+(?: \S+)*?) ({ops})(?:-start)?\(", line))
    ]


def flat(prefix, tree):
    return {f"{prefix}/{perturb.path_name(p)}": np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def z_leaves(params):
    """Three of the parameters (fewer leaves compile faster): the embedding and two kernels."""
    layers = params["layers"]
    return {
        "embed_tokens": params["embed_tokens"],
        "layers": {
            "self_attn": {"q_proj": layers["self_attn"]["q_proj"]},
            "mlp": {"down_proj": layers["mlp"]["down_proj"]},
        },
    }


@jax.jit
def draw_z(params):
    """z of three samplers, drawn where the parameters live."""
    samplers = {"gaussian": perturb.Gaussian(), "hash": perturb.HashGaussian(), "lowrank": perturb.LowRank(2, 3)}
    stacked = {"embed_tokens": False, "layers": True}
    return {n: perturb.sample(s, jax.random.PRNGKey(3), 5, params, stacked) for n, s in samplers.items()}


def meshes(model_dir, out):
    assert jax.device_count() == 8, jax.devices()
    ids = make_batch()
    jobs = {}  # name -> (fn, *args)
    for name in ("single", *MESHES, "2,4,1+gather", "8,1,1"):
        spec = name.partition("+")[0]
        mesh = None if name == "single" else S.make_mesh(spec)
        model = load(model_dir, mesh)
        batch = jnp.asarray(ids) if mesh is None else S.shard_batch(ids, mesh)
        for opt, tx in optimizers(model.stacked).items():
            if name in ("single", *MESHES) or opt == "mezo":
                step = make_step(model, tx, mesh, gather=name.endswith("+gather"))
                jobs[f"{opt}/{name}"] = (step, model.params, jax.jit(tx.init)(model.params), batch)
    for name in ("single", "1,2,4"):  # every matrix split over all 8 devices
        model = load(model_dir, None if name == "single" else S.make_mesh(name))
        jobs[f"z/{name}"] = (draw_z, z_leaves(model.params))

    results, report = {}, {}
    for name, (fn, *args) in jobs.items():
        compiled = fn.lower(*args).compile()
        if name.startswith("z/"):
            results |= flat(name, compiled(*args))
            continue
        report[name] = collectives(compiled.as_text())
        params = run_steps(compiled, *args)
        results |= flat(name, params)
        kept = jax.tree.map(lambda x, y: x.sharding.is_equivalent_to(y.sharding, x.ndim), params, args[0])
        assert jax.tree.all(kept), (name, kept)  # the step keeps every parameter where it was
    np.savez(out + ".npz", **results)
    with open(out + ".json", "w") as f:
        json.dump(report, f, indent=1)


def multihost(model_dir, out, port, process_id):
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError) as e:  # an older or stripped-down jaxlib
        print(f"gloo CPU collectives unavailable: {e}", file=sys.stderr)
        sys.exit(77)
    index, count = S.initialize(f"127.0.0.1:{port}", 2, process_id, initialization_timeout=60)
    assert (index, count, jax.device_count(), jax.local_device_count()) == (process_id, 2, 8, 4)
    mesh = S.make_mesh("2,4,1")
    model = load(model_dir, mesh)
    ids = make_batch()
    rows = S.process_rows(mesh, BATCH)
    assert len(rows) == BATCH // 2, rows
    batch = S.shard_process_batch(ids[rows], mesh, BATCH)  # this process's rows only
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    same = jax.jit(lambda a, b: jnp.all(a == b), out_shardings=replicated)
    assert same(batch, S.shard_batch(ids, mesh)), "process-local and global batches differ"
    tx = optimizers(model.stacked)["mezo"]
    params = run_steps(make_step(model, tx, mesh), model.params, jax.jit(tx.init)(model.params), batch)
    gathered = jax.experimental.multihost_utils.process_allgather(params, tiled=True)
    if process_id == 0:
        np.savez(out + ".npz", **flat("mezo/multihost", gathered))
    print(f"process {process_id}: ok, rows {rows.tolist()}")


def memory(out):
    """Compiled per-device temporaries of MeZO steps on an FSDP mesh of 8 devices: without
    gathering, with ``gather_hook``, and with a ``gather_hook`` stripped of its row form, for a
    tied LLaMA whose embedding table (32768 x 64, four chunks of the tied logits) outweighs a
    layer's weights 57 times; written to OUT.json (compile only, nothing runs)."""
    config = zojax.models.LlamaConfig(
        vocab_size=4 * 8192, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=4, head_dim=8, tie_word_embeddings=True,
    )
    model = zojax.models.init(config)
    mesh = S.make_mesh("1,-1,1")
    params = S.place(model.params, S.param_shardings(model.params, mesh))
    ids = S.shard_batch(np.zeros((BATCH, 4), np.int32), mesh)
    tx = optimizers(model.stacked)["mezo"]
    table = params["embed_tokens"]["embedding"]
    report = {"table": table.nbytes, "chunk": table.nbytes // 4,
              "layer": sum(x.nbytes for x in jax.tree.leaves(params["layers"])) // config.num_hidden_layers}
    for name, gather in (("plain", False), ("gather", True), ("gather_without_rows", "no rows")):
        stats = make_step(model, tx, mesh, gather).lower(params, tx.init(params), ids).compile().memory_analysis()
        report[name] = stats.temp_size_in_bytes
    with open(out + ".json", "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    if MODE == "meshes":
        meshes(sys.argv[2], sys.argv[3])
    elif MODE == "memory":
        memory(sys.argv[2])
    else:
        multihost(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
