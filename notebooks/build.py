"""Notebooks: the jupytext percent-format twins `notebooks/NN_name.py` are the source of truth; this script writes
each `NN_name.ipynb` from its twin (no outputs) and the table in notebooks/README.md.

    python notebooks/build.py           # rewrite the .ipynb files and README.md
    python notebooks/build.py --check   # exit 1 naming what is out of date (tests/test_notebooks.py runs this)

Colab badges point at `REPOSITORY` on GitHub (pyproject.toml's [project.urls] Repository when set).
"""
from __future__ import annotations

import argparse
import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_REPOSITORY = "jaxmm/jaxmm"   # GitHub owner/name the badges open; overridden by pyproject's Repository URL
BRANCH = "main"


def repository() -> str:
    pyproject = HERE.parent / "pyproject.toml"
    m = re.search(r'^Repository\s*=\s*"https://github\.com/([^"]+?)(?:\.git)?"', pyproject.read_text(), re.M)
    return m.group(1) if m else DEFAULT_REPOSITORY


def twins() -> list[pathlib.Path]:
    return sorted(p for p in HERE.glob("[0-9][0-9]_*.py"))


def notebook_json(twin: pathlib.Path) -> str:
    import jupytext

    for m in re.finditer(r'^REPOSITORY = "([^"]*)"', twin.read_text(), re.M):
        if m.group(1) != repository():
            raise ValueError(f"{twin.name}: REPOSITORY = {m.group(1)!r}, expected {repository()!r} (the badges' "
                             "repository): edit the twin")
    import nbformat

    nb = jupytext.read(twin, fmt="py:percent")
    nb.metadata.pop("jupytext", None)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["colab"] = {"provenance": []}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{twin.stem[:2]}-{i:03d}"
        cell.metadata.pop("lines_to_next_cell", None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nbformat.writes(nb) + "\n"


def title(twin: pathlib.Path) -> str:
    m = re.search(r"^# # (.+)$", twin.read_text(), re.M)
    if not m:
        raise ValueError(f"{twin}: expected a first markdown cell with a '# ' title line")
    return m.group(1).strip()


def readme() -> str:
    repo = repository()
    rows = []
    for twin in twins():
        ipynb = twin.with_suffix(".ipynb").name
        badge = (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
                 f"(https://colab.research.google.com/github/{repo}/blob/{BRANCH}/notebooks/{ipynb})")
        rows.append(f"| [{ipynb}]({ipynb}) ([text twin]({twin.name})) | {title(twin)} | {badge} |")
    return (
        "# notebooks\n\n"
        "One notebook per paper plus a quickstart. Each runs the paper's `:tiny` config through the same code path as\n"
        "`python -m train` and redraws its key figure; the last cell says what to change for a real run.\n\n"
        "- The `NN_name.py` files (jupytext percent format) are the source of truth; the `.ipynb` files are generated\n"
        "  from them without outputs: edit the `.py`, then run `python notebooks/build.py`.\n"
        "- `make test` executes every notebook at tiny size on the project's venv kernel (tests/test_notebooks.py);\n"
        "  a failing cell fails the test with the cell's source and error. Tiny runs on CPU are nearly all XLA\n"
        "  compilation, so the suite sets `XLA_FLAGS=--xla_backend_optimization_level=0` (less optimised machine\n"
        "  code, the same programs); do the same on a CPU-only runtime to halve the wait.\n"
        f"- The Colab badges open the notebooks from GitHub `{repo}` (set `Repository` under `[project.urls]` in\n"
        "  pyproject.toml to change it, then rebuild). In Colab, the first cell installs jaxmm from that repository\n"
        "  with the runtime's accelerator extra: `[cuda]` on a GPU runtime, `[tpu]` on a TPU runtime.\n\n"
        "| notebook | what it shows | Colab |\n|---|---|---|\n" + "\n".join(rows) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="report out-of-date files instead of writing them")
    args = ap.parse_args(argv)
    wanted = {t.with_suffix(".ipynb"): notebook_json(t) for t in twins()}
    wanted[HERE / "README.md"] = readme()
    stale = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
    orphans = [p for p in HERE.glob("*.ipynb") if p not in wanted]
    if args.check:
        for p in stale:
            print(f"out of date: {p.relative_to(HERE.parent)} (run python notebooks/build.py)")
        for p in orphans:
            print(f"no text twin: {p.relative_to(HERE.parent)}")
        return 1 if stale or orphans else 0
    for p in stale:
        p.write_text(wanted[p])
        print(f"wrote {p.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
