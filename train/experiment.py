"""The protocol of the experiments that are not training (sweeps, mechanism audits, tables over runs); training
experiments are `train.task.Task`s run by `train/loop.py`.

An experiment is a function `run(config, report) -> summary dict` (and optionally `check(config)`, which raises a
ValueError naming the bad key before any compute), registered by name:

    from train.experiment import experiment

    @experiment("mypaper.sweep", check=_check)
    def sweep(config, report):          # report: train.report.Reporter on the workdir
        ...
        report.section("sweep", markdown_table, numbers)
        return {"headline": value}

`python -m train --config configs/mypaper.py --workdir DIR` (train/main.py) saves the config, claims the
workdir, calls `run` with a `Reporter(DIR)`, and writes the returned summary to summary.json. Everything the
experiment writes goes through the reporter: results.md / results.json (sections), other JSON files, PNGs,
metrics.jsonl. The experiment holds no state between runs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from train.tasks import register


@dataclasses.dataclass(frozen=True)
class Experiment:
    run: Callable[[Any, Any], dict]
    check: Callable[[Any], None] | None = None

    def __call__(self, config, workdir: str) -> dict:
        """Run in `workdir` (what train.main does after claiming it)."""
        from train.report import Reporter

        if self.check is not None:
            self.check(config)
        return self.run(config, Reporter(workdir))


def experiment(name: str, check: Callable[[Any], None] | None = None):
    """Decorator: register `fn(config, report) -> dict` as the experiment `name` (returns it unchanged)."""

    def deco(fn):
        register(name)(Experiment(fn, check))
        return fn

    return deco
