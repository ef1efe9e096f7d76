"""zojax: zeroth-order (forward-only) fine-tuning of language models in JAX.

    tx = zojax.lozo(learning_rate=1e-6, eps=1e-3, rank=2, nu=50)
    state = tx.init(params)
    updates, state = tx.update(None, state, params, value_fn=lambda p: loss(p, batch))
    params = optax.apply_updates(params, updates)
"""

from zojax import perturb, sharding
from zojax.estimate import fill_masked, in_place_update, two_point
from zojax.optim import (
    AdaMeZOState,
    LOZOState,
    MeZOState,
    StepInfo,
    adamezo,
    chain,
    decay_mask,
    forward_gradient,
    hizoo,
    lookahead,
    lozo,
    mezo,
    scale_by_adamezo,
    scale_by_forward_gradient,
    scale_by_hizoo,
    scale_by_lozo,
    scale_by_mezo,
    scale_by_zo_adam,
    scale_by_zo_cons,
    scale_by_zo_momentum,
    scale_by_zo_sign,
    step_info,
    zo_adam,
    zo_cons,
    zo_momentum,
    zo_sign,
)
from zojax.perturb import Gaussian, HashGaussian, LowRank, Rademacher

__version__ = "0.1.0"
