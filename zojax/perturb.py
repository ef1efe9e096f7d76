"""Perturbation directions z, regenerated from a key instead of stored.

Every parameter leaf gets its own key, ``leaf_key = fold_in(key, crc32(path))``, where
``path`` is the leaf's ``/``-joined pytree path (``"layers/attn/q/kernel"``). The key
depends on the name only, so the same z comes back whether the tree is masked by
``optax.masked``, extended with adapters, or sharded over any mesh.

A sampler maps ``(leaf_key, counter, shape)`` to a float32 array; ``counter`` is the
optimizer's step counter (MeZO with several directions uses ``step * q + j``). The named
samplers (``SAMPLERS``) other than ``"threefry"`` are counter-based: z at flat element index
n is a pure function of ``(leaf_key, counter, n)``, so XLA fuses its generation into the
perturbed weight or the in-place update, and a sampler's ``rows`` method draws only some
rows of a leaf (an embedding lookup's, a chunk of the tied unembedding's).

Stacked leaves: a leaf whose leading axis indexes layers (a scanned model keeps its
layers as ``(L, ...)`` arrays) is sampled slice by slice, slice ``l`` from
``fold_in(leaf_key, l)``. A model can therefore regenerate layer ``l``'s slice inside its
scan body (see :func:`make_param_hook`) and get exactly the z of the whole-tree sampler.
Which leaves are stacked is given by ``stacked``: ``None`` (none), a pytree prefix of
bools (``{"layers": True, "embed": False}``, what ``zojax.models.Model.stacked`` holds),
or a callable ``path -> bool``.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp

PyTree = Any
Stacked = None | PyTree | Callable[[str], bool]


class Sampler(Protocol):
    """Regenerates z for one (unstacked) leaf: ``sampler(leaf_key, counter, shape)``. A sampler
    may also have ``rows(leaf_key, counter, shape, rows)``, some rows of the same z drawn alone
    (see :func:`sample_rows`), and ``elementwise = True`` (see :func:`is_elementwise`)."""

    def __call__(self, key: jax.Array, counter: jax.Array, shape: tuple[int, ...]) -> jax.Array: ...


class ParamHook(Protocol):
    """What a model does to its parameters where it uses them: the optimizer's perturbation
    (:func:`make_param_hook`), a sharding constraint (``zojax.sharding.gather_hook``), or both.

    ``hook(path, subtree, layer)`` returns ``subtree`` as the model should use it: ``path`` is the
    tuple of keys from the root of the parameter tree to ``subtree``, ``layer`` is ``None`` for an
    unstacked subtree or the (traced) int32 index when ``subtree`` is one layer's slice of a
    stacked subtree. A hook may also have ``rows(path, subtree, ids)``: rows ``ids`` (an int
    array) of each leaf of the (unstacked) ``subtree``, as ``hook`` would turn them, computed
    for those rows only; models read embedding tables through it.

    A value function takes a hook through a ``param_hook`` keyword (see
    ``zojax.estimate.takes_param_hook``).
    """

    def __call__(self, path: tuple[str, ...], subtree: PyTree, layer: jax.Array | None = None) -> PyTree: ...


# ---------------------------------------------------------------------------------------
# Keys and leaf bookkeeping


def as_key(key: int | jax.Array) -> jax.Array:
    """A raw ``uint32[2]`` threefry key from an int seed or an existing key."""
    key = jnp.asarray(key)
    if key.shape == () and jnp.issubdtype(key.dtype, jnp.integer):
        return jax.random.PRNGKey(key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    if key.shape != (2,) or key.dtype != jnp.uint32:
        raise ValueError(f"key must be an int seed or a uint32[2] PRNG key, got {key.dtype}{list(key.shape)}")
    return key


def _entry_name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def path_name(path) -> str:
    """``("layers", "mlp", "kernel")``-style key path -> ``"layers/mlp/kernel"``."""
    return "/".join(_entry_name(e) for e in path)


def leaf_key(key: jax.Array, name: str) -> jax.Array:
    """The key of the leaf called ``name``: ``fold_in(key, crc32(name))``."""
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def stack_flags(stacked: Stacked, tree: PyTree) -> list[bool]:
    """One bool per leaf of ``tree`` (in ``tree_leaves`` order): is its axis 0 a layer axis."""
    paths = [path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
    if stacked is None:
        return [False] * len(paths)
    if callable(stacked):
        return [bool(stacked(p)) for p in paths]
    try:
        flags = jax.tree.map(lambda s, sub: jax.tree.map(lambda _: bool(s), sub), stacked, tree)
    except ValueError as e:
        raise ValueError(f"stacked must be a pytree prefix of the parameters: {e}") from None
    return jax.tree.leaves(flags)


# ---------------------------------------------------------------------------------------
# Samplers


def _fmix32(x: jax.Array) -> jax.Array:
    """The murmur3 32-bit finaliser: a bijective avalanche mix of uint32 values."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def row_indices(shape, rows) -> jax.Array:
    """Flat (row-major) indices, as uint32, of rows ``rows`` (any int array) of an array of
    ``shape``: shape ``rows.shape + shape[1:]``."""
    width = math.prod(shape[1:])
    index = jnp.asarray(rows).astype(jnp.uint32)[..., None] * jnp.uint32(width) + jax.lax.iota(jnp.uint32, width)
    return index.reshape(*jnp.shape(rows), *shape[1:])


