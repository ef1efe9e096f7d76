"""LoRA and prefix-tuning (zojax.peft) against numpy-merged weights, transformers' KV cache and
the base model; training touches only the adapters; a LoRA ZO step needs less memory."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers

import zojax
import zojax.models
import zojax.peft

ATOL = 1e-4
TINY = {
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 100.0},
    ),
    "opt": lambda: transformers.OPTConfig(
        vocab_size=101, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=32,
    ),
    "qwen2": lambda: transformers.Qwen2Config(  # q/k/v biases, tied embeddings
        vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True,
    ),
    "qwen3": lambda: transformers.Qwen3Config(  # q/k norms
        vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, tie_word_embeddings=False,
    ),
}
OUT_PROJ = {"llama": "o_proj", "opt": "out_proj", "qwen2": "o_proj", "qwen3": "o_proj"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """`tiny(name)` -> (zojax Model, transformers model) of one random checkpoint (norm scales
    and biases random too)."""
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            hf = transformers.AutoModelForCausalLM.from_config(TINY[name]()).eval()
            with torch.no_grad():
                for n, p in hf.named_parameters():
                    p.copy_(0.3 * torch.randn_like(p) + float("norm" in n and n.endswith("weight")))
            folder = tmp_path_factory.mktemp(name)
            hf.save_pretrained(folder)
            cache[name] = zojax.models.load(folder), hf
        return cache[name]

    return get


@pytest.fixture(scope="module")
def batch():
    """(input_ids, attention_mask) [3, 10]: row 0 left-padded, row 1 right-padded, row 2 full."""
    ids = np.random.default_rng(0).integers(3, 101, (3, 10))
    mask = np.ones_like(ids)
    mask[0, :3] = 0
    mask[1, 8:] = 0
    return np.where(mask == 1, ids, 0), mask


def randomised(tree, seed, scale=0.3):
    """`tree` with N(0, scale²) added to every leaf, so that B != 0 and prefixes move."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([x + scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def masked_error(a, b, mask):
    return float(np.abs(np.asarray(a) - np.asarray(b))[np.asarray(mask, bool)].max())


def hf_logits(hf, ids, mask, cache=None):
    """transformers logits with positions counted over non-pad tokens (as zojax does), optionally
    after a prefix held in `cache`: its slots are unmasked and take no positions."""
    ids, mask = torch.from_numpy(np.asarray(ids)).long(), torch.from_numpy(np.asarray(mask)).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    if cache is not None:
        mask = torch.cat([torch.ones(len(ids), cache.get_seq_length(), dtype=torch.long), mask], dim=1)
    with torch.inference_mode():
        out = hf(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache)
    return out.logits.float().numpy()


# --------------------------------------------------------------------------- LoRA


@pytest.mark.parametrize("name", list(TINY))
def test_lora_starts_with_zero_effect(tiny, batch, name):
    m, _ = tiny(name)
    peft = zojax.peft.lora(m)
    (q, v) = (peft.params["layers"]["self_attn"][n] for n in ("q_proj", "v_proj"))
    assert q["lora_a"].shape == (2, 32, 8) and v["lora_b"].shape == (2, 8, 32 if name == "opt" else 16)
    assert np.all(np.asarray(q["lora_a"]) != 0) and np.abs(q["lora_a"]).max() <= 32**-0.5
    assert not np.any(np.asarray(q["lora_b"])) and peft.scale == 2
    ids, mask = batch
    np.testing.assert_allclose(peft.apply(m.params, peft.params, ids, mask), m.apply(m.params, ids, mask), atol=1e-6)


