"""Device meshes, parameter and batch placement, and multi-host start-up.

    mesh = zojax.sharding.make_mesh("1,-1,1")           # axes (data, fsdp, tensor); -1: the rest
    model = zojax.models.load(path, "bfloat16", sharding=zojax.sharding.loader_sharding(mesh))
    batch = zojax.sharding.shard_batch(batch, mesh)     # rows split over ("data", "fsdp")
    step = jax.jit(step)                                # partitioned from its inputs' shardings

A jitted step over sharded inputs is partitioned by XLA's SPMD partitioner; the optimizers
need no change, and they do not depend on the mesh: z is a function of the key, the
parameter's path and its logical (global) shape, and with ``jax_threefry_partitionable`` (on
by default) each device generates only its own slice of it. So a zeroth-order step sends no
gradients: what crosses the network is the two forward passes' own traffic.

Parameters carry logical axis names, declared by the modules that own them (``"vocab"``,
``"embed"``, ``"heads"``, ``"mlp"``, ``"layers"``, ...; see ``zojax.models.nn``). One rules
table, :data:`LOGICAL_RULES`, maps each name to mesh axes (a name it does not list is
replicated), so every family shards alike and a new family needs no rules. Every sharded axis
must divide evenly; problems are reported for the whole tree at once.

On several hosts, call :func:`initialize` first, on every host, before anything touches a
device; the mesh then spans every host's devices, and :func:`shard_batch` (the same global
batch on every host) or :func:`shard_process_batch` (each host its own rows) builds the
global batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from zojax.perturb import path_name

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# Megatron-style tensor parallelism: "column" kernels [embed, heads|mlp] split their outputs over
# "tensor", "row" kernels [heads|mlp, embed] their inputs, so each attention block and MLP needs
# one all-reduce of activations; the vocabulary is split over "tensor" too. FSDP splits the model
# width of every matrix, which divides evenly for every published size. Everything else (norms,
# biases, the layer axis, adapters) is replicated.
LOGICAL_RULES: Rules = (
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
)


# ---------------------------------------------------------------------------------------
# Meshes


def parse_mesh(spec: str | Sequence[int]) -> list[int]:
    """The three sizes of a mesh spec (``"1,-1,1"``), -1 kept; ``ValueError`` on a malformed one.
    Needs no devices, so configs are checked before anything starts."""
    try:
        sizes = [int(s) for s in (spec.split(",") if isinstance(spec, str) else spec)]
    except ValueError:
        raise ValueError(f"mesh must be three comma-separated integers for {AXES}, got {spec!r}") from None
    if len(sizes) != len(AXES) or any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
        raise ValueError(f"mesh must be three sizes >= 1 for {AXES}, at most one of them -1, got {spec!r}")
    return sizes


def mesh_shape(spec: str | Sequence[int], num_devices: int) -> tuple[int, int, int]:
    """The (data, fsdp, tensor) sizes of ``spec`` (``"1,-1,1"``: one -1 takes the rest) on
    ``num_devices`` devices; ``ValueError`` unless their product is ``num_devices``."""
    sizes = parse_mesh(spec)
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"mesh {spec!r}: the other axes' product {known} does not divide {num_devices} devices")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh {spec!r} has {math.prod(sizes)} devices ({' x '.join(map(str, sizes))}) but there are "
            f"{num_devices}; make the product {num_devices} or use -1 for one axis"
        )
    return tuple(sizes)


def make_mesh(spec: str | Sequence[int] = "1,-1,1", devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh with axes ``("data", "fsdp", "tensor")`` over ``devices`` (default: every device
    of every process), e.g. ``"1,-1,1"`` (FSDP over all), ``"2,4,1"``, ``"1,-1,8"``."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(spec, len(devices))
    return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES), devices=devices)


# ---------------------------------------------------------------------------------------
# Parameters


def _names(entry) -> tuple[str, ...]:
    """The mesh axes of one PartitionSpec entry (None, a name, or a tuple of names)."""
    return tuple(n for n in (entry if isinstance(entry, tuple) else (entry,)) if n is not None)


def _logical_axes(tree):
    """The logical axis names that the modules declare for each leaf of ``tree``."""
    from zojax.models.registry import logical_axes  # the models declare them; no model names here

    return logical_axes(tree)


def _specs(rows: Sequence[tuple[str, tuple[int, ...], tuple]], mesh: Mesh, rules: Rules | None) -> list[P]:
    """One PartitionSpec per (path, shape, logical names); one ValueError listing every problem."""
    table = dict(LOGICAL_RULES if rules is None else rules)
    specs, problems = [], []
    for path, shape, names in rows:
        spec = P(*(table.get(n) if n is not None else None for n in names))
        if len(spec) != len(shape):
            problems.append(f"  {path} {shape}: logical axes {names} do not match its rank")
        for axis, (dim, entry) in enumerate(zip(shape, spec)):
            if unknown := [n for n in _names(entry) if n not in mesh.shape]:
                problems.append(f"  {path}: {names[axis]!r} -> {unknown}, not axes of the mesh {dict(mesh.shape)}")
            elif dim % (ways := math.prod(mesh.shape[n] for n in _names(entry))):
                problems.append(
                    f"  {path} {shape}: axis {axis} ({names[axis]!r}, size {dim}) is not divisible by mesh axes "
                    f"{entry!r} (size {ways})"
                )
        specs.append(spec)
    if problems:
        raise ValueError("cannot place the parameters on the mesh:\n" + "\n".join(problems))
    return specs


def param_shardings(tree, mesh: Mesh, rules: Rules | None = None, axes=None):
    """A tree of ``NamedSharding`` like ``tree`` (model parameters or ``zojax.peft`` adapters:
    arrays or anything with ``.shape``), from each leaf's logical axis names (``axes``, a
    matching tree; default: what the model's modules declare) through ``rules`` (default
    :data:`LOGICAL_RULES`). Place existing params with ``place(params, param_shardings(params, mesh))``."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    names = treedef.flatten_up_to(_logical_axes(tree) if axes is None else axes)
    specs = _specs([(path_name(p), tuple(x.shape), n) for (p, x), n in zip(leaves, names)], mesh, rules)
    return treedef.unflatten([NamedSharding(mesh, s) for s in specs])


