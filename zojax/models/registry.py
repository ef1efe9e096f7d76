"""The model families: `model_type` -> config class and `flax.nnx` module class."""

from __future__ import annotations

from typing import NamedTuple

from flax import nnx

from zojax.models.base import hf_config_dict
from zojax.models.llama import LlamaConfig, LlamaForCausalLM
from zojax.models.mistral import MistralConfig, MistralForCausalLM
from zojax.models.opt import OPTConfig, OPTForCausalLM
from zojax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from zojax.models.qwen3 import Qwen3Config, Qwen3ForCausalLM


class Family(NamedTuple):
    config: type
    module: type[nnx.Module]


FAMILIES = {
    "llama": Family(LlamaConfig, LlamaForCausalLM),
    "mistral": Family(MistralConfig, MistralForCausalLM),
    "opt": Family(OPTConfig, OPTForCausalLM),
    "qwen2": Family(Qwen2Config, Qwen2ForCausalLM),
    "qwen3": Family(Qwen3Config, Qwen3ForCausalLM),
}


def config_from_hf(hf_config):
    """The zojax config for a transformers config or its dict (config.json); ValueError naming
    an unsupported `model_type` or any config attribute whose value zojax does not implement."""
    d = hf_config_dict(hf_config)
    if d.get("model_type") not in FAMILIES:
        raise ValueError(
            f"unsupported model_type {d.get('model_type')!r}: zojax implements {', '.join(FAMILIES)}"
        )
    return FAMILIES[d["model_type"]].config.from_hf(d)
