"""notebooks/ (issue 23): every .ipynb is generated from its jupytext twin and up to date, and every notebook runs
top to bottom on this venv's kernel at tiny size (nbclient); a failing cell fails with its source and error."""
from __future__ import annotations

import importlib.util
import os
import pathlib
import re

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"


def _build():
    spec = importlib.util.spec_from_file_location("_notebooks_build", NOTEBOOKS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ipynb_files_are_generated_from_their_twins(capsys):
    build = _build()
    assert build.twins(), "no notebooks/NN_name.py twins"
    assert build.main(["--check"]) == 0, capsys.readouterr().out


def test_every_twin_is_listed_with_a_colab_badge():
    build = _build()
    text = (NOTEBOOKS / "README.md").read_text()
    titles = [build.title(twin) for twin in build.twins()]
    assert len(set(titles)) == len(titles), f"two notebooks share a title (a stray first heading?): {titles}"
    for twin in build.twins():
        url = (f"https://colab.research.google.com/github/{build.repository()}/blob/{build.BRANCH}/notebooks/"
               f"{twin.stem}.ipynb")
        assert url in text, twin.name


def _notebooks():
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "cpu"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # a notebook runs as a user's runtime does: one accelerator (the suite's 8 virtual CPU devices are for the
    # sharding tests; tiny batch sizes need not divide by 8)
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "1")
    # at tiny size nearly all of a notebook's CPU time is XLA compiling each stage once, most of it LLVM optimising
    # code that then runs for milliseconds: the suite compiles at backend optimisation level 0 (measured, user+sys
    # of 01_commit + 03_dp_cross_attention: 111.6 -> 56.1 CPU-s; of the other six older notebooks: 139.0 -> 96.0).
    # Same programs, same code path; only the generated machine code is less optimised.
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    monkeypatch.setenv("JAXMM_NOTEBOOK_TMP", str(tmp_path))
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    try:
        client.execute()
    except CellExecutionError as err:  # its message holds the failing cell's source and the traceback
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # IPython colours the traceback
        pytest.fail(f"{path.name}: a cell failed\n{message}", pytrace=False)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
