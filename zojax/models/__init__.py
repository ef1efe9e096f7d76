"""Flax (`flax.nnx`) causal LMs, and conversion from/to Hugging Face checkpoints.

Families, one folder each (config, modules, conversion table): `llama` (Llama 1/2/3.x, SmolLM2),
`opt`, `mistral`, `qwen2` (Qwen2/2.5), `qwen3`.

    m = zojax.models.load("path/to/hf_folder")        # or a hub id, or a .gguf file
    logits = m.apply(m.params, input_ids, attention_mask)   # pure: params is a plain pytree
    m.module                                           # the nnx module over the same arrays
    zojax.models.save_hf(m, m.params, "out_dir")
"""

from zojax.models.base import HFTensor, Model, forward, generate, init
from zojax.models.checkpoint import (
    CheckpointError,
    HubUnreachableError,
    default_model_path,
    load,
    load_default,
    save_hf,
)
from zojax.models.llama import (
    DynamicRopeScaling,
    LinearRopeScaling,
    Llama3RopeScaling,
    LlamaConfig,
    LlamaForCausalLM,
)
from zojax.models.mistral import MistralConfig, MistralForCausalLM
from zojax.models.opt import OPTConfig, OPTForCausalLM
from zojax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from zojax.models.qwen3 import Qwen3Config, Qwen3ForCausalLM
from zojax.models.registry import FAMILIES, config_from_hf

__all__ = [
    "FAMILIES",
    "CheckpointError",
    "DynamicRopeScaling",
    "HFTensor",
    "HubUnreachableError",
    "LinearRopeScaling",
    "Llama3RopeScaling",
    "LlamaConfig",
    "LlamaForCausalLM",
    "MistralConfig",
    "MistralForCausalLM",
    "Model",
    "OPTConfig",
    "OPTForCausalLM",
    "Qwen2Config",
    "Qwen2ForCausalLM",
    "Qwen3Config",
    "Qwen3ForCausalLM",
    "config_from_hf",
    "default_model_path",
    "forward",
    "generate",
    "init",
    "load",
    "load_default",
    "save_hf",
]
