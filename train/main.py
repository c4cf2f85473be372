"""Entry point: parse the config, check it, save it beside the run, dispatch to the named task."""
from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

from train import tasks

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<name>.py[:variant]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (created; re-running resumes)")


def run(config, workdir: str) -> dict:
    """Run one config in `workdir`; returns the task's summary dict. Usable from Python and tests."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    task = tasks.get(config.task)
    runner = task if callable(task) else getattr(task, "run")
    summary = runner(config, workdir)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    return summary


def _main(argv):
    del argv
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir: expected a directory path, got nothing")
    summary = run(_CONFIG.value, _WORKDIR.value)
    items = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items())
    print(f"[summary] {items} workdir={_WORKDIR.value}")


def main():
    flags.mark_flag_as_required("config")
    app.run(_main)
