"""Checkpoints: the one module that touches Orbax.

One `ocp.CheckpointManager` under `<workdir>/checkpoints`, items saved together with `ocp.args.Composite`:

    state  params + optimizer state + step + RNG + task extra state (`StandardSave`, sharded arrays)
    data   the grain iterator state, one JSON file per process (`grain.checkpoint.CheckpointSave`)
    meta   {"step": int} (`JsonSave`), checked against the directory's step on restore

Saves are asynchronous (Orbax writes into a temporary directory and renames it when complete, so a run killed
mid-save leaves no half-visible step). `restore_latest` walks the steps newest first: a step that fails to
restore (truncated or corrupt files) is reported with a warning and the previous one is used. Targets are
`jax.ShapeDtypeStruct`s carrying the *current* mesh's shardings, so a checkpoint written on one mesh restores
onto another.
"""
from __future__ import annotations

import logging
import os
import shutil
import warnings

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, directory: str, every: int, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.every = every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            save_interval_steps=1)  # we decide when to save
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers=dict(state=ocp.StandardCheckpointHandler(), data=grain.checkpoint.CheckpointHandler(),
                               meta=ocp.JsonCheckpointHandler()))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def should_save(self, step: int, last_step: int) -> bool:
        return step == last_step or (self.every > 0 and step % self.every == 0)

    def save(self, step: int, state: dict, data_iterator) -> None:
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({"step": int(step)}))
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, target: dict, data_iterator):
        items = dict(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        if int(out["meta"]["step"]) != step or int(out["state"]["step"]) != step:
            raise ValueError(f"checkpoint {step}: meta step {out['meta']['step']}, state step "
                             f"{int(out['state']['step'])}")
        return out["state"]

    def restore_latest(self, target: dict, data_iterator):
        """(step, state) of the newest checkpoint that restores, or (None, None) when there is none."""
        for step in reversed(self.steps()):
            try:
                return step, self.restore(step, target, data_iterator)
            except Exception as e:  # noqa: BLE001 - any failure means this step is unusable
                msg = (f"checkpoint at step {step} in {self.directory} is unreadable "
                       f"({type(e).__name__}: {str(e)[:200]}); falling back to the previous one")
                warnings.warn(msg)
                log.warning(msg)
                self._set_aside(step)
        return None, None

    def _set_aside(self, step: int) -> None:
        """Move an unreadable step out of the manager's view (kept as `corrupt_<step>` for inspection), so
        the resumed run can write that step again."""
        if jax.process_index() == 0:
            bad = os.path.join(self.directory, str(step))
            dest = os.path.join(self.directory, f"corrupt_{step}")
            if os.path.exists(dest):
                shutil.rmtree(dest)
            os.replace(bad, dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"checkpoint_set_aside_{step}")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_target(state: dict, shardings: dict) -> dict:
    """ShapeDtypeStructs (with the given shardings) for a state tree: the restore target on any mesh."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
