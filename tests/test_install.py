"""Issue 14.3, install and launch: `pip install .` into a fresh venv, then from any other directory
`python -m train --config demo:tiny --workdir w` runs from the installed package alone (the configs ship inside it
as `train.configs`, setup.py), and the file form `--config configs/<name>.py[:variant]` keeps working.

Offline stand-in for `pip install .`: the wheel is built from a copy of the sources with this environment's
setuptools (`pip wheel --no-deps --no-build-isolation --no-index`) and pip installs it (`--no-deps --no-index`) into
a fresh venv whose only other path entry is this environment's site-packages, for jax, flax, ... (added by a .pth
line, so the editable install of the clone that lives there is not loaded). A sitecustomize records where every
jaxmm / train module and the config module came from; the test asserts it was the fresh venv, not the clone.
"""
from __future__ import annotations

import importlib.metadata
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "jaxmm", "train", "configs")

PROBE = """import atexit, json, os, sys


def _where():
    files = {name: getattr(module, "__file__", None) for name, module in list(sys.modules.items())
             if name.split(".")[0] in ("jaxmm", "train") or name == "config_config"}
    with open(os.environ["JAXMM_TEST_MODULES"], "w") as f:
        json.dump(files, f)


atexit.register(_where)
"""


def _pip(*args, cwd=None):
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    env.pop("PYTHONPATH", None)
    r = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"pip {' '.join(args)}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh venv with the wheel of this checkout installed; returns (python, site-packages, wheel)."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), str(src))
    (wheel,) = (tmp / "dist").glob("jaxmm-*.whl")

    env_dir = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = pathlib.Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                       capture_output=True, text=True, check=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # jax, flax, ...: no network here
    (site / "sitecustomize.py").write_text(PROBE)
    _pip("--python", str(python), "install", "--no-deps", "--no-index", str(wheel))
    return python, site, wheel