def state_shardings(state, params, shardings):
    """Shardings for an optimizer ``state`` of ``params`` placed on ``shardings`` (a matching
    tree): every subtree of the state with the structure and shapes of ``params`` (moments)
    takes ``shardings``, every other leaf (keys, counters, scalars, low-rank factors) is
    replicated over the same devices.

    Placing the initial state on these, and constraining the step's new state to them, makes
    the step's inputs and outputs share shardings: it compiles once, not once more at step 1
    when the state comes back committed."""
    treedef = jax.tree.structure(params)
    shapes = [np.shape(x) for x in jax.tree.leaves(params)]
    first = jax.tree.leaves(shardings)[0]
    replicated = NamedSharding(first.mesh, P()) if isinstance(first, NamedSharding) else first
    like_params = lambda x: jax.tree.structure(x) == treedef and [np.shape(y) for y in jax.tree.leaves(x)] == shapes
    return jax.tree.map(lambda x: shardings if like_params(x) else replicated, state, is_leaf=like_params)


def init_state(tx, params, shardings):
    """``(tx.init(params), state_shardings)``: the optimizer state created on
    :func:`state_shardings`, for a step that constrains its new state to the same."""
    placed = state_shardings(jax.eval_shape(tx.init, params), params, shardings)
    return jax.jit(tx.init, out_shardings=placed)(params), placed


def loader_sharding(mesh: Mesh, rules: Rules | None = None, config=None) -> Callable[[str, tuple], NamedSharding]:
    """``sharding(path, shape)`` for ``zojax.models.load(..., sharding=...)``: each device reads
    only its slice of the checkpoint. With the model's ``config`` every parameter is checked up
    front; without it each is checked as it is loaded."""
    if config is not None:
        tree = {}
        for t in config.hf_tensors():
            tree = _merge(tree, _nest(t.path, jax.ShapeDtypeStruct(t.shape(config.num_hidden_layers), np.float32)))
        param_shardings(tree, mesh, rules)  # every problem at once, before anything is read

    def sharding(path: str, shape: tuple[int, ...]) -> NamedSharding:
        leaf = _nest(path.split("/"), jax.ShapeDtypeStruct(tuple(shape), np.float32))
        return jax.tree.leaves(param_shardings(leaf, mesh, rules))[0]

    return sharding