class CounterSampler:
    """A sampler whose z at flat element index n is ``transform(bits(key, counter, n))``, with
    ``bits = fmix32(fmix32(n ^ k0) + k1)`` and ``(k0, k1) = fold_in(key, counter)``.

    z is a pure elementwise function of the index, so XLA fuses its generation into the
    consumer (a perturbed weight, an in-place update) instead of materialising it, any
    subset of elements can be drawn alone (:meth:`rows`), and under SPMD partitioning each
    device draws its own elements by their global index.
    """

    elementwise = True

    def transform(self, bits: jax.Array) -> jax.Array:
        raise NotImplementedError

    def at(self, key, counter, index: jax.Array) -> jax.Array:
        """z at the uint32 flat indices ``index`` (any shape)."""
        k0, k1 = jax.random.fold_in(key, counter)
        return self.transform(_fmix32(_fmix32(index ^ k0) + k1))

    def __call__(self, key, counter, shape):
        return self.at(key, counter, jax.lax.iota(jnp.uint32, math.prod(shape))).reshape(shape)

    def rows(self, key, counter, shape, rows):
        """``self(key, counter, shape)[rows]`` without drawing the other rows."""
        return self.at(key, counter, row_indices(shape, rows))


# Giles (2010), "Approximating the erfinv function", single precision: erfinv(x) = x·p(w),
# w = −log(1 − x²), p a polynomial in w − 2.5 (w < 5) or in √w − 3 (w >= 5), highest power first.
_ERFINV_CENTRAL = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
                   -0.00125372503, -0.00417768164, 0.246640727, 1.50140941)
_ERFINV_TAIL = (-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
                -0.0076224613, 0.00943887047, 1.00167406, 2.83297682)


@dataclasses.dataclass(frozen=True)
class Gaussian(CounterSampler):
    """z ~ N(0, I) from a counter-based hash: x uniform on (−1, 1) from 32 hashed bits (sign and
    31-bit magnitude), z = √2 erfinv(x) (Giles 2010), the transform ``jax.random.normal``
    applies to threefry bits. Relative error below 4e-7 for |z| < 5 (below 4e-4 out to the
    largest value, 6.34); several times faster than threefry on CPU, and fused into its
    consumer (see :class:`CounterSampler`)."""

    def transform(self, bits):
        magnitude = bits & jnp.uint32(0x7FFFFFFF)
        # |x| and 1 − |x| both computed from integers, so neither loses precision.
        x = ((jnp.uint32(0x7FFFFFFF) - magnitude).astype(jnp.float32) + 0.5) * jnp.float32(2.0**-31)
        v = (magnitude.astype(jnp.float32) + 0.5) * jnp.float32(2.0**-31)
        w = -jnp.log(v * (2.0 - v))
        central, tail = w - 2.5, jnp.sqrt(w) - 3.0
        p, q = jnp.float32(_ERFINV_CENTRAL[0]), jnp.float32(_ERFINV_TAIL[0])
        for a, b in zip(_ERFINV_CENTRAL[1:], _ERFINV_TAIL[1:]):
            p, q = p * central + a, q * tail + b
        z = jnp.float32(math.sqrt(2.0)) * jnp.where(w < 5.0, p, q) * x
        return jnp.where((bits >> 31) == 1, -z, z)


