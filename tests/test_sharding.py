"""zojax.sharding: meshes, partition rules, batches; ZO steps on one device equal the same
steps on meshes of 8 CPU devices and on two processes (tests/sharding_worker.py)."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import zojax
import zojax.models
from zojax import perturb
from zojax import sharding as S

WORKER = Path(__file__).with_name("sharding_worker.py")
TIMEOUT = 900  # seconds, per worker (compiling is most of it; slow on a loaded machine)
# Float32 params after 5 steps: meshes reduce the loss in another order, and c = Δf / 2ε
# scales that rounding by 1/2ε = 50. Observed differences are ~2e-6; every leaf moves > 6e-3.
ATOL = 1e-5


def abstract_mesh(spec, num_devices):
    """A mesh of the given sizes without devices: enough for placing shapes."""
    return AbstractMesh(S.mesh_shape(spec, num_devices), S.AXES, axis_types=(AxisType.Auto,) * 3)


def shapes(config):
    """The parameter tree of a zojax model config, as ShapeDtypeStructs."""
    tree = {}
    for t in config.hf_tensors():
        node = tree
        for k in t.path[:-1]:
            node = node.setdefault(k, {})
        node[t.path[-1]] = jax.ShapeDtypeStruct(t.shape(config.num_hidden_layers), jnp.bfloat16)
    return tree


def flat(tree):
    return {perturb.path_name(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def specs(tree, mesh, rules=None):
    return {path: s.spec for path, s in flat(S.param_shardings(tree, mesh, rules)).items()}


OPT_66B = zojax.models.OPTConfig(
    vocab_size=50272, hidden_size=9216, num_hidden_layers=64, ffn_dim=36864, num_attention_heads=72,
    max_position_embeddings=2048, word_embed_proj_dim=9216,
)
OPT_350M = zojax.models.OPTConfig(
    vocab_size=50272, hidden_size=1024, num_hidden_layers=24, ffn_dim=4096, num_attention_heads=16,
    max_position_embeddings=2048, word_embed_proj_dim=512, do_layer_norm_before=False,
)
LLAMA_8B = zojax.models.LlamaConfig(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, head_dim=128,
)


# ------------------------------------------------------------------------------ meshes


def test_mesh_shape_infers_minus_one():
    assert S.mesh_shape("1,-1,1", 8) == (1, 8, 1)
    assert S.mesh_shape("2,-1,2", 8) == (2, 2, 2)
    assert S.mesh_shape((2, 4, 1), 8) == (2, 4, 1)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("2,2,1", "has 4 devices .* but there are 8"),
        ("3,-1,1", "product 3 does not divide 8 devices"),
        ("1,-1", "three sizes"),
        ("-1,-1,1", "at most one of them -1"),
        ("0,-1,1", "three sizes >= 1"),
        ("a,-1,1", "comma-separated integers"),
    ],
)
def test_mesh_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        S.mesh_shape(spec, 8)


def test_make_mesh_has_auto_axes():
    mesh = S.make_mesh("1,-1,1")
    assert mesh.axis_names == S.AXES and dict(mesh.shape) == {"data": 1, "fsdp": jax.device_count(), "tensor": 1}
    assert mesh.axis_types == (AxisType.Auto,) * 3
    with pytest.raises(ValueError, match="but there are"):
        S.make_mesh(f"{jax.device_count() + 1},1,1")


# ------------------------------------------------------------------------------ rules


def test_default_rules_fsdp_and_megatron_tensor_parallel():
    got = specs(shapes(LLAMA_8B), abstract_mesh("1,-1,8", 64))
    assert got["layers/self_attn/q_proj/kernel"] == P(None, "fsdp", "tensor")  # layer axis unsharded
    assert got["layers/self_attn/k_proj/kernel"] == P(None, "fsdp", "tensor")
    assert got["layers/self_attn/o_proj/kernel"] == P(None, "tensor", "fsdp")
    assert got["layers/mlp/up_proj/kernel"] == P(None, "fsdp", "tensor")
    assert got["layers/mlp/down_proj/kernel"] == P(None, "tensor", "fsdp")
    assert got["embed_tokens/embedding"] == P("tensor", "fsdp") and got["lm_head/kernel"] == P("fsdp", "tensor")
    assert got["norm/scale"] == P(None) and got["layers/input_layernorm/scale"] == P(None, None)


@pytest.mark.parametrize("config", [OPT_66B, OPT_350M, LLAMA_8B], ids=["opt-66b", "opt-350m", "llama-8b"])
@pytest.mark.parametrize("spec, devices", [("1,-1,1", 64), ("2,-1,8", 256), ("-1,1,1", 8)])
def test_default_rules_place_every_parameter(config, spec, devices):
    got = specs(shapes(config), abstract_mesh(spec, devices))
    assert set(got) == {"/".join(t.path) for t in config.hf_tensors()}


def test_rules_map_the_names_that_modules_declare():
    """Specs come from the logical names on each module's parameters: the same for every
    family's module, a LoRA factor or prefix replicated, one table swapped for another."""
    from flax import nnx

    module = zojax.models.base.abstract_module(zojax.models.Qwen3Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, qkv_bias=True))
    declared = nnx.get_partition_spec(nnx.state(module, nnx.Param))
    assert tuple(declared["layers"]["mlp"]["down_proj"]["kernel"].get_value()) == ("layers", "mlp", "embed")
    tree = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(nnx.state(module)))
    tree["layers"]["self_attn"]["q_proj"] |= {"lora_a": jax.ShapeDtypeStruct((2, 32, 4), jnp.float32)}
    got = specs(tree, abstract_mesh("1,-1,4", 8))
    assert got["layers/self_attn/q_norm/scale"] == P(None, None) and got["layers/self_attn/q_proj/bias"] == P(None, None)
    assert got["layers/self_attn/q_proj/kernel"] == P(None, "fsdp", "tensor")
    assert got["layers/self_attn/q_proj/lora_a"] == P(None, None, None)
    swapped = specs(tree, abstract_mesh("1,-1,4", 8), rules=[("embed", "tensor"), ("mlp", "fsdp")])
    assert swapped["layers/mlp/down_proj/kernel"] == P(None, "fsdp", "tensor")
    assert swapped["embed_tokens/embedding"] == P(None, "tensor")  # "vocab" no longer listed


