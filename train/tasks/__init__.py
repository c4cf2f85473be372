"""Named task objects. A config selects one with `config.task`; a paper that needs its own loss, step,
evaluation or a non-gradient experiment (a sweep, an error table) registers one here instead of forking the
trainer.

Two kinds:
- experiment tasks: a function `run(config, workdir) -> dict` (the summary), registered with `@register(name)`;
- training tasks: objects used by the shared loop in `train/loop.py` (see there).
A task named "<module>" or "<module>.<name>" lives in `train/tasks/<module>.py` and is imported on first use.
"""
from __future__ import annotations

import importlib

TASKS: dict = {}


def register(name: str):
    def deco(obj):
        if name in TASKS and TASKS[name] is not obj:
            raise ValueError(f"task {name!r} registered twice")
        TASKS[name] = obj
        return obj

    return deco


def get(name: str):
    if name not in TASKS:
        module = name.split(".")[0]
        try:
            importlib.import_module(f"train.tasks.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"train.tasks.{module}":
                raise
    if name not in TASKS:
        raise ValueError(f"config.task: expected a registered task (train/tasks/<module>.py), got {name!r}; "
                         f"registered so far: {sorted(TASKS)}")
    return TASKS[name]
