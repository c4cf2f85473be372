"""Named tasks. A config selects one with `config.task`; a paper that needs its own loss, step, evaluation or a
non-gradient experiment (a sweep, an error table) registers one here instead of forking the trainer.

Two kinds:
- training tasks: a `train.task.Task` subclass (`register(name)(MyTask)`) or a factory
  `register(name, factory=lambda config: MyTask(config, ...))`. The loop builds a fresh task object per run
  (`build(factory, config)`), so nothing a run computes survives into the next one;
- experiment tasks: a function `run(config, workdir) -> dict` (the summary), registered with `@register(name)`.
A task named "<module>" or "<module>.<name>" lives in `train/tasks/<module>.py` and is imported on first use.
"""
from __future__ import annotations

import importlib

TASKS: dict = {}
_FACTORIES: set = set()  # names of training tasks (the rest are experiment functions)


def register(name: str, factory=None):
    """`register(name)(TaskSubclass)`, `register(name)(run_fn)` (an experiment) or
    `register(name, factory=fn)` with `fn(config) -> Task`. A Task *instance* is refused (tasks are per run)."""

    def deco(obj):
        from train.task import Task

        if isinstance(obj, Task):
            raise TypeError(f"task {name!r}: register the class or a factory, not an instance (a task object is "
                            "built per run from its config)")
        if name in TASKS and TASKS[name] is not obj:
            raise ValueError(f"task {name!r} registered twice")
        TASKS[name] = obj
        if factory is not None or (isinstance(obj, type) and issubclass(obj, Task)):
            _FACTORIES.add(name)
        return obj

    if factory is not None:
        return deco(factory)
    return deco


def _load(name: str) -> None:
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


def get(name: str):
    """The registered factory (a Task subclass or `fn(config) -> Task`) or experiment function."""
    _load(name)
    return TASKS[name]


def is_training_task(name: str) -> bool:
    _load(name)
    return name in _FACTORIES


def build(factory, config=None):
    """A fresh task object: `factory(config)`. With config None: a schema-only object (default_config)."""
    from train.task import Task

    if isinstance(factory, str):
        factory = get(factory)
    if isinstance(factory, Task):
        raise TypeError("expected a task factory (a Task subclass or fn(config) -> Task), got a Task instance")
    task = factory(config)
    if not isinstance(task, Task):
        raise TypeError(f"task factory {factory!r}: expected it to return a train.task.Task, got {type(task)}")
    return task


def full_config(config):
    """A training task's config completed from the trainer's and the task's defaults (`train.config.fill`: a
    config file gives only what differs); an experiment's config as it is."""
    if not is_training_task(config.task):
        return config
    from train import config as config_lib

    return config_lib.fill(config, build(config.task).default_config())
