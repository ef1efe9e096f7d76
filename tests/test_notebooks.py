"""The notebooks, as a new user meets them: the wheel is built, a fresh virtual environment
gets only a Jupyter kernel, and each notebook runs top to bottom in fast mode from a folder
outside the checkout, its first cell installing the wheel (and whatever else it needs).

The committed notebooks keep the outputs of a full run; the tests execute copies and never
rewrite them. By hand: ``ZOJAX_FAST=1 jupyter nbconvert --execute --to notebook notebooks/*.ipynb``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NAMES = ("quickstart.ipynb", "compare_optimizers.ipynb", "convert_and_finetune.ipynb")
NEEDS_TORCH = {"convert_and_finetune.ipynb"}
CELL_TIMEOUT = 900  # seconds; the install cell of a fresh environment takes the longest
REPOSITORY = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


def read(name: str):
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def first_code_cell(name: str) -> str:
    return next(c for c in read(name).cells if c.cell_type == "code").source


def test_every_notebook_is_covered():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_first_cell_installs_from_one_pip_spec(name):
    first = first_code_cell(name)
    specs = re.findall(r'PIP_SPEC = os\.environ\.get\("ZOJAX_PIP_SPEC", "(.*?)"\)', first)
    assert specs == [f"zojax @ git+{REPOSITORY}"], first
    assert 'find_spec("zojax") is None' in first and "pip_install(PIP_SPEC)" in first
    assert ("torch" in first) == (name in NEEDS_TORCH), "only a notebook that needs torch installs it"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_keeps_a_full_run_and_is_valid(name):
    nb = read(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[-1].outputs, f"{name}: the last cell keeps the outputs of a full run"
    assert not any(o.output_type == "error" for c in code for o in c.outputs), f"{name}: a stored output is an error"
    assert "full mode" in "".join(o.get("text", "") for o in code[0].outputs), f"{name}: stored outputs are not of a full run"


def test_readme_opens_every_notebook_in_colab_from_the_repository_url():
    readme = (ROOT / "README.md").read_text()
    colab = "https://colab.research.google.com/github/" + REPOSITORY.removeprefix("https://github.com/")
    for name in NAMES:
        assert f"({colab}/blob/main/notebooks/{name})" in readme, name


def _run(*args, **kw):
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{args}: {out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def fresh_kernel(tmp_path_factory):
    """(wheel, kernel name, venv python): a new venv with only ipykernel, as a Jupyter kernel."""
    root = tmp_path_factory.mktemp("fresh")
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", root / "dist", ROOT, timeout=600)
    (wheel,) = (root / "dist").glob("zojax-*.whl")
    venv = root / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "-q", "ipykernel", timeout=600)
    _run(python, "-m", "ipykernel", "install", "--prefix", venv, "--name", "zojax-fresh")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(venv / "share" / "jupyter"), os.environ.get("JUPYTER_PATH")]))
    return wheel, "zojax-fresh", python


def _digest(name: str) -> str:
    return hashlib.sha256((NOTEBOOK_DIR / name).read_bytes()).hexdigest()


@pytest.mark.skipif(importlib.util.find_spec("nbclient") is None, reason="needs nbclient (the test extra)")
def test_notebooks_run_in_fast_mode_from_the_wheel_in_a_fresh_environment(fresh_kernel, tmp_path):
    from nbclient import NotebookClient

    wheel, kernel, python = fresh_kernel
    env = {**os.environ, "ZOJAX_FAST": "1", "ZOJAX_PIP_SPEC": str(wheel), "HF_HUB_OFFLINE": "1",
           "PYDEVD_DISABLE_FILE_VALIDATION": "1", "PYTHONPATH": ""}
    before = {name: _digest(name) for name in NAMES}
    for name in sorted(NAMES, key=lambda n: n in NEEDS_TORCH):  # the torch-free ones first
        nb = read(name)
        workdir = tmp_path / Path(name).stem  # outside the checkout: nothing imports from it
        workdir.mkdir()
        client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name=kernel, resources={"metadata": {"path": str(workdir)}})
        try:
            client.execute(env=env)
        except Exception as e:
            failed = [c for c in nb.cells if c.cell_type == "code" and any(o.output_type == "error" for o in c.get("outputs", []))]
            where = f"cell {failed[0].id}:\n{failed[0].source}\n" if failed else ""
            pytest.fail(f"{name} failed in fast mode\n{where}{e}")
        probe = "import zojax, importlib.util as u; print(zojax.__file__, u.find_spec('torch') is not None)"
        installed = _run(python, "-c", probe, cwd=workdir)
        assert str(ROOT) not in installed, f"{name} imported zojax from the checkout: {installed}"
        if name not in NEEDS_TORCH:
            assert installed.split()[-1] == "False", f"{name}: torch was installed by a notebook that does not need it"
    assert before == {name: _digest(name) for name in NAMES}, "executing the notebooks rewrote them"