@dataclasses.dataclass(frozen=True)
class Threefry:
    """z ~ N(0, I) from ``jax.random.normal`` (threefry bits): the slowest sampler on CPU, and
    XLA materialises its z instead of fusing it into the consumer."""

    def __call__(self, key, counter, shape):
        return jax.random.normal(jax.random.fold_in(key, counter), shape, jnp.float32)


@dataclasses.dataclass(frozen=True)
class HashGaussian(CounterSampler):
    """Approximately Gaussian z from a counter-based hash: the sum of the four bytes of the
    hashed bits, standardised (mean 0, variance 1, bounded by ±3.45). E[z zᵀ] = I holds,
    which is all the two-point estimator needs; the cheapest sampler after Rademacher."""

    def transform(self, bits):
        total = sum(((bits >> s) & jnp.uint32(0xFF)).astype(jnp.int32) for s in (0, 8, 16, 24))
        return (total.astype(jnp.float32) - 510.0) * (1.0 / math.sqrt(4 * (256**2 - 1) / 12))


@dataclasses.dataclass(frozen=True)
class Rademacher(CounterSampler):
    """z with independent ±1 entries from a counter-based hash (the top bit)."""

    def transform(self, bits):
        return jnp.where((bits >> 31) == 1, 1.0, -1.0).astype(jnp.float32)


def is_elementwise(sampler: Sampler) -> bool:
    """Whether XLA can fuse ``sampler``'s z into its consumer (a counter-based sampler, or
    :class:`LowRank` over one), so that a sum of many z costs no memory."""
    return bool(getattr(sampler, "elementwise", False))


def sample_rows(sampler: Sampler, key, counter, shape, rows) -> jax.Array:
    """``sampler(key, counter, shape)[rows]``: only those rows are drawn when the sampler has a
    ``rows`` method (counter-based samplers, :class:`LowRank`); otherwise all of z is."""
    if hasattr(sampler, "rows"):
        return sampler.rows(key, counter, shape, rows)
    return sampler(key, counter, shape)[rows]


def _materialised(x: jax.Array) -> jax.Array:
    """``x`` exactly, as the output of a matmul by the identity, which XLA computes into a
    buffer of its own instead of fusing ``x``'s computation into each consumer element."""
    return x @ jnp.eye(x.shape[-1], dtype=x.dtype)


