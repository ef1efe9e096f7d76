"""The forward pass, the per-layer hook and generation against transformers and each other."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

import zojax.models


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    """`loaded(name)` -> (zojax Model, transformers model) of the same saved tiny model."""
    cache = {}

    def get(name):
        if name not in cache:
            folder = tiny_dir(name)
            cache[name] = (
                zojax.models.load(folder),
                transformers.AutoModelForCausalLM.from_pretrained(folder).eval(),
            )
        return cache[name]

    return get


def test_logits_match_transformers(loaded, batch, tiny_name, hf_logits, max_error, logits_atol):
    """Every family and layout, float32, padded rows included, against transformers' default
    (sdpa) attention: within 3e-5 on logits up to 9.

    What remains is float32 rounding, not a difference of formula: matmul accumulation order, exp
    and rsqrt differ by an ulp between XLA and torch, these random tiny models amplify it
    (residual stream ~20), and the order depends on the CPU's vector width. Against
    transformers' float64 logits, over seeds 0-2 of every tiny model on an AVX2 machine,
    transformers' own float32 is up to 9.3e-6 off and zojax up to 1.7e-5; zojax against
    transformers' float32 measures up to 1.35e-5 there (1.05e-5 for dynamic RoPE), and up to
    1.9e-5 over ten seeds on another machine. A formula difference is far above that floor:
    the RMSNorm ε read 10x too large moves these logits by 6e-4 to 2e-3.

    Dynamic NTK RoPE past `max_position_embeddings` (this batch reaches 10 > 6) takes its
    frequencies from a host table in transformers' float32 order (see
    test_dynamic_rope_frequencies_match_transformers); computed on device as a float32 power of
    the run-time length instead, they were up to 5 ulps from torch's.
    """
    m, hf = loaded(tiny_name)
    ids, mask = batch
    logits = jax.jit(m.apply)(m.params, ids, mask)
    assert logits.dtype == jnp.float32 and logits.shape == (3, 10, 101)
    ref = hf_logits(hf, ids, mask)
    assert np.abs(ref).max() > 1  # the comparison below is not trivially small
    assert max_error(logits, ref, mask) < logits_atol


@pytest.mark.parametrize(
    "head_dim, theta, factor, max_positions",
    [(8, 100.0, 2.0, 6), (64, 10000.0, 4.0, 512), (128, 500000.0, 8.0, 2048)],
)
def test_dynamic_rope_frequencies_match_transformers(head_dim, theta, factor, max_positions):
    """Dynamic NTK frequencies read on device (`inv_freq` under jit, the length a run-time
    value) against transformers' `ROPE_INIT_FUNCTIONS["dynamic"]` for each of the 300 lengths
    past `max_position_embeddings`: at most 2 ulps apart, at least 97% bit-equal (measured: 1 of
    1200 elements differs by 1 ulp with head_dim 8, where torch's power is the C library's
    powf; 1.6-1.9% by 1-2 ulps from 64 on, where it is vectorised, Sleef's powf_u10). Bit-equal
    for the lengths of the tiny model's batches (7 to 13). The former float32 power on device
    had 27-56% of the elements 1-5 ulps off."""
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = transformers.LlamaConfig(
        hidden_size=2 * head_dim,
        num_attention_heads=2,
        head_dim=head_dim,
        max_position_embeddings=max_positions,
        rope_parameters={"rope_type": "dynamic", "rope_theta": theta, "factor": factor},
    )
    config = zojax.models.config_from_hf(hf)
    lengths = np.arange(max_positions + 1, max_positions + 301)
    read = jax.jit(lambda p: config.inv_freq(p, int(lengths[-1])))
    ours = np.stack([read(jnp.array([[0, s - 1]])) for s in lengths])  # largest position s - 1
    ref = np.stack([ROPE_INIT_FUNCTIONS["dynamic"](hf, None, seq_len=torch.tensor(int(s)))[0].numpy() for s in lengths])
    assert ours.dtype == ref.dtype == np.float32 and ours.shape == ref.shape == (300, head_dim // 2)
    ulps = np.abs(ours.view(np.int32).astype(np.int64) - ref.view(np.int32))
    assert ulps.max() <= 2 and (ulps == 0).mean() >= 0.97
    if max_positions == 6:
        np.testing.assert_array_equal(ours[:7], ref[:7])
        fresh = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(hf).inv_freq.numpy()
        np.testing.assert_array_equal(read(jnp.array([[0, 5]])), fresh)  # length 6: not scaled


def test_dynamic_rope_within_max_positions_is_the_default_rope(loaded, batch):
    """While no position reaches `max_position_embeddings` (6), dynamic NTK scaling changes
    nothing (transformers then uses its unscaled frequencies): the logits are those of the same
    weights with the default RoPE, bit for bit."""
    m, _ = loaded("llama_dynamic_rope")
    ids, mask = (x[:, 3:9] for x in batch)  # 6, 5 and 6 tokens: positions 0..5
    assert m.config.max_position_embeddings == 6 and m.config.rope_scaling is not None
    default = zojax.models.Model(dataclasses.replace(m.config, rope_scaling=None), m.params)
    logits = jax.jit(m.apply)(m.params, ids, mask)
    np.testing.assert_array_equal(logits, jax.jit(default.apply)(default.params, ids, mask))
    longer = [x[:, :9] for x in batch]  # row 2 reaches position 8: the base grows
    assert np.abs(np.asarray(m.apply(m.params, *longer) - default.apply(default.params, *longer))).max() > 1e-3


def test_module_is_an_nnx_module_over_the_same_arrays(loaded, batch):
    """`Model.module` is the family's nnx module: its call equals `apply`, its Param state is
    `params`, and `Model.from_module` gives the Model back."""
    from flax import nnx

    m, _ = loaded("qwen3_head_dim_bias")
    module = m.module
    assert isinstance(module, zojax.models.Qwen3ForCausalLM) and isinstance(module, nnx.Module)
    assert module.layers.self_attn.q_norm.scale.shape == (2, 16)
    ids, mask = batch
    np.testing.assert_allclose(module(ids, mask), m.apply(m.params, ids, mask), atol=1e-5)  # eager vs jit
    back = zojax.models.Model.from_module(module)
    assert jax.tree.structure(back.params) == jax.tree.structure(m.params)
    assert all(a is b for a, b in zip(jax.tree.leaves(back.params), jax.tree.leaves(m.params)))
    specs = nnx.get_partition_spec(nnx.state(module, nnx.Param))
    assert tuple(specs["layers"]["self_attn"]["q_proj"]["kernel"].get_value()) == ("layers", "embed", "heads")


@pytest.mark.parametrize("name", ["opt", "llama_gqa_tied"])
def test_no_mask_is_all_tokens(loaded, batch, name):
    m, _ = loaded(name)
    ids, _ = batch
    np.testing.assert_array_equal(m.apply(m.params, ids), m.apply(m.params, ids, np.ones_like(ids)))


@pytest.mark.parametrize("name", ["opt350_post_ln_proj", "llama3_rope"])
def test_padding_side_does_not_change_logits(loaded, name):
    m, _ = loaded(name)
    seq = np.arange(5, 12)
    alone = m.apply(m.params, seq[None])[0]
    left = m.apply(m.params, np.concatenate([[0, 0, 0], seq])[None], np.array([[0] * 3 + [1] * 7]))[0, 3:]
    right = m.apply(m.params, np.concatenate([seq, [0, 0]])[None], np.array([[1] * 7 + [0] * 2]))[0, :7]
    np.testing.assert_allclose(left, alone, atol=1e-5)
    np.testing.assert_allclose(right, alone, atol=1e-5)


@pytest.mark.parametrize("name", ["llama_gqa_tied", "opt350_post_ln_proj"])
def test_decoder_layers_compose_as_plain_nnx_modules(loaded, batch, name):
    """A Flax user's loop over the layers (each one an nnx module called on its own) gives the
    model's logits."""
    from flax import nnx

    m, _ = loaded(name)
    ids, mask = batch
    model = m.module
    positions = zojax.models.base.positions_from_mask(jnp.asarray(mask))
    h, aux = model.embed(jnp.asarray(ids), positions, {})
    causal = jnp.asarray(mask, bool)[:, None, :] & jnp.tril(jnp.ones((10, 10), bool))[None]
    graph, state = nnx.split(model.layers)
    for i in range(m.config.num_hidden_layers):
        layer = nnx.merge(graph, jax.tree.map(lambda x: x[i], state))
        h = layer(h, causal) if aux is None else layer(h, aux, causal)
    np.testing.assert_allclose(model.logits(h, {}), m.apply(m.params, ids, mask), atol=1e-5)


def _deltas(params, key):
    keys = iter(jax.random.split(key, len(jax.tree.leaves(params))))
    return jax.tree.map(lambda x: 0.01 * jax.random.normal(next(keys), x.shape, x.dtype), params)


@pytest.mark.parametrize("name", ["opt350_post_ln_proj", "llama_gqa_tied"])
def test_hook_inside_scan_equals_perturbing_up_front(loaded, batch, name):
    m, _ = loaded(name)
    ids, mask = batch
    delta = _deltas(m.params, jax.random.key(0))
    calls = []

    def hook(path, subtree, layer):
        calls.append((path, None if layer is None else (layer.shape, layer.dtype)))
        d = delta[path[0]]
        if path == ("layers",):
            d = jax.tree.map(lambda x: x[layer], d)
        return jax.tree.map(jnp.add, subtree, d)

    hooked = jax.jit(lambda p: m.apply(p, ids, mask, param_hook=hook))(m.params)
    apply = jax.jit(m.apply)
    moved = apply(jax.tree.map(jnp.add, m.params, delta), ids, mask)
    plain = apply(m.params, ids, mask)
    np.testing.assert_allclose(hooked, moved, atol=1e-5)
    assert np.abs(np.asarray(hooked) - np.asarray(plain)).max() > 1e-2  # the deltas matter
    top = [c for c in calls if c[0] != ("layers",)]
    assert sorted(top) == sorted(((k,), None) for k in m.params if k != "layers")
    assert {c for c in calls if c[0] == ("layers",)} == {(("layers",), ((), jnp.dtype(jnp.int32)))}
    assert m.stacked == {k: k == "layers" for k in m.params} and m.stacked["layers"]


@pytest.mark.parametrize("name", ["opt", "llama_gqa_tied"])
def test_optimizer_hook_on_small_tied_vocabulary(loaded, batch, name):
    """A tied vocabulary of 101 rows (under one unembedding chunk) read through the optimizer's
    row-wise hook gives the logits of the model perturbed up front."""
    from zojax import perturb

    m, _ = loaded(name)
    ids, mask = batch
    sampler, key = perturb.Gaussian(), perturb.as_key(3)
    hook = perturb.make_param_hook(sampler, key, 2, 0.05)
    hooked = jax.jit(lambda p: m.apply(p, ids, mask, param_hook=hook))(m.params)
    moved = m.apply(perturb.perturb(m.params, sampler, key, 2, 0.05, m.stacked), ids, mask)
    np.testing.assert_allclose(hooked, moved, atol=2e-5, rtol=1e-5)
    assert np.abs(np.asarray(hooked) - np.asarray(m.apply(m.params, ids, mask))).max() > 1e-2


@pytest.mark.parametrize("name", ["opt350_post_ln_proj", "llama_gqa_tied"])
def test_logits_at_positions_are_those_of_the_full_forward(loaded, batch, name):
    """`at` [B, K] runs the final norm and LM head on those positions only: the logits are the
    full forward's at them, plain and under the optimizer's row-wise hook (tied tables)."""
    from zojax import perturb

    m, _ = loaded(name)
    ids, mask = batch
    at = np.array([[9, 3], [7, 7], [0, 9]])
    hook = perturb.make_param_hook(perturb.Gaussian(), perturb.as_key(3), 2, 0.05)
    for kw in ({}, {"param_hook": hook}):
        full = np.asarray(jax.jit(lambda p: m.apply(p, ids, mask, **kw))(m.params))
        some = np.asarray(jax.jit(lambda p, at: m.apply(p, ids, mask, at=at, **kw))(m.params, at))
        assert some.shape == (3, 2, m.config.vocab_size)
        np.testing.assert_allclose(some, np.take_along_axis(full, at[..., None], axis=1), atol=1e-6, rtol=1e-6)


def _greedy_without_cache(m, ids, mask, n):
    """Greedy decoding by re-running the full forward; the growing sequence sits in a
    right-padded buffer so that every step has the same shape (one compilation)."""
    b, t = ids.shape
    ids = np.concatenate([ids, np.zeros((b, n), ids.dtype)], 1)
    mask = np.concatenate([mask, np.zeros((b, n), mask.dtype)], 1)
    apply = jax.jit(m.apply)
    for i in range(n):
        ids[:, t + i] = np.argmax(np.asarray(apply(m.params, ids, mask))[:, t + i - 1], axis=-1)
        mask[:, t + i] = 1
    return ids[:, t:]


@pytest.mark.parametrize("name", ["opt350_post_ln_proj", "llama3_rope", "mistral_window", "qwen2_tied_window"])
def test_generate_equals_greedy_full_forward(loaded, name):
    m, _ = loaded(name)
    rng = np.random.default_rng(1)
    ids = rng.integers(3, 101, (3, 6))
    mask = np.ones_like(ids)
    mask[0, :2] = mask[1, :1] = 0
    ref = _greedy_without_cache(m, ids, mask, 7)
    out = m.generate(m.params, ids, mask, 7)
    assert out.shape == (3, 7)
    np.testing.assert_array_equal(out, ref)

    # The same prompts right-padded generate the same tokens.
    n = mask.sum(1)
    right_ids = np.array([np.roll(r, -(6 - k)) for r, k in zip(ids, n, strict=True)])
    right_mask = (np.arange(6)[None] < n[:, None]).astype(int)
    np.testing.assert_array_equal(m.generate(m.params, right_ids, right_mask, 7), ref)


def test_generate_with_dynamic_rope_matches_transformers(tiny_dir):
    """Dynamic NTK RoPE in generation: 5-token prompts (left-padded) and 8 new tokens, past
    `max_position_embeddings` (6) from the second new token on, so the frequencies grow at each
    step while the cache keeps the keys rotated at the earlier ones: the same tokens as
    transformers' greedy `generate` (a fresh model, which grows its frequencies the same way),
    and not those of the default RoPE."""
    folder = tiny_dir("llama_dynamic_rope")
    m = zojax.models.load(folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    rng = np.random.default_rng(1)
    mask = np.ones((3, 5), np.int64)
    mask[0, :2] = mask[1, :1] = 0
    ids = np.where(mask == 1, rng.integers(3, 101, (3, 5)), 0)
    out = np.asarray(m.generate(m.params, ids, mask, 8))
    import torch

    ref = hf.generate(
        torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=8, do_sample=False,
        pad_token_id=0, eos_token_id=None,
    )[:, 5:].numpy()
    np.testing.assert_array_equal(out, ref)
    default = zojax.models.Model(dataclasses.replace(m.config, rope_scaling=None), m.params)
    assert (np.asarray(default.generate(default.params, ids, mask, 8)) != out).any()


def test_generate_stops_rows_at_eos(loaded):
    m, _ = loaded("llama_untied")
    ids = np.random.default_rng(2).integers(3, 101, (2, 5))
    free = np.asarray(m.generate(m.params, ids, np.ones_like(ids), 6))
    eos = int(next(t for t in free[0, 1:] if t != free[0, 0]))  # first seen in row 0 after token 0
    stopped = np.asarray(m.generate(m.params, ids, np.ones_like(ids), 6, eos_token_id=[eos, 1000]))
    for row, ref in zip(stopped, free, strict=True):
        end = np.flatnonzero(ref == eos)[0] + 1 if eos in ref else 6
        np.testing.assert_array_equal(row[:end], ref[:end])
        assert (row[end:] == eos).all()
    assert (stopped[0] != free[0]).any()


def test_bfloat16_logits_stay_float32_and_close(tiny_dir, batch, max_error):
    """Tiny LLaMA in bfloat16: float32 logits within 0.5 of the float32 model's (measured 0.27 on
    logits up to 7; the SmolLM2 test measures the real model)."""
    folder = tiny_dir("llama_gqa_tied")
    m32, m16 = zojax.models.load(folder), zojax.models.load(folder, dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(m16.params)} == {jnp.dtype(jnp.bfloat16)}
    ids, mask = batch
    a, b = m32.apply(m32.params, ids, mask), m16.apply(m16.params, ids, mask)
    assert b.dtype == jnp.float32
    assert 0 < max_error(a, b, mask) < 0.5


def test_config_round_trips_through_transformers(tiny_config, tiny_name):
    hf = tiny_config(tiny_name)
    config = zojax.models.config_from_hf(hf)
    assert type(config).model_type == hf.model_type
    assert zojax.models.config_from_hf(config.to_hf()) == config
    assert zojax.models.config_from_hf(type(hf)(**config.to_hf())) == config


def test_pre_transformers5_rope_keys():
    new = transformers.LlamaConfig(
        vocab_size=11,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 5e5,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ).to_dict()
    old = {k: v for k, v in new.items() if k != "rope_parameters"} | {
        "rope_theta": 5e5,
        "rope_scaling": {
            "type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    }
    config = zojax.models.LlamaConfig.from_hf(old)
    assert config == zojax.models.LlamaConfig.from_hf(new)
    assert config.rope_theta == 5e5 and config.rope_scaling == zojax.models.Llama3RopeScaling(
        8.0, 1.0, 4.0, 64
    )


# config.json files of published checkpoints (abridged to the keys that matter).
# fmt: off
PUBLISHED = {
    "facebook/opt-125m": {
        "_remove_final_layer_norm": False, "activation_dropout": 0.0, "activation_function": "relu",
        "architectures": ["OPTForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 2,
        "do_layer_norm_before": True, "dropout": 0.1, "eos_token_id": 2, "ffn_dim": 3072,
        "hidden_size": 768, "init_std": 0.02, "layerdrop": 0.0, "max_position_embeddings": 2048,
        "model_type": "opt", "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1,
        "prefix": "</s>", "torch_dtype": "float16", "use_cache": True, "vocab_size": 50272,
        "word_embed_proj_dim": 768,
    },
    "facebook/opt-350m": {
        "_remove_final_layer_norm": False, "activation_function": "relu",
        "architectures": ["OPTForCausalLM"], "bos_token_id": 2, "do_layer_norm_before": False,
        "eos_token_id": 2, "ffn_dim": 4096, "hidden_size": 1024, "max_position_embeddings": 2048,
        "model_type": "opt", "num_attention_heads": 16, "num_hidden_layers": 24, "pad_token_id": 1,
        "torch_dtype": "float16", "vocab_size": 50272, "word_embed_proj_dim": 512,
    },
    "meta-llama/Llama-3.2-1B": {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu",
        "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
        "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
        "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": True,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 128256,
    },
    "meta-llama/Llama-3.1-8B-Instruct": {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "hidden_size": 4096,
        "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False,
        "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
        "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "tie_word_embeddings": False, "vocab_size": 128256,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    },
    "HuggingFaceTB/SmolLM2-135M": {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "silu", "hidden_size": 576,
        "initializer_range": 0.041666666666666664, "intermediate_size": 1536, "is_llama_config": True,
        "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 9,
        "num_hidden_layers": 30, "num_key_value_heads": 3, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_interleaved": False, "rope_scaling": None, "rope_theta": 100000,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 49152,
    },
    "mistralai/Mistral-7B-v0.1": {
        "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
        "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
        "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
        "sliding_window": 4096, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 32000,
        "rope_scaling": None,
    },
    "Qwen/Qwen2.5-0.5B": {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
        "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 24,
        "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "use_cache": True, "use_mrope": False, "use_sliding_window": False,
        "vocab_size": 151936, "rope_scaling": None,
    },
    "Qwen/Qwen3-0.6B": {
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
        "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
        "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
        "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
    },
}
# fmt: on


@pytest.mark.parametrize("hub_id", PUBLISHED)
def test_published_configs_are_accepted(hub_id):
    d = PUBLISHED[hub_id]
    config = zojax.models.config_from_hf(d)
    via_transformers = zojax.models.config_from_hf(transformers.AutoConfig.for_model(**d))
    assert via_transformers == config
    assert config.hidden_size == d["hidden_size"] and config.num_hidden_layers == d["num_hidden_layers"]
    if d["model_type"] == "opt":
        assert config.projects == (hub_id == "facebook/opt-350m") and config.tie_word_embeddings
        assert config.has_final_layer_norm == d["do_layer_norm_before"]
    else:
        assert config.rope_theta == d["rope_theta"]
        assert (config.rope_scaling is None) == (d["rope_scaling"] is None)
        assert config.head_dim == d.get("head_dim", d["hidden_size"] // d["num_attention_heads"])
        assert config.sliding_window == (d["sliding_window"] if d["model_type"] == "mistral" else None)
        assert config.qkv_bias == (d["model_type"] == "qwen2") and config.qk_norm == (d["model_type"] == "qwen3")