def _nest(keys: Sequence[str], value) -> dict:
    for k in reversed(keys):
        value = {k: value}
    return value


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and k in out else v
    return out


def _without(entry, axes: Sequence[str]):
    """A PartitionSpec entry with the mesh axes ``axes`` removed."""
    kept = [a for a in _names(entry) if a not in axes]
    return None if not kept else kept[0] if len(kept) == 1 else tuple(kept)


def gather_hook(mesh: Mesh, rules: Rules | None = None, hook=None, axes: Sequence[str] = ("fsdp",)):
    """A model ``param_hook`` that applies ``hook`` (the optimizer's perturbation, which then
    runs on each device's own shard) and all-gathers each weight over mesh ``axes`` where it is
    used, one layer at a time inside the model's scan: FSDP proper, the batch staying split.

    Without it XLA's partitioner chooses for itself; for the small batches of ZO fine-tuning it
    keeps FSDP-sharded weights in place and all-reduces activations instead, which moves fewer
    bytes (see the README's table). Usage, with a model that takes ``param_hook``::

        value_fn = lambda p, param_hook=None: loss(p, batch, gather_hook(mesh, hook=param_hook))
    """

    def gathered(path, subtree, layer=None):
        if hook is not None:
            subtree = hook(path, subtree, layer)
        # A layer's slice is named as its stacked parameter is, without the leading layer axis.
        stacked = jax.tree.map(lambda x: jax.ShapeDtypeStruct((1,) * (layer is not None) + x.shape, x.dtype), subtree)
        shardings = jax.tree.leaves(param_shardings(_nest(path, stacked), mesh, rules))
        leaves, treedef = jax.tree.flatten(subtree)
        return treedef.unflatten([
            jax.lax.with_sharding_constraint(
                x, NamedSharding(mesh, P(*(_without(e, axes) for e in s.spec[len(s.spec) - x.ndim :])))
            )
            for x, s in zip(leaves, shardings)
        ])

    def rows(path, subtree, ids):
        """Rows `ids` of each leaf, through `hook`'s row form, gathered over mesh ``axes``: a
        model reads its embedding tables this way, so only the rows it uses are perturbed and
        moved, never the whole table (the rows' leading axes keep whatever sharding they get)."""
        picked = hook.rows(path, subtree, ids) if hook is not None and hasattr(hook, "rows") else (
            jax.tree.map(lambda x: x[ids], subtree))
        shardings = jax.tree.leaves(param_shardings(_nest(path, subtree), mesh, rules))
        leaves, treedef = jax.tree.flatten(picked)
        return treedef.unflatten([
            jax.lax.with_sharding_constraint(x, NamedSharding(
                mesh, P(*(P.UNCONSTRAINED,) * (x.ndim - len(s.spec) + 1), *(_without(e, axes) for e in s.spec[1:]))
            ))
            for x, s in zip(leaves, shardings)
        ])

    gathered.rows = rows
    return gathered


# ---------------------------------------------------------------------------------------
# Batches


def _batch_sharding(mesh: Mesh, axes: Sequence[str], ndim: int) -> NamedSharding:
    return NamedSharding(mesh, P(tuple(axes) or None, *[None] * (ndim - 1)) if ndim else P())


def _check_rows(tree, mesh: Mesh, axes: Sequence[str], rows: int | None = None) -> None:
    ways = math.prod(mesh.shape[a] for a in axes)
    bad = [
        f"{path_name(p) or 'batch'} {tuple(np.shape(x))}"
        for p, x in jax.tree_util.tree_leaves_with_path(tree)
        if (np.ndim(x) == 0 and ways > 1) or (np.ndim(x) and (rows or np.shape(x)[0]) % ways)
    ]
    if bad:
        raise ValueError(
            f"the batch's leading dimension must be divisible by the {ways} devices of mesh axes {tuple(axes)} "
            f"({dict(mesh.shape)}); not so for: {', '.join(bad)}. Change the batch size or the mesh."
        )