def _run(python, cwd, *args, timeout=900):
    cwd.mkdir(parents=True, exist_ok=True)
    modules = cwd / "modules.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(JAX_PLATFORMS="cpu", JAXMM_TEST_MODULES=str(modules))
    r = subprocess.run([str(python), "-m", "train", *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    where = json.loads(modules.read_text()) if modules.exists() else {}
    return r, where


def _assert_from(where, site):
    assert where.get("train.main") and where.get("jaxmm") and where.get("config_config"), where
    outside = {name: f for name, f in where.items() if f and not pathlib.Path(f).resolve().is_relative_to(site)}
    assert not outside, f"imported from outside the fresh venv {site}: {outside}"
    assert pathlib.Path(where["config_config"]).resolve().parent == (site / "train" / "configs").resolve()


def test_wheel_ships_packages_configs_and_accelerator_extras(venv):
    _, site, _ = venv
    assert sorted(p.name for p in (site / "train" / "configs").glob("*.py")) == sorted(
        p.name for p in (ROOT / "configs").glob("*.py"))
    assert (site / "jaxmm" / "kernels").is_dir() and (site / "train" / "tasks").is_dir()
    for data in (ROOT / "configs").glob("*/*.json"):   # data folders beside a config (the LLaVA-Read tokenizer)
        assert (site / "train" / "configs" / data.relative_to(ROOT / "configs")).is_file(), data
    assert not (site / "configs").exists(), "configs must not become a top-level package"
    (info,) = site.glob("jaxmm-*.dist-info")
    dist = importlib.metadata.Distribution.at(info)
    extras = set(dist.metadata.get_all("Provides-Extra"))
    assert {"cuda", "cuda12", "tpu", "test", "data"} <= extras, extras
    wanted = {"cuda": "jax[cuda13]", "cuda12": "jax[cuda12]", "tpu": "jax[tpu]"}
    for extra, req in wanted.items():
        assert f'{req}; extra == "{extra}"' in dist.requires, (extra, dist.requires)
        # the extra named must exist in the jax this environment resolves (a rename in JAX fails here)
        assert req[4:-1] in importlib.metadata.metadata("jax").get_all("Provides-Extra"), req


def test_installed_package_runs_a_config_by_name_from_another_directory(venv, tmp_path):
    """Fast stand-in for the acceptance run (ntk_attention:tiny is seconds; demo:tiny is the slow test below)."""
    python, site, _ = venv
    r, where = _run(python, tmp_path / "elsewhere", "--config", "ntk_attention:tiny", "--workdir", "w")
    assert r.returncode == 0, r.stderr[-4000:]
    _assert_from(where, site)
    workdir = tmp_path / "elsewhere" / "w"
    summary = json.loads((workdir / "summary.json").read_text())
    assert math.isfinite(summary["rel_err_m2"]) and math.isfinite(summary["rel_err_m64"]), summary
    assert json.loads((workdir / "config.json").read_text())["variant"] == "tiny"
    assert (workdir / "results.md").exists()
    runs = sorted(workdir.glob("m*/metrics.jsonl"))  # one training run per prefix length, through the loop
    assert len(runs) == 2 and all(p.read_text().strip() for p in runs), runs
    assert "workdir=w" in r.stdout


def test_installed_package_names_unknown_configs(venv, tmp_path):
    python, _, _ = venv
    r, _ = _run(python, tmp_path / "elsewhere", "--config", "demo_typo:tiny", "--workdir", "w")
    assert r.returncode != 0
    assert "demo_typo:tiny" in r.stderr and all(f"{n}, " in r.stderr for n in ("commit", "demo", "dp_cross_attention")), r.stderr[-2000:]
    r, _ = _run(python, tmp_path / "elsewhere", "--config", "configs/demo.py", "--workdir", "w")
    assert r.returncode != 0 and "no file 'configs/demo.py'" in r.stderr and "demo" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "elsewhere" / "w").exists()


@pytest.mark.slow  # demo:tiny is 1.5-2 min of compilation and 20 steps on 2 shared cores
def test_acceptance_demo_tiny_from_installed_package(venv, tmp_path):
    python, site, _ = venv
    r, where = _run(python, tmp_path / "elsewhere", "--config", "demo:tiny", "--workdir", "w")
    assert r.returncode == 0, r.stderr[-4000:]
    _assert_from(where, site)
    workdir = tmp_path / "elsewhere" / "w"
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 20 and math.isfinite(summary["final_loss"]), summary
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 20
    assert any((workdir / "checkpoints").iterdir())


def test_config_name_and_file_forms_load_the_same_config(monkeypatch):
    """`--config dp_ntk:tiny` and `--config configs/dp_ntk.py:tiny` give one config; the variant reaches get_config."""
    from absl import flags

    from train.main import config_path, configs_dir

    monkeypatch.chdir(configs_dir().parent)
    parse = flags.FLAGS["config"].parser.parse  # what `python -m train --config VALUE` calls
    by_name, by_file = parse("dp_ntk:tiny").to_dict(), parse("configs/dp_ntk.py:tiny").to_dict()
    assert by_name == by_file and by_name["variant"] == "tiny"
    assert parse("dp_ntk").to_dict()["variant"] == "digits10"  # no variant: the config's default
    assert config_path("dp_ntk:tiny") == str(configs_dir() / "dp_ntk.py") + ":tiny"
    assert config_path("configs/dp_ntk.py:tiny") == "configs/dp_ntk.py:tiny"  # a file path passes unchanged


@pytest.mark.parametrize("spec,message", [
    ("demo_typo:tiny", "got 'demo_typo:tiny'"), ("__init__", "got '__init__'"),
    ("configs/nope.py", "no file 'configs/nope.py'"), ("nope/demo:tiny", "no file 'nope/demo'"),
    ("", "expected configs/<name>.py[:variant] or <name>[:variant], got ''"), (":tiny", "got ':tiny'")])
def test_config_path_errors_name_the_value_and_the_choices(spec, message, tmp_path, monkeypatch):
    from train.main import config_names, config_path

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as error:
        config_path(spec)
    assert message in str(error.value), str(error.value)
    if spec.split(":")[0]:
        assert ", ".join(config_names()) in str(error.value)
    assert {"commit", "demo", "dp_ntk", "tensor_attention"} <= set(config_names()) and "__init__" not in config_names()