def test_undeclared_parameters_are_listed_in_one_error():
    tree = shapes(LLAMA_8B)
    tree["layers"]["extra"] = {"w": jax.ShapeDtypeStruct((32, 8, 8), jnp.float32)}
    tree["scale"] = jax.ShapeDtypeStruct((8,), jnp.float32)
    with pytest.raises(ValueError, match="no model declares the logical axes of: layers/extra/w, scale"):
        S.param_shardings(tree, abstract_mesh("1,-1,1", 8))


def test_indivisible_and_unknown_axes_are_listed():
    tree = {"embed_tokens": {"embedding": jax.ShapeDtypeStruct((2050, 64), jnp.float32)},
            "norm": {"scale": jax.ShapeDtypeStruct((8,), jnp.float32)}}
    rules = [("embed", "fsdp"), ("vocab", "fsdp"), ("norm", "model")]
    with pytest.raises(ValueError) as e:
        S.param_shardings(tree, abstract_mesh("1,-1,1", 4), rules)
    assert "embed_tokens/embedding (2050, 64): axis 0 ('vocab', size 2050) is not divisible by mesh axes 'fsdp' (size 4)" in str(e.value)
    assert re.search(r"  norm/scale: 'norm' -> \['model'\], not axes of the mesh", str(e.value))


def test_loader_sharding_checks_the_whole_config_up_front():
    """Every indivisible parameter of the config is named before anything is read."""
    mesh = abstract_mesh("1,-1,1", 8)
    odd = zojax.models.LlamaConfig(
        vocab_size=1001, hidden_size=64, intermediate_size=100, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, head_dim=16)
    with pytest.raises(ValueError) as e:
        S.loader_sharding(mesh, [("mlp", "fsdp"), ("vocab", "fsdp")], config=odd)
    problems = [line for line in str(e.value).splitlines() if line.startswith("  ")]
    assert len(problems) == 5, problems  # gate, up, down (mlp 100); table and lm_head (vocab 1001)
    fn = S.loader_sharding(mesh, config=LLAMA_8B)
    assert fn("layers/mlp/down_proj/kernel", (32, 14336, 4096)).spec == P(None, "tensor", "fsdp")


def test_batch_rows_must_divide_the_data_axes():
    mesh = abstract_mesh("2,4,1", 8)
    with pytest.raises(ValueError, match=r"divisible by the 8 devices of mesh axes \('data', 'fsdp'\).*ids \(12, 5\)"):
        S.shard_batch({"ids": np.zeros((12, 5)), "mask": np.zeros((8, 5))}, mesh)


