"""Every config file runs end to end at toy size (issue 13.6): each configs/*.py's `:tiny` variant (and the
`*_tiny` variants of files with several experiments) goes through `train.main.run` in this process into a
temporary workdir and must leave a summary.json with finite numbers.

configs/commit.py has no plain `tiny` (its variants are `<vision|audio>[_lora][_small|_tiny]` and the sweeps): it
is run as `vision_tiny` and `sweep_tiny` (the CoMMIT sweep experiment with one tiny run). The three trainer-loop configs (commit, demo, peft) are marked slow: each tiny run is 40-60 s of
compilation on 2 cores at toy size already, and the default suite runs them elsewhere. Tiny variants that a
notebook runs (notebooks/*.py, executed by tests/test_notebooks.py) are not run twice (demo:tiny and commit's
vision_tiny in tests/train/test_commit_task.py, peft's toy trainer runs in tests/train/test_peft_task.py).
"""
from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import re

import pytest

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"
TINY = {"tensor_attention": ("tiny", "scaling_tiny", "match3_tiny"), "commit": ("vision_tiny", "sweep_tiny")}
SLOW = {"commit", "demo", "lara", "llava", "peft",  # llava: its stages run in tests/train/test_llava.py (slow); lara:
        "diffusion",  # its tiny run is tests/train/test_lara.py's module fixture; diffusion:tiny: test_t2i.py (slow)
        "artist",  # artist:tiny (every ARTIST stage, ~150 CPU-s of compiles): -m slow
        "toffee"}  # toffee:tiny: tests/train/test_toffee_task.py (slow, ~220 CPU-s)


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_config_{name}", CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NOTEBOOKS = CONFIGS.parent / "notebooks"


# overrides a notebook may pass without changing what runs (display only); a notebook that shrinks a run (steps,
# sizes) runs something else, so its variant is still run here
DISPLAY_ONLY = {"train.plots", "train.progress"}


def notebook_runs() -> set[tuple[str, str]]:
    """(config, variant) pairs a notebook twin runs through `train.main.run` as the config file gives them:
    `load_config("name:variant")` (or `load_config("name:variant" if ... else ...)`), with no overrides or only
    display ones (`DISPLAY_ONLY`, as a `**{...}` literal). tests/test_notebooks.py executes those in every
    `make test`, so they are not run a second time here."""
    import ast

    found = set()
    for twin in NOTEBOOKS.glob("[0-9][0-9]_*.py"):
        for node in ast.walk(ast.parse(twin.read_text())):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "load_config" and node.args):
                continue
            spec = node.args[0].body if isinstance(node.args[0], ast.IfExp) else node.args[0]
            keys = set()
            for kw in node.keywords:
                if kw.arg is not None or not isinstance(kw.value, ast.Dict):
                    keys.add(kw.arg or "**")   # a named override or a non-literal mapping: not the file's run
                else:
                    keys |= {k.value if isinstance(k, ast.Constant) else "**" for k in kw.value.keys}
            m = re.fullmatch(r"(\w+):(\w+)", spec.value) if isinstance(spec, ast.Constant) else None
            if m and keys <= DISPLAY_ONLY:
                found.add((m.group(1), m.group(2)))
    return found


def _all_cases():
    names = sorted(p.stem for p in CONFIGS.glob("*.py") if not p.stem.startswith("_"))
    return [(n, v) for n in names for v in TINY.get(n, ("tiny",))]


def _cases():
    in_notebooks = notebook_runs()
    return [pytest.param(n, v, id=f"{n}:{v}", marks=[pytest.mark.slow] if n in SLOW else [])
            for n, v in _all_cases() if (n, v) not in in_notebooks]


def test_every_config_file_has_a_case():
    """Each config's tiny variants run here or in a notebook (no config is left out of both)."""
    covered = {c.values[:2] for c in _cases()} | notebook_runs()
    assert set(_all_cases()) <= covered
    assert {n for n, _ in covered} >= {"commit", "demo", "dp_cross_attention", "dp_ntk", "ntk_attention", "peft",
                                       "tensor_attention"}


@pytest.mark.parametrize("name,variant", _cases())
def test_tiny_variant_runs_end_to_end(name, variant, tmp_path):
    from train.main import run

    config = _load(name).get_config(variant)
    if "train" in config and "progress" in config.train:
        config.train.progress = False
    summary = run(config, str(tmp_path))
    saved = json.loads((tmp_path / "summary.json").read_text())
    numbers = {k: v for k, v in saved.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numbers, f"{name}:{variant}: no number in summary {saved}"
    bad = {k: v for k, v in numbers.items() if not math.isfinite(v)}
    assert not bad, f"{name}:{variant}: non-finite summary values {bad}"
    assert set(summary) == set(saved)
