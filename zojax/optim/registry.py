"""The one table from optimizer names to optax transformations, used by the fine-tuning
loop, the comparisons and the benchmarks.

    tx = registry.optimizer("lozo", 1e-6, stacked=model.stacked, key=0, rank=2, nu=50)
    d = registry.direction("adamezo", horizon=10)       # before the learning rate, for chains

Hyperparameters a name does not read are ignored, so one config can hold them all;
unknown hyperparameter names are refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import optax

from zojax import perturb as P
from zojax.optim.adamezo import scale_by_adamezo
from zojax.optim import family as F
from zojax.optim.common import decay_mask as default_decay_mask
from zojax.optim.lozo import scale_by_lozo
from zojax.optim.mezo import scale_by_mezo

# Every hyperparameter an entry may read: its default and a one-line description (the CLI's
# --help shows both).
_HYPERPARAMS: dict[str, tuple[Any, str]] = dict(
    eps=(1e-3, "perturbation scale ε of the two-point estimate"),
    sampler=("gaussian", "z's distribution: gaussian, threefry, hash, rademacher"),
    rounding=("nearest", "θ ± εz back to a 16-bit dtype: nearest or stochastic (unbiased)"),
    num_directions=(1, "two-point estimates averaged per step (2 forward passes each)"),
    rank=(2, "LOZO: rank r of z = U Vᵀ"),
    nu=(50, "LOZO: steps between redraws of V"),
    momentum=(0.9, "LOZO-M and ZO-momentum: momentum β"),
    b1=(0.7, "AdaMeZO: β1"),
    b2=(0.9, "AdaMeZO: β2"),
    horizon=(10, "AdaMeZO: past (key, c) pairs replayed"),
    adam_b1=(0.9, "ZO-Adam: β1"),
    adam_b2=(0.999, "ZO-Adam: β2"),
    hessian_smooth=(1e-6, "HiZOO: smoothing α of the diagonal Hessian estimate"),
)
HYPERPARAMS: dict[str, Any] = {k: default for k, (default, _) in _HYPERPARAMS.items()}
HYPERPARAM_DOCS: dict[str, str] = {k: doc for k, (_, doc) in _HYPERPARAMS.items()}


@dataclasses.dataclass(frozen=True)
class Entry:
    """``build(h, stacked, key)`` -> the direction transformation; ``h`` holds every
    hyperparameter of HYPERPARAMS."""

    build: Callable[[dict, P.Stacked, Any], optax.GradientTransformation]
    zeroth_order: bool
    doc: str
    needs_learning_rate: bool = False  # the direction itself depends on η (h["learning_rate"])


def _lowrank(h) -> P.LowRank:
    return P.LowRank(h["rank"], h["nu"], P.get_sampler(h["sampler"]))


REGISTRY: dict[str, Entry] = {
    "mezo": Entry(
        lambda h, stacked, key: scale_by_mezo(
            h["eps"], num_directions=h["num_directions"], sampler=h["sampler"], stacked=stacked, rounding=h["rounding"], key=key
        ),
        True,
        "MeZO: ZO-SGD along dense Gaussian z (Malladi et al. 2023)",
    ),
    "lozo": Entry(
        lambda h, stacked, key: scale_by_lozo(
            h["eps"], h["rank"], h["nu"], num_directions=h["num_directions"], base_sampler=h["sampler"],
            stacked=stacked, rounding=h["rounding"], key=key,
        ),
        True,
        "LOZO: low-rank z = U Vᵀ, V redrawn every ν steps (Chen et al. 2024)",
    ),
    "lozo-m": Entry(
        lambda h, stacked, key: scale_by_lozo(
            h["eps"], h["rank"], h["nu"], h["momentum"], num_directions=h["num_directions"],
            base_sampler=h["sampler"], stacked=stacked, rounding=h["rounding"], key=key,
        ),
        True,
        "LOZO-M: LOZO with momentum in the low-rank factor (Chen et al. 2024)",
    ),
    "adamezo": Entry(
        lambda h, stacked, key: scale_by_adamezo(
            h["eps"], h["b1"], h["b2"], h["horizon"], num_directions=h["num_directions"], sampler=h["sampler"],
            stacked=stacked, rounding=h["rounding"], key=key,
        ),
        True,
        "AdaMeZO: Adam moments replayed from the last h (key, c) pairs (Cai et al. 2026)",
    ),
    "adamezo-lowrank": Entry(
        lambda h, stacked, key: scale_by_adamezo(
            h["eps"], h["b1"], h["b2"], h["horizon"], num_directions=h["num_directions"], sampler=_lowrank(h),
            stacked=stacked, rounding=h["rounding"], key=key,
        ),
        True,
        "AdaMeZO along LOZO's low-rank z",
    ),
    "zo-sign": Entry(
        lambda h, stacked, key: F.scale_by_zo_sign(
            h["eps"], num_directions=h["num_directions"], sampler=h["sampler"], stacked=stacked, rounding=h["rounding"], key=key
        ),
        True,
        "ZO-SGD-Sign: sign of the MeZO estimate (Liu et al. 2019)",
    ),
    "zo-momentum": Entry(
        lambda h, stacked, key: F.scale_by_zo_momentum(
            h["eps"], h["momentum"], num_directions=h["num_directions"], sampler=h["sampler"], stacked=stacked,
            rounding=h["rounding"], key=key,
        ),
        True,
        "ZO-SGD with heavy-ball momentum (params-sized buffer; ZO-Bench)",
    ),
    "zo-adam": Entry(
        lambda h, stacked, key: F.scale_by_zo_adam(
            h["eps"], h["adam_b1"], h["adam_b2"], num_directions=h["num_directions"], sampler=h["sampler"],
            stacked=stacked, rounding=h["rounding"], key=key,
        ),
        True,
        "ZO-Adam: Adam moments on the MeZO estimate, held on skipped steps (ZO-Bench)",
    ),
    "zo-cons": Entry(
        lambda h, stacked, key: F.scale_by_zo_cons(
            h["learning_rate"], h["eps"], sampler=h["sampler"], stacked=stacked, rounding=h["rounding"], key=key
        ),
        True,
        "ZO-SGD-Cons: the best of θ, θ ± ηĝ (5 forwards per step; ZO-Bench)",
        needs_learning_rate=True,
    ),
    "forward-gradient": Entry(
        lambda h, stacked, key: F.scale_by_forward_gradient(
            num_directions=h["num_directions"], sampler=h["sampler"], stacked=stacked, key=key
        ),
        True,
        "forward gradient: (∇f·z) z from one jvp (Baydin et al. 2022)",
    ),
    "hizoo": Entry(
        lambda h, stacked, key: F.scale_by_hizoo(h["eps"], h["hessian_smooth"], sampler=h["sampler"], stacked=stacked, key=key),
        True,
        "HiZOO: MeZO preconditioned by a diagonal Hessian from a third evaluation (Zhao et al. 2024)",
    ),
    "adam": Entry(lambda h, stacked, key: optax.scale_by_adam(), False, "first-order Adam (backpropagation)"),
    "sgd": Entry(lambda h, stacked, key: optax.identity(), False, "first-order SGD (backpropagation)"),
}


def names(zeroth_order: bool | None = None) -> tuple[str, ...]:
    """Registered names; only ZO (True) or only first-order (False) ones if asked."""
    return tuple(n for n, e in REGISTRY.items() if zeroth_order is None or e.zeroth_order == zeroth_order)


def get(name: str) -> Entry:
    if name not in REGISTRY:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {list(REGISTRY)}")
    return REGISTRY[name]


def is_zeroth_order(name: str) -> bool:
    return get(name).zeroth_order


def _hyperparams(given: dict) -> dict:
    unknown = sorted(set(given) - set(HYPERPARAMS))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown}; known: {sorted(HYPERPARAMS)}")
    return {**HYPERPARAMS, **given}


def direction(
    name: str, *, stacked: P.Stacked = None, key=0, learning_rate: optax.ScalarOrSchedule | None = None, **hyperparams
) -> optax.GradientTransformation:
    """The update direction of ``name`` (before weight decay and the learning rate);
    ``learning_rate`` is needed only by entries whose direction depends on it (zo-cons)."""
    entry = get(name)
    h = _hyperparams(hyperparams)
    if entry.needs_learning_rate:
        if learning_rate is None:
            raise ValueError(f"{name!r} places its candidate steps with the learning rate: pass learning_rate=")
        h["learning_rate"] = learning_rate
    return entry.build(h, stacked, key)


def optimizer(
    name: str,
    learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay: float = 0.0,
    decay_mask=None,
    stacked: P.Stacked = None,
    key=0,
    **hyperparams,
) -> optax.GradientTransformation:
    """``chain(direction, decoupled weight decay, learning rate)``: the update rule
    θ ← θ − η (d + λ θ) with d the direction of ``name``. ``decay_mask`` is a tree of bools, a
    function of params, or a rule of :func:`zojax.decay_mask`: ``"shape"`` (the default: no
    decay on biases and norms) or ``"official"`` (the MeZO/LOZO/AdaMeZO trainers' name rule).
    """
    parts = [direction(name, stacked=stacked, key=key, learning_rate=learning_rate, **hyperparams)]
    if weight_decay:
        mask = decay_mask
        if mask is None or isinstance(mask, str):
            rule = mask or "shape"
            default_decay_mask({}, rule=rule)  # an unknown rule fails here, not at the first step
            mask = lambda params: default_decay_mask(params, stacked, rule)
        parts.append(optax.add_decayed_weights(weight_decay, mask))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)