def test_shard_batch_on_one_device():
    mesh = S.make_mesh("1,-1,1")
    batch = {"ids": np.arange(8 * jax.device_count()).reshape(-1, 8), "gold": np.arange(jax.device_count())}
    out = S.shard_batch(batch, mesh)
    np.testing.assert_array_equal(out["ids"], batch["ids"])
    assert out["ids"].sharding.spec == P(("data", "fsdp"), None)
    rows = S.process_rows(mesh, 2 * jax.device_count())
    np.testing.assert_array_equal(rows, np.arange(2 * jax.device_count()))


def test_state_shardings_give_moments_the_params_shardings_and_replicate_the_rest():
    import optax

    mesh = S.make_mesh("1,-1,1")
    params = {"b": jnp.zeros(6), "w": jnp.zeros((4, 6))}
    shardings = {"b": NamedSharding(mesh, P()), "w": NamedSharding(mesh, P("fsdp", "tensor"))}
    replicated = NamedSharding(mesh, P())

    adam = optax.adam(1e-3)
    out = S.state_shardings(adam.init(params), params, shardings)
    assert out[0].mu == shardings and out[0].nu == shardings and out[0].count == replicated

    lozo_m = zojax.lozo(1e-3, rank=2, nu=5, momentum=0.9)  # momentum in the low-rank factor: not params-shaped
    state = lozo_m.init(params)
    out = S.state_shardings(state, params, shardings)
    assert jax.tree.structure(out) == jax.tree.structure(state)
    assert set(jax.tree.leaves(out)) == {replicated}

    one = jax.tree.map(lambda x: x.sharding, params)  # one device, no mesh: everything on it
    assert set(jax.tree.leaves(S.state_shardings(adam.init(params), params, one))) == set(jax.tree.leaves(one))