@pytest.mark.parametrize("name", list(TINY))
def test_lora_equals_numpy_merged_weights_and_merge_exports(tiny, batch, name, tmp_path):
    m, _ = tiny(name)
    peft = zojax.peft.lora(m, targets=("q_proj", "v_proj", OUT_PROJ[name]), rank=4, alpha=12, key=1)
    adapters = randomised(peft.params, 0)
    ids, mask = batch
    logits = peft.apply(m.params, adapters, ids, mask)

    reference = jax.tree.map(np.asarray, m.params)
    for proj, lora in adapters["layers"]["self_attn"].items():
        a, b = np.asarray(lora["lora_a"], np.float64), np.asarray(lora["lora_b"], np.float64)
        dense = reference["layers"]["self_attn"][proj]
        dense["kernel"] = (dense["kernel"] + (12 / 4) * a @ b).astype(np.float32)  # alpha / rank
    expected = m.apply(reference, ids, mask)
    assert masked_error(expected, m.apply(m.params, ids, mask), mask) > 1  # the adapters matter
    assert masked_error(logits, expected, mask) < ATOL

    merged = peft.merge(m.params, adapters)
    assert merged["embed_tokens"]["embedding"] is m.params["embed_tokens"]["embedding"]
    assert masked_error(m.apply(merged, ids, mask), logits, mask) < ATOL
    zojax.models.save_hf(m, merged, tmp_path)
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert masked_error(hf_logits(exported, ids, mask), logits, mask) < ATOL


def test_lora_bad_input(tiny):
    llama, _ = tiny("llama")
    with pytest.raises(ValueError, match=r"\['qproj'\] match no projection of LlamaConfig; available: "
                       r"\['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj'\]"):
        zojax.peft.lora(llama, targets=("q_proj", "qproj"))
    opt, _ = tiny("opt")
    with pytest.raises(ValueError, match=r"\['o_proj'\] .* \['fc1', 'fc2', 'k_proj', 'out_proj', 'q_proj', 'v_proj'\]"):
        zojax.peft.lora(opt, targets="o_proj")
    with pytest.raises(ValueError, match="no LoRA targets"):
        zojax.peft.lora(opt, targets=())
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        zojax.peft.lora(opt, rank=0)
    prefix = zojax.peft.prefix(opt)
    with pytest.raises(ValueError, match="cannot be folded"):
        prefix.merge(opt.params, prefix.params)


# --------------------------------------------------------------------------- prefix


@pytest.mark.parametrize("name", list(TINY))
def test_prefix_is_initialised_from_real_activations(tiny, name):
    m, hf = tiny(name)
    peft = zojax.peft.prefix(m, num_tokens=5, key=3)
    tokens = jax.random.randint(zojax.perturb.as_key(3), (5,), 0, 101)
    with torch.inference_mode():
        cache = hf(input_ids=torch.tensor(np.asarray(tokens))[None], use_cache=True).past_key_values
    ours = peft.params["layers"]["prefix"]
    for i, layer in enumerate(cache.layers):  # transformers: [B, K, P, D]
        np.testing.assert_allclose(ours["key"][i], layer.keys[0].transpose(0, 1).numpy(), atol=1e-5)
        np.testing.assert_allclose(ours["value"][i], layer.values[0].transpose(0, 1).numpy(), atol=1e-5)


@pytest.mark.parametrize("name", list(TINY))
def test_prefix_equals_transformers_with_prefix_in_kv_cache(tiny, batch, name):
    m, hf = tiny(name)
    peft = zojax.peft.prefix(m, num_tokens=5)
    prefix = randomised(peft.params, 1)
    ids, mask = batch
    logits = peft.apply(m.params, prefix, ids, mask)
    assert masked_error(logits, m.apply(m.params, ids, mask), mask) > 0.1

    cache = transformers.DynamicCache()
    for i in range(2):
        key, value = (np.asarray(prefix["layers"]["prefix"][c][i]).transpose(1, 0, 2) for c in ("key", "value"))
        cache.update(*(torch.from_numpy(np.broadcast_to(x, (3, *x.shape)).copy()) for x in (key, value)), i)
    assert masked_error(logits, hf_logits(hf, ids, mask, cache), mask) < ATOL


