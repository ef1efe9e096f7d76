"""Deprecated alias of :mod:`zojax.finetune` (kept for one release): ``train.run``,
``train.default_config`` and the other names are ``zojax.finetune``'s."""

from zojax.finetune import *  # noqa: F401,F403
from zojax.finetune import __all__  # noqa: F401
