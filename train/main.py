"""Entry point: parse the config (a file `configs/<name>.py[:variant]` or a shipped config's name `<name>[:variant]`,
`config_path`), start multi-process JAX when asked, save the config beside the run, and
dispatch to the named task: a training task (a `train.task.Task` factory, built per run) runs in the shared
loop (`train/loop.py`); an experiment (`train.experiment.Experiment`: sweeps, audits, tables, writing through
`train.report.Reporter`) or a plain `run(config, workdir) -> dict` is called with the workdir.

Several processes: `--coordinator host:port --num_processes N --process_id i` (or the env vars
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, or JAXMM_DISTRIBUTED=1 on TPU pods / SLURM).
"""
from __future__ import annotations

import json
import os
import pathlib

from absl import app, flags
from ml_collections import config_flags

from train import tasks


def configs_dir() -> pathlib.Path:
    """The configs that ship with jaxmm: train/configs/ in an installed wheel (setup.py maps the repository's
    configs/ there), else configs/ beside train/ (a clone, editable installs included)."""
    here = pathlib.Path(__file__).resolve().parent
    return here / "configs" if (here / "configs").is_dir() else here.parent / "configs"


def config_names() -> list[str]:
    """Names `--config` accepts besides file paths: the shipped configs/*.py."""
    return sorted(p.stem for p in configs_dir().glob("*.py") if not p.stem.startswith("_"))


def config_path(spec: str) -> str:
    """`--config`'s value as the `path[:variant]` that ml_collections loads. A file path (it ends in .py or has a
    directory part: `configs/demo.py:tiny`, read from the working directory) stays as it is; a config name
    (`demo`, `demo:tiny`) becomes the shipped file's path, so an installed jaxmm needs no clone."""
    if not isinstance(spec, str) or not spec.split(":", 1)[0]:
        raise ValueError(f"config: expected configs/<name>.py[:variant] or <name>[:variant], got {spec!r}")
    head, colon, variant = spec.partition(":")
    shipped = config_names()
    names = ", ".join(shipped) or f"none found in {configs_dir()}"
    if head.endswith(".py") or "/" in head or os.sep in head:
        if not os.path.isfile(head):
            raise ValueError(f"config: no file {head!r} (relative paths are read from {os.getcwd()}); the configs "
                             f"that ship with jaxmm are named without a path: {names}")
        return spec
    if head not in shipped:
        raise ValueError(f"config: expected a file path or the name of a shipped config ({names}) with an optional "
                         f":variant, got {spec!r}")
    return str(configs_dir() / f"{head}.py") + colon + variant


def load_config(spec: str, **overrides):
    """The config `--config <spec>` gives, from Python (notebooks, scripts): `spec` is a shipped config's name or a
    file path with an optional `:variant` (`config_path`), completed with the trainer's and the task's defaults
    (`tasks.full_config`). `overrides` set dotted keys as `--config.a.b=value` does: `load_config("demo:tiny",
    **{"train.steps": 50})`; an unknown key is an error naming it."""
    import importlib.util

    path, _, variant = config_path(spec).partition(":")
    module_spec = importlib.util.spec_from_file_location(f"_jaxmm_config_{pathlib.Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = tasks.full_config(module.get_config(variant or None))
    for key, value in overrides.items():
        node, *_ = key.rsplit(".", 1)
        parent = config
        for part in key.split(".")[:-1]:
            if part not in parent:
                raise ValueError(f"overrides: no config key {key!r} (no {part!r} under {node!r})")
            parent = parent[part]
        leaf = key.split(".")[-1]
        if leaf not in parent:
            raise ValueError(f"overrides: no config key {key!r}; keys there: {sorted(parent.keys())}")
        parent[leaf] = value
    return config


class _ConfigByName(flags.ArgumentParser):
    """Wraps ml_collections' config-file parser: `config_path` first; then the config is completed with the
    trainer's and the task's defaults (`tasks.full_config`) before the `--config.a.b=value` overrides apply, so a
    key the file leaves out can be overridden too."""

    def __init__(self, file_parser):
        self.file_parser = file_parser

    def parse(self, argument):
        return tasks.full_config(self.file_parser.parse(config_path(argument)))

    def flag_type(self):
        return self.file_parser.flag_type()


_CONFIG = config_flags.DEFINE_config_file("config", None, "<name>[:variant] (a shipped config, e.g. demo:tiny; "
                                          "names: train.main.config_names()) or a file configs/<name>.py[:variant]",
                                          lock_config=True)
flags.FLAGS[_CONFIG.name].parser = _ConfigByName(flags.FLAGS[_CONFIG.name].parser)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (created; re-running resumes)")
_COORD = flags.DEFINE_string("coordinator", None, "multi-process: coordinator host:port")
_NPROC = flags.DEFINE_integer("num_processes", None, "multi-process: number of processes")
_PID = flags.DEFINE_integer("process_id", None, "multi-process: this process's index")
_ALLOW = flags.DEFINE_bool("allow_config_change", False,
                           "resume a workdir's checkpoints with a config that differs from its config.json in "
                           "more than train.steps (growing), eval, logging, checkpoint and mesh settings")


def run(config, workdir: str, allow_config_change: bool = False) -> dict:
    """Run one config in `workdir`; returns the task's summary dict. Usable from Python and tests."""
    from train import loop
    from train.metrics import write_atomic
    task = tasks.get(config.task)
    if tasks.is_training_task(config.task):  # a Task factory: the loop builds this run's task object
        return loop.train(config, workdir, task, allow_config_change=allow_config_change)
    import jax

    from train import config as config_lib

    if all(section in config for section in ("train", "optim", "checkpoint")):
        config_lib.check_values(config)  # a bad value is named as such, not as a change from the saved config
    from etils import epath

    lead = jax.process_index() == 0
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # local, or gs://... (etils.epath)
    if lead:
        loop.claim_workdir(workdir)  # before writing: a refused second run must not overwrite the live run's config
    try:
        if lead:  # a plain task that trains resumes its checkpoints: same rule as loop.train
            loop.check_resumable_config(workdir, config, allow_config_change)
            write_atomic(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
        runner = task if callable(task) else getattr(task, "run")
        summary = runner(config, workdir)
        write_atomic(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2, default=str))
    finally:
        if lead:
            loop.release_workdir(workdir)
    return summary


def _main(argv):
    del argv
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir: expected a directory path, got nothing")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every save at INFO
    from train import sharding

    sharding.maybe_initialize_distributed(_COORD.value, _NPROC.value, _PID.value)
    import jax

    summary = run(_CONFIG.value, _WORKDIR.value, allow_config_change=_ALLOW.value)
    if jax.process_index() == 0:
        items = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items())
        print(f"[summary] {items} workdir={_WORKDIR.value}", flush=True)


def main():
    flags.mark_flag_as_required("config")
    app.run(_main)
