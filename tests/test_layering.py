"""Issue 13.3: dependencies point one way (ops <- diffusion <- kernels <- attention <- nn <- models <- tuning/privacy <- train;
jaxmm never imports train) and there is no import loop anywhere in jaxmm or train.

Read from the source with `ast` (every import statement, including the lazy ones inside functions), so the rule
holds for code that a test run happens not to execute."""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHAIN = ["checks", "registry", "ops", "diffusion", "kernels", "attention", "nn", "models"]   # jaxmm.checks: argument checks, the base
# what each jaxmm package may import (besides itself); packages outside the chain may import the chain
ALLOWED = {name: set(CHAIN[:i]) for i, name in enumerate(CHAIN)}
ALLOWED.update({pkg: set(CHAIN) for pkg in ("privacy", "tuning", "hf")})
ALLOWED["ocr"] = {"checks", "registry"}   # jaxmm.ocr: engines and layout recovery, below data (which may use it)
ALLOWED["data"] = set(CHAIN) | {"ocr"}
ALLOWED["metrics"] = {"checks"}   # jaxmm.metrics: plain Python/NumPy scoring, below everything but the checks
ALLOWED["chat"] = set(CHAIN) | {"data", "hf"}   # jaxmm.chat, the command line: loads models and tokenizers
ALLOWED["jaxmm"] = None   # the top package itself: anything inside jaxmm


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    files = list((ROOT / "jaxmm").rglob("*.py")) + list((ROOT / "train").rglob("*.py"))
    return {_module_name(p): p for p in files}


def _raw_imports(source: str, package: str, modules=()) -> set[str]:
    """Every module name an import statement in `source` names (module level and inside functions), relative
    imports resolved against `package`. `from pkg import x` names pkg.x when that is one of `modules`, else pkg."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if (sub in modules or not modules) else base)
    return found


def _imports(name: str, path: pathlib.Path, modules) -> set[str]:
    """The jaxmm/train modules `name` imports, each resolved to the file that defines it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for target in _raw_imports(path.read_text(), package, modules):
        if target.split(".")[0] not in ("jaxmm", "train"):
            continue
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)
    return out


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if parts[0] == "jaxmm" and len(parts) > 1 else parts[0]


def test_no_upward_import(graph):
    bad = []
    for src, targets in sorted(graph.items()):
        if not src.startswith("jaxmm"):
            continue
        for dst in sorted(targets):
            if dst.split(".")[0] == "train":
                bad.append(f"{src} -> {dst} (jaxmm never imports train)")
                continue
            if dst == "jaxmm":   # the top package: version and the lazy-import helper, no layer
                continue
            src_layer, dst_layer = _layer(src), _layer(dst)
            allowed = ALLOWED.get(src_layer, set(CHAIN))
            if src_layer == dst_layer or allowed is None or dst_layer in allowed:
                continue
            bad.append(f"{src} -> {dst} ({src_layer} may import only {sorted(allowed)})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


# Loops known and owned elsewhere (listed so that they stay visible; test_known_cycles_are_still_there fails when
# one is fixed, so the entry is removed). None left: commit <-> commit_sweep was fixed by making the sweep its
# own experiment (`commit_sweep`) that finds the CoMMIT task by name.
KNOWN_CYCLES: set = set()


def _cycles(graph):
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycle(graph):
    """No loop among modules (package __init__ files included; a submodule's implicit import of its parent
    package is not an edge, as Python runs the parent first without a loop). Lazy imports count."""
    cycles = [c for c in _cycles(graph) if frozenset(c) not in KNOWN_CYCLES]
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_known_cycles_are_still_there(graph):
    found = {frozenset(c) for c in _cycles(graph)}
    fixed = [sorted(c) for c in KNOWN_CYCLES if c not in found]
    assert not fixed, f"fixed: remove {fixed} from KNOWN_CYCLES"


def test_no_cycle_in_jaxmm(graph):
    assert not [c for c in _cycles(graph) if c[0].startswith("jaxmm")]


def test_ops_is_plain_jax():
    """ops: no Flax and no Pallas (the reference maths must not depend on what it is the reference for)."""
    for name, path in _modules().items():
        if name.startswith("jaxmm.ops"):
            raw = _raw_imports(path.read_text(), name)
            assert not {m for m in raw if m.split(".")[0] == "flax" or "pallas" in m}, name


def test_the_checker_sees_lazy_imports():
    """The rule covers imports inside functions (the three lazy ops -> kernels imports were the old loop)."""
    src = "def f():\n    from jaxmm.kernels.flash_attention import flash_attention\n    return flash_attention\n"
    modules = {"jaxmm.ops", "jaxmm.kernels", "jaxmm.kernels.flash_attention"}
    assert "jaxmm.kernels.flash_attention" in _raw_imports(src, "jaxmm.ops", modules)
    src = "def f():\n    from ..kernels import flash_attention\n"
    assert "jaxmm.kernels.flash_attention" in _raw_imports(src, "jaxmm.ops", modules)


def test_configs_are_data():
    """configs/*.py never import train (issue 13.6): a config gives values only; the trainer fills its defaults
    (`train.config.fill`) and finds the task by name (`config.task`)."""
    bad = {p.name: sorted(m for m in _raw_imports(p.read_text(), "configs") if m.split(".")[0] == "train")
           for p in sorted((ROOT / "configs").glob("*.py"))}
    bad = {name: mods for name, mods in bad.items() if mods}
    assert not bad, f"configs importing train: {bad}"
    # the checker sees a lazy import inside a function
    assert _raw_imports("def get_config():\n    from train import config\n", "configs") == {"train.config"}