@dataclasses.dataclass(frozen=True)
class LowRank:
    """LOZO's low-rank directions (Chen et al. 2024, arXiv 2410.07698).

    A leaf of shape ``(..., n)`` with two or more axes is the matrix ``(m, n)``, ``m`` the
    product of the leading axes (a Flax kernel ``(in, out)``). Its direction is

        z = V Uᵀ,  V ∈ R^{m×r} fixed for ``nu`` steps (from the key of window counter // nu),
                   U ∈ R^{n×r} fresh every step.

    The official code perturbs a torch weight ``(out, in)`` with ``U Vᵀ``, U over ``out``
    fresh and V over ``in`` lazy; a Flax kernel is that weight transposed, so the roles
    match for every Dense layer. (An embedding table is ``(vocab, d)`` in both libraries,
    so there the lazy factor spans the vocabulary here and ``d`` in the official code.)
    Leaves with fewer than two axes get dense z from ``base``. No 1/r: ``E[z zᵀ] = r·I``.
    """

    rank: int = 2
    nu: int = 50
    base: Sampler = Gaussian()

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be an integer >= 1, got {self.rank!r}")
        if not isinstance(self.nu, int) or self.nu < 1:
            raise ValueError(f"nu must be an integer >= 1, got {self.nu!r}")

    @property
    def elementwise(self) -> bool:
        return is_elementwise(self.base)

    @staticmethod
    def matrix_shape(shape) -> tuple[int, int]:
        return math.prod(shape[:-1]), shape[-1]

    def lazy_factor(self, key, window, shape):
        """V ``(m, r)`` of the ``nu``-window ``window``."""
        return self.base(jax.random.fold_in(key, 1), window, (self.matrix_shape(shape)[0], self.rank))

    def fresh_factor(self, key, counter, shape):
        """U ``(n, r)`` of step ``counter``."""
        return self.base(jax.random.fold_in(key, 2), counter, (self.matrix_shape(shape)[1], self.rank))

    @staticmethod
    def outer(v, u) -> jax.Array:
        """``v @ u.T`` for factors ``(..., m, r)`` and ``(n, r)``, as a sum of r broadcast outer
        products: elementwise, so XLA fuses z into its consumer instead of materialising it.
        The factors themselves go through a (tiny) matmul, which XLA does not fuse, so they
        are drawn once, not again for every element of z."""
        v, u = _materialised(v), _materialised(u)
        return sum(v[..., k, None] * u[:, k] for k in range(v.shape[-1]))

    def __call__(self, key, counter, shape):
        if len(shape) < 2:
            return self.base(key, counter, shape)
        v = self.lazy_factor(key, counter // self.nu, shape)
        u = self.fresh_factor(key, counter, shape)
        return self.outer(v, u).reshape(shape)

    def rows(self, key, counter, shape, rows):
        """``self(key, counter, shape)[rows]``, from the rows of V that they use."""
        if len(shape) < 2:
            return sample_rows(self.base, key, counter, shape, rows)
        v = self.lazy_factor(key, counter // self.nu, shape).reshape(shape[0], -1, self.rank)[rows]
        u = self.fresh_factor(key, counter, shape)
        return self.outer(v, u).reshape(*jnp.shape(rows), *shape[1:])


SAMPLERS = {"gaussian": Gaussian, "threefry": Threefry, "hash": HashGaussian, "rademacher": Rademacher}


def get_sampler(sampler: str | Sampler) -> Sampler:
    """A sampler instance from a name in ``SAMPLERS`` or an instance."""
    if isinstance(sampler, str):
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)} or pass a Sampler")
        return SAMPLERS[sampler]()
    if not callable(sampler):
        raise TypeError(f"sampler must be a name or a callable (key, counter, shape) -> z, got {sampler!r}")
    return sampler


# ---------------------------------------------------------------------------------------
# Whole-tree and per-layer regeneration


def for_each_leaf(fn, key, tree, stacked: Stacked, *rest):
    """``fn(leaf_key, leaf, *rest_leaves)`` on every leaf, mapped over axis 0 of stacked
    leaves with slice keys ``fold_in(leaf_key, l)``. Returns a tree like ``tree``."""
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    rest_leaves = [treedef.flatten_up_to(r) for r in rest]
    out = []
    for i, ((path, leaf), flag) in enumerate(zip(paths_leaves, stack_flags(stacked, tree))):
        k = leaf_key(key, path_name(path))
        args = [r[i] for r in rest_leaves]
        if flag:
            keys = jax.vmap(lambda l: jax.random.fold_in(k, l))(jnp.arange(leaf.shape[0]))
            out.append(jax.vmap(fn)(keys, leaf, *args))
        else:
            out.append(fn(k, leaf, *args))
    return treedef.unflatten(out)


def sample(sampler: Sampler, key, counter, tree, stacked: Stacked = None):
    """z for every leaf of ``tree`` (float32, leaf shapes)."""
    return for_each_leaf(lambda k, p: sampler(k, counter, p.shape), key, tree, stacked)


ROUNDINGS = ("nearest", "stochastic")


