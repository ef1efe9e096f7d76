"""Zeroth-order optimizers as optax transformations."""

from zojax.optim.adamezo import AdaMeZOState, adamezo, scale_by_adamezo
from zojax.optim.common import StepInfo, ZOInfo, decay_mask, step_info
from zojax.optim.compose import LookaheadState, chain, lookahead
from zojax.optim.family import (
    HiZOOState, forward_gradient, hizoo, scale_by_forward_gradient, scale_by_hizoo, scale_by_zo_adam,
    scale_by_zo_cons, scale_by_zo_momentum, scale_by_zo_sign, zo_adam, zo_cons, zo_momentum, zo_sign,
)
from zojax.optim.lozo import LOZOState, lozo, scale_by_lozo
from zojax.optim.mezo import MeZOState, mezo, scale_by_mezo

__all__ = [
    "AdaMeZOState", "HiZOOState", "LOZOState", "LookaheadState", "MeZOState", "StepInfo", "ZOInfo",
    "adamezo", "chain", "forward_gradient", "hizoo", "lookahead", "decay_mask", "lozo", "mezo", "scale_by_adamezo", "scale_by_lozo", "scale_by_mezo", "step_info",
    "scale_by_forward_gradient", "scale_by_hizoo", "scale_by_zo_adam", "scale_by_zo_cons", "scale_by_zo_momentum",
    "scale_by_zo_sign", "zo_adam", "zo_cons", "zo_momentum", "zo_sign",
]
