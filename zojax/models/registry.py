"""The model families (`model_type` -> config class and `flax.nnx` module class), and the logical
axis names their modules declare for each parameter path (see `zojax.models.nn`)."""

from __future__ import annotations

from typing import NamedTuple

import jax
from flax import nnx
from jax.sharding import PartitionSpec as P

from zojax.models.base import hf_config_dict
from zojax.models.llama import LlamaConfig, LlamaForCausalLM
from zojax.models.mistral import MistralConfig, MistralForCausalLM
from zojax.models.opt import OPTConfig, OPTForCausalLM
from zojax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from zojax.models.qwen3 import Qwen3Config, Qwen3ForCausalLM
from zojax.perturb import path_name


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


# ----------------------------------------------------------------------------- logical axes


def _declared() -> dict[str, tuple]:
    """Parameter path -> the logical axis names its module declares, over every family's
    modules with every optional parameter present (biases, q/k norms, projections, lm_head)."""
    from zojax.models.base import abstract_module

    llama = dict(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=4)
    configs = [
        LlamaConfig(**llama, qkv_bias=True, o_bias=True, mlp_bias=True, qk_norm=True),
        OPTConfig(vocab_size=8, hidden_size=8, num_hidden_layers=1, ffn_dim=8, num_attention_heads=2,
                  max_position_embeddings=8, word_embed_proj_dim=4, tie_word_embeddings=False),
    ]
    out = {}
    for config in configs:
        specs = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(abstract_module(config), nnx.Param)))
        for path, spec in jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, P)):
            out[path_name(path)] = tuple(spec)
    return out


_DECLARED: dict[str, tuple] = {}


def path_axes(path: str, ndim: int) -> tuple | None:
    """The logical axis names of the parameter at `path` ('layers/self_attn/q_proj/kernel') of
    any family, or of a `zojax.peft` adapter (LoRA factors and prefixes: replicated); None if no
    module declares it."""
    if not _DECLARED:
        _DECLARED.update(_declared())
    if path in _DECLARED:
        return _DECLARED[path]
    layers = ("layers",) if path.startswith("layers/") else ()
    name = path.rsplit("/", 1)[-1]
    if name in ("lora_a", "lora_b"):
        return (*layers, *(None,) * (ndim - len(layers)))
    if path.startswith("layers/prefix/") and ndim == 4:
        return ("layers", "prefix", "kv_heads", "head_dim")
    return None


def logical_axes(tree):
    """A tree like `tree` (model parameters or adapters, arrays or anything with `.shape`) of
    each leaf's logical axis names; a ValueError lists every leaf that no module declares."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    names = [path_axes(path_name(p), len(x.shape)) for p, x in leaves]
    unknown = [path_name(p) for (p, _), n in zip(leaves, names) if n is None]
    if unknown:
        raise ValueError(f"no model declares the logical axes of: {', '.join(unknown)}")
    return treedef.unflatten(names)