def test_generate_with_attached_prefix_is_greedy_decoding(tiny, batch):
    m, _ = tiny("llama")
    peft = zojax.peft.prefix(m)
    adapters = randomised(peft.params, 2)
    ids, mask = batch
    new = m.generate(peft.attach(m.params, adapters), ids, mask, max_new_tokens=3)
    # Greedy decoding by full forward passes over a buffer with room for the new tokens.
    seq, seq_mask = np.pad(ids, ((0, 0), (0, 3))), np.pad(mask, ((0, 0), (0, 3)))
    for i in range(3):
        logits = np.asarray(peft.apply(m.params, adapters, seq, seq_mask))
        last = np.max(np.where(seq_mask, np.arange(seq.shape[1]), 0), axis=1)
        seq[:, 10 + i], seq_mask[:, 10 + i] = np.argmax(logits[np.arange(3), last], axis=-1), 1
    np.testing.assert_array_equal(new, seq[:, 10:])


# --------------------------------------------------------------------------- training


def loss_of(logits, ids, mask):
    """Next-token cross-entropy over the non-pad tokens."""
    nll = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:])
    return jnp.sum(nll * mask[:, 1:]) / jnp.sum(mask[:, 1:])


def test_param_hook_acts_on_the_adapters_as_perturbing_them_would(tiny, batch):
    m, _ = tiny("opt")
    peft = zojax.peft.lora(m)
    adapters = randomised(peft.params, 3, scale=0.1)
    ids, mask = batch
    plain = lambda a: loss_of(peft.apply(m.params, a, ids, mask), ids, mask)
    hooked = lambda a, param_hook=None: loss_of(peft.apply(m.params, a, ids, mask, param_hook=param_hook), ids, mask)
    args = (adapters, zojax.HashGaussian(), zojax.perturb.as_key(5), 7, 0.05, peft.stacked)
    ref, via_hook = zojax.two_point(plain, *args), zojax.two_point(hooked, *args)
    assert abs(ref.f_plus - ref.f_minus) > 1e-3
    np.testing.assert_array_equal(via_hook, ref)


OPTIMIZERS = {  # the hash sampler compiles faster than threefry
    "mezo": lambda s: zojax.mezo(1e-2, eps=1e-2, sampler="hash", stacked=s),
    "lozo": lambda s: zojax.lozo(1e-2, eps=1e-2, rank=2, nu=2, base_sampler="hash", stacked=s),
    "adam": lambda s: optax.adam(1e-2),
}


@pytest.mark.parametrize("kind, optimizer", [("lora", "mezo"), ("lora", "adam"), ("prefix", "lozo")])
def test_training_changes_only_the_adapters(tiny, batch, kind, optimizer):
    m, _ = tiny("llama")
    peft = getattr(zojax.peft, kind)(m)
    tx = OPTIMIZERS[optimizer](peft.stacked)
    ids, mask = batch

    def step(base, adapters, state):
        value_fn = lambda a, param_hook=None: loss_of(peft.apply(base, a, ids, mask, param_hook=param_hook), ids, mask)
        if optimizer == "adam":
            updates, state = tx.update(jax.grad(value_fn)(adapters), state, adapters)
        else:
            updates, state = tx.update(None, state, adapters, value_fn=value_fn)
        return optax.apply_updates(adapters, updates), state

    step = jax.jit(step, donate_argnums=(1, 2))  # as zojax.train donates its params and state
    base_before = jax.tree.map(np.array, m.params)
    adapters = jax.tree.map(jnp.copy, peft.params)
    state = tx.init(adapters)
    for _ in range(3):
        adapters, state = step(m.params, adapters, state)
    assert jax.tree.structure(adapters) == jax.tree.structure(peft.params)
    jax.tree.map(np.testing.assert_array_equal, m.params, base_before)
    changed = jax.tree.map(lambda new, old: bool(jnp.any(new != old)), adapters, peft.params)
    assert all(jax.tree.leaves(changed)), changed
    loss = lambda a: float(loss_of(peft.apply(m.params, a, ids, mask), ids, mask))
    assert np.isfinite(loss(adapters)) and loss(adapters) != loss(peft.params)


