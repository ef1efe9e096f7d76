"""Zeroth-order optimizers as optax transformations."""

from zojax.optim.adamezo import AdaMeZOState, adamezo, scale_by_adamezo
from zojax.optim.common import StepInfo, ZOInfo, decay_mask, step_info
from zojax.optim.compose import LookaheadState, chain, lookahead
from zojax.optim.lozo import LOZOState, lozo, scale_by_lozo
from zojax.optim.mezo import MeZOState, mezo, scale_by_mezo

__all__ = [
    "AdaMeZOState", "LOZOState", "LookaheadState", "MeZOState", "StepInfo", "ZOInfo",
    "adamezo", "chain", "lookahead", "decay_mask", "lozo", "mezo", "scale_by_adamezo", "scale_by_lozo", "scale_by_mezo", "step_info",
]