# ------------------------------------------------------------------------------ 8 devices, 2 processes


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random transformers LLaMA: hidden 64, 2 layers, vocab 512, 8 heads / 4 KV heads."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=64,
    )
    path = tmp_path_factory.mktemp("tiny_llama")
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workers(model_dir, tmp_path_factory):
    """The 8-device worker and the two multihost processes, started together (they use
    different cores while compiling)."""
    out = tmp_path_factory.mktemp("sharding")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
    run = lambda *args: subprocess.Popen(
        [sys.executable, str(WORKER), *map(str, args)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    port = _free_port()
    procs = {
        "meshes": [run("meshes", model_dir, out / "meshes")],
        "multihost": [run("multihost", model_dir, out / "multihost", port, i) for i in range(2)],
    }
    yield out, procs
    for p in procs["meshes"] + procs["multihost"]:
        p.kill()


def _wait(procs):
    results = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            pytest.fail(f"worker {p.args[2:]} timed out after {TIMEOUT}s")
        results.append((p.returncode, stdout, stderr))
    return results


@pytest.fixture(scope="module")
def meshes(workers):
    out, procs = workers
    [(code, _, stderr)] = _wait(procs["meshes"])
    assert code == 0, stderr[-3000:]
    return dict(np.load(out / "meshes.npz")), json.loads((out / "meshes.json").read_text())


@pytest.fixture(scope="module")
def multihost(workers):
    out, procs = workers
    results = _wait(procs["multihost"])
    if any(code == 77 for code, _, _ in results):
        pytest.skip("this jaxlib has no gloo CPU collectives: " + " ".join(e.strip() for _, _, e in results)[-500:])
    for code, stdout, stderr in results:
        assert code == 0, stderr[-3000:]
        assert "ok" in stdout
    return dict(np.load(out / "multihost.npz"))


def _compare(results, name, reference):
    keys = [k for k in results if k.startswith(name + "/")]
    assert len(keys) == 12, keys  # every parameter of the tiny LLaMA
    single = name.split("/")[0] + "/single"
    return max(float(np.abs(results[k] - reference[k.replace(name, single)]).max()) for k in keys)


def test_z_is_the_same_on_one_device_and_split_over_eight(meshes):
    results, _ = meshes
    keys = [k for k in results if k.startswith("z/single/")]
    assert len(keys) == 9  # gaussian, hash, lowrank x embedding, q_proj, down_proj
    for k in keys:
        np.testing.assert_array_equal(results[k.replace("single", "1,2,4")], results[k], err_msg=k)


@pytest.mark.parametrize("mesh", ["2,4,1", "2,1,4"])
@pytest.mark.parametrize("optimizer", ["mezo", "lozo", "adamezo"])
def test_steps_on_a_mesh_equal_steps_on_one_device(meshes, model_dir, optimizer, mesh):
    results, _ = meshes
    assert _compare(results, f"{optimizer}/{mesh}", results) < ATOL
    initial = flat(zojax.models.load(model_dir).params)
    moved = min(float(np.abs(results[f"{optimizer}/single/{k}"] - np.asarray(x)).max()) for k, x in initial.items())
    assert moved > 100 * ATOL, f"{optimizer} hardly moved the params ({moved}): the comparison would prove nothing"


def test_fsdp_gather_hook_and_data_parallel_only_give_the_same_steps(meshes):
    results, _ = meshes
    assert _compare(results, "mezo/2,4,1+gather", results) < ATOL
    assert _compare(results, "mezo/8,1,1", results) < ATOL


def _shape(hlo_shape):
    return re.sub(r"\{[\d,]*\}", "", hlo_shape)


def test_data_parallel_step_communicates_two_scalars(meshes):
    """Parameters replicated, the batch split 8 ways: each forward's loss is one all-reduced
    float32 scalar (two_point runs the two forwards as one loop body, twice); the update,
    which every device computes from (key, step, c), sends nothing."""
    _, report = meshes
    assert [(op, _shape(s), runs) for op, s, runs in report["mezo/8,1,1"]] == [("all-reduce", "f32[]", 2)]


def test_tensor_parallel_all_reduces_activations_twice_per_layer(meshes):
    _, report = meshes
    ops = [(op, _shape(s), runs) for op, s, runs in report["mezo/2,1,4"]]
    assert {op for op, _, _ in ops} == {"all-reduce"}  # weights never move
    # [batch / data, tokens, hidden] after attention and after the MLP: 2 layers x 2 forwards
    assert ops.count(("all-reduce", "f32[4,16,64]", 4)) == 2


def test_fsdp_gather_hook_all_gathers_each_layer_weight_per_forward(meshes):
    _, report = meshes
    ops = [(op, _shape(s), runs) for op, s, runs in report["mezo/2,4,1+gather"]]
    layer_gathers = sorted(s for op, s, runs in ops if op == "all-gather" and runs == 4)  # 2 layers x 2 forwards
    assert layer_gathers == sorted(["f32[64,64]"] * 2 + ["f32[64,32]"] * 2 + ["f32[64,128]"] * 2 + ["f32[128,64]"])
    assert [o for o in ops if o[0] == "all-reduce"] == [("all-reduce", "f32[]", 2)]  # no activations


def test_no_step_reduce_scatters(meshes):
    """Nothing like a gradient is ever reduced: no reduce-scatter on any mesh."""
    _, report = meshes
    assert not [name for name, ops in report.items() for op, _, _ in ops if op == "reduce-scatter"]


def test_two_processes_equal_one(meshes, multihost):
    """jax.distributed over gloo, 2 processes x 4 CPU devices, a 2x4 mesh, each process
    feeding only its own rows of the batch: MeZO's params equal those of one device."""
    results, _ = meshes
    assert _compare(multihost, "mezo/multihost", results) < ATOL


def test_gather_hook_reads_tables_through_the_optimizer_hooks_rows():
    """`gather_hook` keeps a hook's row form, so the model reads embedding tables row by row
    (perturbing only the rows it uses) under FSDP too."""
    mesh = S.make_mesh("1,-1,1")
    table = {"embedding": jnp.arange(40.0).reshape(10, 4)}
    hook = perturb.make_param_hook(perturb.Gaussian(), perturb.as_key(0), 1, 0.5)
    ids = jnp.array([[3, 1], [9, 3]])
    got = S.gather_hook(mesh, hook=hook).rows(("embed_tokens",), table, ids)
    np.testing.assert_array_equal(got["embedding"], hook.rows(("embed_tokens",), table, ids)["embedding"])
    plain = S.gather_hook(mesh).rows(("embed_tokens",), table, ids)
    np.testing.assert_array_equal(plain["embedding"], table["embedding"][ids])


def test_fsdp_gather_hook_step_memory(tmp_path):
    """Compiled per-device temporaries of a MeZO step on 8 devices (FSDP) with `gather_hook`
    against the same step without gathering, for a tied model whose table (four chunks of the
    tied logits) outweighs a layer 57 times. Gathering adds about one gathered chunk of table
    rows (measured 1.25 chunks, 2.6 MB); a `gather_hook` without the row form perturbs and
    gathers the whole table instead (measured 4.3 MB more, half the table)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, str(WORKER), "memory", str(tmp_path / "memory")], env=env,
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads((tmp_path / "memory.json").read_text())
    assert r["table"] > 50 * r["layer"]
    assert r["gather"] - r["plain"] < 1.5 * r["chunk"], r
    assert r["gather_without_rows"] - r["gather"] > r["table"] / 2, r