def shard_batch(batch, mesh: Mesh, axes: Sequence[str] = BATCH_AXES):
    """Global arrays from a host batch (any pytree of arrays), split along axis 0 over mesh
    ``axes`` (``()``: replicated). On several processes every process passes the same global
    batch and transfers only the rows its devices hold."""
    _check_rows(batch, mesh, axes)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, _batch_sharding(mesh, axes, x.ndim), lambda index: x[index])

    return jax.tree.map(put, batch)


def process_rows(mesh: Mesh, batch_size: int, axes: Sequence[str] = BATCH_AXES) -> np.ndarray:
    """The (sorted) rows of a global batch of ``batch_size`` that this process's devices hold:
    what it must pass to :func:`shard_process_batch`."""
    _check_rows(np.empty((batch_size,)), mesh, axes)
    index = _batch_sharding(mesh, axes, 1).addressable_devices_indices_map((batch_size,))
    return np.unique(np.concatenate([np.arange(batch_size)[i] for i in index.values()]))


def shard_process_batch(local_batch, mesh: Mesh, batch_size: int, axes: Sequence[str] = BATCH_AXES):
    """Global arrays of ``batch_size`` rows from each process's own rows, ``global[process_rows(...)]``
    (any pytree of arrays), split along axis 0 over mesh ``axes``."""
    _check_rows(local_batch, mesh, axes, rows=batch_size)
    mine = len(process_rows(mesh, batch_size, axes))

    def put(x):
        x = np.asarray(x)
        if x.shape[0] != mine:
            raise ValueError(f"this process holds {mine} of the {batch_size} rows; its local batch has {x.shape[0]}")
        sharding = _batch_sharding(mesh, axes, x.ndim)
        return jax.make_array_from_process_local_data(sharding, x, (batch_size, *x.shape[1:]))

    return jax.tree.map(put, local_batch)


# ---------------------------------------------------------------------------------------
# Several hosts


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, **kwargs) -> tuple[int, int]:
    """Join the processes of a multi-host run (``jax.distributed.initialize``); call it on every
    host before anything runs on a device. Returns ``(process_index, process_count)``.

    With no arguments the cluster is detected (Cloud TPU VMs, SLURM, ...). Elsewhere give
    ``coordinator_address="host:port"`` (process 0's address), ``num_processes`` and this
    ``process_id``. On CPU, collectives go over gloo. ``kwargs`` go to
    ``jax.distributed.initialize`` (e.g. ``initialization_timeout`` in seconds).
    """
    if not jax.distributed.is_initialized():
        if jax.config.jax_cpu_collectives_implementation in (None, "none"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)
    return jax.process_index(), jax.process_count()


def shard_rows(batch, mesh: Mesh, axes: Sequence[str] = BATCH_AXES):
    """Like :func:`shard_batch`, but each array whose leading dimension does not divide over
    ``axes`` (a short last batch, per-example fields of a candidate-row batch) is replicated
    instead of refused. Every process passes the same global batch."""
    ways = math.prod(mesh.shape[a] for a in axes)
    split = lambda x: np.ndim(x) > 0 and np.shape(x)[0] % ways == 0
    return jax.tree.map(lambda x: shard_batch(x, mesh, axes if split(x) else ()), batch)


def place(tree, shardings):
    """``tree`` put on ``shardings`` (a matching tree). Arrays that already span several
    processes are resharded; host values and single-process arrays, which must be the same on
    every process, are copied slice by slice onto each process's own devices."""

    def put(x, s):
        if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
            return jax.device_put(x, s)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda index: x[index])

    return jax.tree.map(put, tree, shardings)


def to_host(tree):
    """numpy copies of a tree of arrays; arrays split over several processes are gathered
    (a collective: every process must call it)."""
    from jax.experimental import multihost_utils

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(get, tree)