def stochastic_round(x: jax.Array, dtype, key, counter, index: jax.Array, mirror=False) -> jax.Array:
    """``x`` (float32) rounded to ``dtype`` up or down with probabilities that make the result
    unbiased, E[round(x)] = x; the uniform draw u is a pure function of ``(key, counter, index)``
    (``index`` the elements' flat uint32 indices), so it comes back like z does. ``mirror``
    uses 1 − u instead: θ − εz mirrored against θ + εz makes their rounding errors
    anticorrelated, which lowers the variance of their difference."""
    y = x.astype(dtype)
    yf = y.astype(jnp.float32)
    other = jnp.nextafter(y, jnp.where(yf > x, -jnp.inf, jnp.inf).astype(dtype))
    frac = jnp.where(yf == x, 0.0, (x - yf) / (other.astype(jnp.float32) - yf))
    k0, k1 = jax.random.fold_in(jax.random.fold_in(key, 0x5EED), counter)
    u = ((_fmix32(_fmix32(index ^ k0) + k1) >> 8).astype(jnp.float32) + 0.5) * jnp.float32(2.0**-24)
    return jnp.where(jnp.where(mirror, 1.0 - u, u) < frac, other, y)


def _cast(x, dtype, k, counter, index, scale, rounding):
    """The perturbed float32 ``x`` in the parameter's ``dtype``: one rounding to nearest, or
    stochastic rounding for floats narrower than float32 (``rounding="stochastic"``), mirrored
    between the two signs of ``scale``."""
    if rounding == "stochastic" and jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
        return stochastic_round(x, dtype, k, counter, index(), mirror=jnp.asarray(scale) < 0)
    return x.astype(dtype)


def _shift(p, k, counter, sampler, scale, rounding="nearest"):
    """``p + scale·z`` computed in float32 and cast once to ``p``'s dtype."""
    x = p.astype(jnp.float32) + scale * sampler(k, counter, p.shape)
    return _cast(x, p.dtype, k, counter, lambda: jax.lax.iota(jnp.uint32, p.size).reshape(p.shape), scale, rounding)


def perturb(params, sampler: Sampler, key, counter, scale, stacked: Stacked = None, rounding: str = "nearest"):
    """``θ + scale·z`` leaf by leaf; ``params`` itself is never modified. ``rounding`` is how
    the float32 sum returns to a narrower parameter dtype (see :func:`stochastic_round`)."""
    return for_each_leaf(lambda k, p: _shift(p, k, counter, sampler, scale, rounding), key, params, stacked)


def make_param_hook(sampler: Sampler, key, counter, scale, rounding: str = "nearest"):
    """A model parameter hook that applies ``θ + scale·z`` where each weight is used.

    Models call ``hook(path, subtree, layer)``: ``path`` is the tuple of keys from the root
    of the parameter tree to ``subtree``; ``layer`` is ``None`` for an unstacked subtree or
    the (traced) layer index when ``subtree`` is one slice of a stacked subtree. The z
    produced equals :func:`perturb`'s for the same leaf (and slice) bit for bit.

    ``hook.rows(path, subtree, rows)`` gives rows ``rows`` (an int array) of each perturbed
    (unstacked) leaf of ``subtree``, equal to ``hook(path, subtree)``'s, drawing z for those
    rows only (see :func:`sample_rows`): a model reads an embedding table through it, so no
    perturbed copy of the table is made.
    """

    def key_of(path, sub_path):
        return leaf_key(key, "/".join([*map(str, path), *([path_name(sub_path)] if sub_path else [])]))

    def hook(path, subtree, layer=None):
        def one(sub_path, p):
            k = key_of(path, sub_path)
            if layer is not None:
                k = jax.random.fold_in(k, layer)
            return _shift(p, k, counter, sampler, scale, rounding)

        return jax.tree_util.tree_map_with_path(one, subtree)

    def rows(path, subtree, rows):
        def one(sub_path, p):
            k = key_of(path, sub_path)
            z = sample_rows(sampler, k, counter, p.shape, rows)
            x = p[rows].astype(jnp.float32) + scale * z
            return _cast(x, p.dtype, k, counter, lambda: row_indices(p.shape, rows), scale, rounding)

        return jax.tree_util.tree_map_with_path(one, subtree)

    hook.rows = rows
    return hook