def random_llama(hidden=256, layers=4, vocab=1000):
    config = zojax.models.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, head_dim=hidden // 4,
    )
    params, rng = {}, np.random.default_rng(0)
    for t in config.hf_tensors():
        node = params
        for k in t.path[:-1]:
            node = node.setdefault(k, {})
        node[t.path[-1]] = jnp.asarray(0.02 * rng.standard_normal(t.shape(layers), np.float32))
    return zojax.models.Model(config, params)


def step_bytes(step, donate, *args) -> int:
    """Bytes a jitted step holds: arguments, temporaries and outputs not aliased to arguments."""
    stats = jax.jit(step, donate_argnums=donate).lower(*args).compile().memory_analysis()
    held = stats.argument_size_in_bytes + stats.temp_size_in_bytes + stats.output_size_in_bytes
    return held - stats.alias_size_in_bytes


def test_lora_zo_step_needs_less_memory_than_full_parameter_step():
    m = random_llama()
    ids = jax.random.randint(jax.random.key(1), (4, 64), 0, 1000)
    mask = jnp.ones_like(ids)
    tx = zojax.lozo(1e-3, base_sampler="hash")  # zojax.train's default optimizer
    peft = zojax.peft.lora(m)

    def full_step(params, state):
        value_fn = lambda p, param_hook=None: loss_of(m.apply(p, ids, mask, param_hook=param_hook), ids, mask)
        updates, state = tx.update(None, state, params, value_fn=value_fn)
        return optax.apply_updates(params, updates), state

    def lora_step(base, adapters, state):
        value_fn = lambda a, param_hook=None: loss_of(peft.apply(base, a, ids, mask, param_hook=param_hook), ids, mask)
        updates, state = tx.update(None, state, adapters, value_fn=value_fn)
        return optax.apply_updates(adapters, updates), state

    # Donated as in zojax.train: params and state, or adapters and state (the base is read only).
    full = step_bytes(full_step, (0, 1), m.params, tx.init(m.params))
    lora = step_bytes(lora_step, (1, 2), m.params, peft.params, tx.init(peft.params))
    params = sum(x.nbytes for x in jax.tree.leaves(m.params))
    print(f"\nLOZO step, {params / 2**20:.1f} MiB of params: full {full / 2**20:.1f} MiB, LoRA {lora / 2**20:.1f} MiB")
    assert lora < full


def test_lora_adapters_are_nnx_lora_params_of_the_module(tiny, batch):
    """The attached tree's module holds the factors as `nnx.LoRAParam`: a Flax user can take
    `nnx.state(module, nnx.LoRAParam)` and train only them with `nnx.Optimizer`."""
    from flax import nnx

    m, _ = tiny("llama")
    peft = zojax.peft.lora(m)
    module = zojax.models.Model(m.config, peft.attach(m.params, randomised(peft.params, 4, 0.1))).module
    lora = nnx.to_pure_dict(nnx.state(module, nnx.LoRAParam))
    assert jax.tree.structure(lora) == jax.tree.structure(peft.params)
    ids, mask = batch
    optimizer = nnx.Optimizer(module, optax.sgd(0.1), wrt=nnx.LoRAParam)
    loss = lambda model: loss_of(model(ids, mask), ids, mask)
    before = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(module, nnx.Param)))
    grads = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(module)
    optimizer.update(module, grads)
    after = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    names = [zojax.perturb.path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(after)]
    moved = {n for n, a, b in zip(names, jax.tree.leaves(after), jax.tree.leaves(before)) if np.any(np.asarray(a) != b)}
    assert moved == {n for n in names if n.endswith(("lora_a", "lora_b"))} and moved
