"""Loading and saving checkpoints: formats, round trips, errors, sharded loading, the CLI."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import zojax.models
from zojax.models import convert


def assert_same_params(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_save_hf_round_trip(tiny_dir, tiny_name, batch, tmp_path, hf_logits, max_error, logits_atol):
    """transformers reads back the very tensors (so the very logits), and zojax's logits match
    them within the forward parity bound (see test_logits_match_transformers)."""
    folder = tiny_dir(tiny_name)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    m = zojax.models.load(folder)
    assert m.tokenizer is not None
    zojax.models.save_hf(m, m.params, tmp_path)

    hf2 = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf2) is type(hf)
    ref, ref2 = hf.state_dict(), hf2.state_dict()
    assert ref.keys() == ref2.keys()
    for k in ref:
        torch.testing.assert_close(ref2[k], ref[k], rtol=0, atol=0)
    ids, mask = batch
    np.testing.assert_array_equal(hf_logits(hf2, ids, mask), hf_logits(hf, ids, mask))
    assert max_error(m.apply(m.params, ids, mask), hf_logits(hf2, ids, mask), mask) < logits_atol
    assert_same_params(zojax.models.load(tmp_path).params, m.params)
    # transformers' AutoTokenizer reads any qwen2 folder's tokenizer as a BPE Qwen2Tokenizer,
    # which the word-level test tokenizer is not.
    if hf.config.model_type != "qwen2":
        tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
        assert tok("w5 w7 w100")["input_ids"] == m.tokenizer("w5 w7 w100")["input_ids"] == [5, 7, 100]


def test_save_hf_writes_shards_with_index(tiny_dir, tmp_path, batch, hf_logits, max_error, logits_atol):
    m = zojax.models.load(tiny_dir("opt"))
    zojax.models.save_hf(m, m.params, tmp_path, max_shard_size=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids, mask = batch
    assert max_error(m.apply(m.params, ids, mask), hf_logits(hf, ids, mask), mask) < logits_atol


def test_sharded_safetensors_and_bin_checkpoints(tiny_dir, tmp_path):
    folder = tiny_dir("llama_gqa_tied")
    reference = zojax.models.load(folder).params
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder)

    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="20KB")
    assert len(json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]) > 0
    assert not (sharded / "model.safetensors").exists()
    assert_same_params(zojax.models.load(sharded).params, reference)

    pt = tmp_path / "bin"
    pt.mkdir()
    shutil.copy(folder / "config.json", pt)
    torch.save(hf.state_dict(), pt / "pytorch_model.bin")  # includes the tied lm_head.weight
    assert_same_params(zojax.models.load(pt).params, reference)
    bf16 = zojax.models.load(pt, dtype="bfloat16").params
    assert_same_params(bf16, jax.tree.map(lambda x: x.astype("bfloat16"), reference))


def test_legacy_opt_names_without_model_prefix(tiny_dir, tmp_path):
    folder = copy(tiny_dir("opt"), tmp_path / "legacy")
    tensors = load_file(folder / "model.safetensors")
    save_file({k.removeprefix("model."): v for k, v in tensors.items()}, folder / "model.safetensors")
    assert_same_params(zojax.models.load(folder).params, zojax.models.load(tiny_dir("opt")).params)


def test_mismatched_checkpoint_reports_every_problem_at_once(tiny_dir, tmp_path):
    folder = copy(tiny_dir("llama_gqa_tied"), tmp_path / "bad")
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.self_attn.k_proj.weight"] = tensors["model.layers.0.self_attn.k_proj.weight"][:8]
    tensors["model.layers.0.self_attn.extra.weight"] = np.zeros((3,), np.float32)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(zojax.models.CheckpointError) as e:
        zojax.models.load(folder)
    msg = str(e.value)
    assert str(folder) in msg
    assert "missing: model.layers.1.mlp.up_proj.weight (expected shape (64, 32))" in msg
    assert "wrong shape: model.layers.0.self_attn.k_proj.weight: expected (16, 32), found (8, 32)" in msg
    assert "unexpected: model.layers.0.self_attn.extra.weight (shape (3,))" in msg


@pytest.mark.parametrize(
    "name, change, named",
    [
        ("llama_untied", {"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ("llama_untied", {"sliding_window": 4096}, "sliding_window=4096"),
        ("llama_untied", {"attn_logit_softcapping": 50.0}, "attn_logit_softcapping=50.0"),
        ("llama_untied", {"rope_interleaved": True}, "rope_interleaved=True"),
        (
            "llama_untied",
            {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}},
            "rope_type='yarn'",
        ),
        ("llama_untied", {"model_type": "gemma"}, "'gemma'"),
        ("mistral_window", {"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ("qwen2_untied", {"use_mrope": True}, "use_mrope=True"),
        ("qwen2_untied", {"layer_types": ["full_attention", "chunked_attention"]}, "layer_types="),
        (
            "qwen3_head_dim_bias",
            {"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}},
            "rope_type='longrope'",
        ),
        ("opt", {"activation_function": "gelu"}, "activation_function='gelu'"),
        ("opt", {"enable_bias": False}, "enable_bias=False"),
        ("opt", {"layer_norm_elementwise_affine": False}, "layer_norm_elementwise_affine=False"),
    ],
)
def test_unsupported_config_attribute_is_named(tiny_dir, tmp_path, name, change, named):
    folder = copy(tiny_dir(name), tmp_path / "cfg")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | change))
    with pytest.raises(ValueError, match="unsupported") as e:
        zojax.models.load(folder)
    assert named in str(e.value)


def test_truncated_files_name_the_file(tiny_dir, tmp_path):
    folder = copy(tiny_dir("opt"), tmp_path / "cut")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(zojax.models.CheckpointError, match="corrupt or truncated") as e:
        zojax.models.load(folder)
    assert str(weights) in str(e.value)

    weights.unlink()
    pt = folder / "pytorch_model.bin"
    torch.save(transformers.AutoModelForCausalLM.from_pretrained(tiny_dir("opt")).state_dict(), pt)
    pt.write_bytes(pt.read_bytes()[:5000])
    with pytest.raises(zojax.models.CheckpointError, match="corrupt or truncated") as e:
        zojax.models.load(folder)
    assert str(pt) in str(e.value)


def _write_gguf(hf, path):
    """Write a LLaMA transformers model as llama.cpp's converter does (q/k rows permuted)."""
    import gguf

    c = hf.config
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_context_length(c.max_position_embeddings)

    def permute(x, heads):
        return x.reshape(heads, 2, x.shape[0] // heads // 2, x.shape[1]).swapaxes(1, 2).reshape(x.shape)

    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    layer = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for k, v in hf.state_dict().items():
        x = v.numpy()
        if k.startswith("model.layers."):
            i, rest = k.removeprefix("model.layers.").split(".", 1)
            name = f"blk.{i}.{layer[rest.removesuffix('.weight')]}.weight"
            if "q_proj" in k:
                x = permute(x, c.num_attention_heads)
            if "k_proj" in k:
                x = permute(x, c.num_key_value_heads)
        else:
            name = names[k]
        w.add_tensor(name, np.ascontiguousarray(x))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_with_permuted_qk_matches_transformers(tiny_dir, tmp_path, batch, hf_logits, max_error, logits_atol):
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_dir("llama_untied")).eval()
    path = tmp_path / "tiny.gguf"
    _write_gguf(hf, path)
    m = zojax.models.load(path)
    assert m.tokenizer is None and m.config.num_key_value_heads == 4 and not m.config.tie_word_embeddings
    ids, mask = batch
    assert max_error(m.apply(m.params, ids, mask), hf_logits(hf, ids, mask), mask) < logits_atol

    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(zojax.models.CheckpointError, match="corrupt or truncated") as e:
        zojax.models.load(path)
    assert str(path) in str(e.value)


def _run(script, **env):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=os.environ | env,
        timeout=300,
    )


def test_hub_id_offline_says_hub_unreachable():
    r = _run(
        """
        import zojax.models
        try:
            zojax.models.load("facebook/opt-125m")
        except zojax.models.HubUnreachableError as e:
            print(e)
    """,
        HF_HUB_OFFLINE="1",
    )
    assert r.returncode == 0, r.stderr
    assert "hub is unreachable" in r.stdout and "local folder" in r.stdout and "facebook/opt-125m" in r.stdout


def test_missing_path_is_not_mistaken_for_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        zojax.models.load(tmp_path / "nowhere" / "model")


def test_missing_local_path_is_never_fetched_from_the_hub(tmp_path, monkeypatch):
    """`runs/ckpt` looks like a hub id, but `runs` is a local folder: the error names the path."""
    import huggingface_hub

    def download(*args, **kwargs):
        raise AssertionError("the hub was asked for a local path")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match=r"runs/ckpt: no such file.*'runs' is a local folder"):
        zojax.models.load("runs/ckpt")


def test_sharded_loading_reads_slices_and_equals_unsharded(tiny_dir, batch):
    """8 CPU devices; stacked weights sharded over their last (out) axis, the rest replicated."""
    ids, mask = batch
    r = _run(
        f"""
        import jax, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        import zojax.models
        from zojax.models import checkpoint

        reads = []
        read = checkpoint._SafetensorsReader.read
        def spy(self, name, index):
            x = read(self, name, index)
            reads.append((name, x.shape))
            return x
        checkpoint._SafetensorsReader.read = spy

        mesh = Mesh(np.array(jax.devices()), ("x",))
        def sharding(path, shape):
            spec = P(*[None] * (len(shape) - 1), "x") if path.startswith("layers/") else P()
            return NamedSharding(mesh, spec)

        folder = "{tiny_dir("llama_gqa_tied")}"
        sharded = zojax.models.load(folder, sharding=sharding)
        q = sharded.params["layers"]["self_attn"]["q_proj"]["kernel"]
        assert len(jax.devices()) == 8 and q.sharding.spec == P(None, None, "x"), q.sharding
        assert {{s.data.shape for s in q.addressable_shards}} == {{(2, 32, 4)}}
        q_reads = {{shape for name, shape in reads if name.endswith("q_proj.weight")}}
        assert q_reads == {{(4, 32)}}, q_reads  # one eighth of the rows of [out, in]

        plain = zojax.models.load(folder)
        for a, b in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(plain.params), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        ids, mask = np.array({ids.tolist()}), np.array({mask.tolist()})
        logits = sharded.apply(sharded.params, ids, mask)
        np.testing.assert_allclose(logits, plain.apply(plain.params, ids, mask), atol=1e-5)
        print("ok")
    """,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


@pytest.mark.parametrize("fmt", ["orbax", "hf"])
def test_convert_cli(tiny_dir, tmp_path, fmt):
    src = tiny_dir("opt350_post_ln_proj")
    convert.main([str(src), str(tmp_path / "out"), "--format", fmt, "--dtype", "bfloat16"])
    assert (tmp_path / "out" / ("params" if fmt == "orbax" else "model.safetensors")).exists()
    back = zojax.models.load(tmp_path / "out", dtype="bfloat16")
    assert back.config == zojax.models.load(src).config and back.tokenizer is not None
    assert_same_params(back.params, zojax.models.load(src, dtype="bfloat16").params)
