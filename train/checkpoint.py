"""Checkpoints: the one module that touches Orbax.

One `ocp.CheckpointManager` under `<workdir>/checkpoints`, items saved together with `ocp.args.Composite`:

    state  params + optimizer state + step + RNG + task extra state (`StandardSave`, sharded arrays)
    data   the grain iterator state, one JSON file per process (`grain.checkpoint.CheckpointSave`)
    meta   {"step": int, "checksums": {array: [sum, weighted sum]}} (`JsonSave`): the step is checked against
           the directory's, the checksums against the restored arrays (a mismatch = corrupt, falls back)

Saves are asynchronous (Orbax writes into a temporary directory and renames it when complete, so a run killed
mid-save leaves no half-visible step; such `<step>.orbax-checkpoint-tmp` leftovers are removed on the next start,
and a run that fails waits for its pending save before it exits). `restore_latest` walks the steps newest first: a step that fails to
restore (truncated or corrupt files) is reported with a warning, set aside as `corrupt_<step>` and the previous
one is used; the data iterator is restored only together with a state that restored. A checkpoint whose array
shapes differ from the current model is refused (a config change, not corruption). Targets are
`jax.ShapeDtypeStruct`s carrying the *current* mesh's shardings, so a checkpoint written on one mesh restores
onto another.

Remote directories (`gs://...`, through `etils.epath` and Orbax's own GCS support: tensorstore writes the arrays,
epath the small files): Orbax then writes each step in place and marks it complete with a `commit_success.txt`
object written last (GCS has no atomic directory rename), so a step without that marker is an unfinished save:
removed on the next start like the `*.orbax-checkpoint-tmp` directories locally. Setting a step aside there
deletes its marker first (one object delete takes it out of Orbax's view), then copies it to `corrupt_<step>`.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import warnings

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from train.metrics import is_remote

COMMIT_MARKER = "commit_success.txt"  # Orbax's completion marker on an object store (atomicity.CommitFileTemporaryPath)

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, directory: str, every: int, keep: int, async_save: bool = True):
        self.remote = is_remote(directory)
        self.directory = os.fspath(directory) if self.remote else os.path.abspath(directory)
        self.every = every
        self._remove_unfinished_saves()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            save_interval_steps=1)  # we decide when to save
        self.manager = ocp.CheckpointManager(
            epath.Path(self.directory), options=options,
            item_handlers=dict(state=ocp.StandardCheckpointHandler(), data=grain.checkpoint.CheckpointHandler(),
                               meta=ocp.JsonCheckpointHandler()))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def should_save(self, step: int, last_step: int) -> bool:
        return step == last_step or (self.every > 0 and step % self.every == 0)

    def save(self, step: int, state: dict, data_iterator) -> None:
        meta = {"step": int(step), "checksums": checksums(state)}
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, target: dict, make_iterator=None):
        """(state, data iterator) of checkpoint `step`. The iterator is a fresh one from `make_iterator()`
        restored only after the state restored, so a failed state never leaves it at that step's position."""
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                  meta=ocp.args.JsonRestore()))
        if int(out["meta"]["step"]) != step or int(out["state"]["step"]) != step:
            raise ValueError(f"checkpoint {step}: meta step {out['meta']['step']}, state step "
                             f"{int(out['state']['step'])}")
        if "checksums" in out["meta"]:  # checkpoints written before checksums existed restore unverified
            verify_checksums(out["state"], out["meta"]["checksums"], f"checkpoint {step}")
        data_iterator = None
        if make_iterator is not None:
            data_iterator = make_iterator()
            self.manager.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(data_iterator)))
        return out["state"], data_iterator

    def restore_latest(self, target: dict, make_iterator=None):
        """(step, state, data iterator) of the newest checkpoint that restores; (None, None, a fresh iterator)
        when none does. An unreadable step is set aside (`corrupt_<step>`) with a warning and the previous one
        tried; a step whose arrays have other shapes than `target` is a changed model, not corruption: that
        raises ValueError listing the differences (and sets nothing aside)."""
        for step in reversed(self.steps()):
            try:
                saved = self.manager.item_metadata(step)["state"]
            except Exception:  # noqa: BLE001 - unreadable metadata: handled with the restore below
                saved = None
            if saved is not None:
                check_same_shapes(saved, target, f"checkpoint {step} in {self.directory}")
            try:
                with _quiet_orbax():
                    state, data_iterator = self.restore(step, target, make_iterator)
                return step, state, data_iterator
            except Exception as e:  # noqa: BLE001 - any failure means this step is unusable
                msg = (f"checkpoint at step {step} in {self.directory} is unreadable "
                       f"({type(e).__name__}: {str(e)[:200]}); falling back to the previous one")
                warnings.warn(msg)
                log.warning(msg)
                self._set_aside(step)
        return None, None, (make_iterator() if make_iterator is not None else None)

    def _set_aside(self, step: int) -> None:
        """Move an unreadable step out of the manager's view (kept as `corrupt_<step>` for inspection), so
        the resumed run can write that step again."""
        if jax.process_index() == 0:
            root = epath.Path(self.directory)
            bad, dest = root / str(step), root / f"corrupt_{step}"
            if dest.exists():
                dest.rmtree()
            if self.remote:  # no atomic rename: first make the step unfinished (invisible), then move its objects
                if (bad / COMMIT_MARKER).exists():
                    (bad / COMMIT_MARKER).unlink()
                _copy_tree(bad, dest)
                bad.rmtree()
            else:
                os.replace(bad, dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"checkpoint_set_aside_{step}")
        self.manager.reload()

    def _remove_unfinished_saves(self) -> None:
        """Delete saves cut off by a kill or crash: `<step>.orbax-checkpoint-tmp*` directories locally, `<step>`
        directories without Orbax's `commit_success.txt` on an object store (never visible as a step, so nothing
        refers to them; Orbax does not remove them itself)."""
        root = epath.Path(self.directory)
        if jax.process_index() == 0 and root.is_dir():
            for path in sorted(root.iterdir(), key=lambda p: p.name):
                if (re.fullmatch(r"\d+\.orbax-checkpoint-tmp.*", path.name) or
                        (self.remote and path.name.isdigit() and not (path / COMMIT_MARKER).exists())):
                    msg = f"removing an unfinished checkpoint save {os.fspath(path)}"
                    warnings.warn(msg)
                    log.warning(msg)
                    if self.remote:
                        path.rmtree()
                    else:
                        shutil.rmtree(path, ignore_errors=True)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("checkpoint_remove_unfinished")

    def close_after_error(self) -> None:
        """On the way out of a failed run: let a pending async save finish (it holds a consistent state), then
        close, so no half-written directory and no background-thread noise follow the real error."""
        try:
            self.manager.wait_until_finished()
            self.manager.close()
        except Exception as e:  # noqa: BLE001 - the run's own error is the one to report
            log.warning(f"closing checkpoints after an error: {type(e).__name__}: {e}")

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _copy_tree(src: epath.Path, dst: epath.Path) -> None:
    """Copy every file under `src` to the same place under `dst` (on an object store: one copy per object)."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.is_dir():
            _copy_tree(path, dst / path.name)
        else:
            path.copy(dst / path.name, overwrite=True)


def _leaf_name(path) -> str:
    """A leaf's name as Orbax writes it in the metadata (`params.encoder.kernel`, `opt_state.1.mu...`)."""
    return ".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def check_same_shapes(saved_metadata, target: dict, where: str) -> None:
    """Raise ValueError when the saved arrays' shapes or dtypes differ from the target's, or a parameter is
    missing on one side: the model (or optimizer) changed since the checkpoint was written."""
    def shapes(tree):
        return {_leaf_name(p): (tuple(x.shape), str(x.dtype)) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
                if hasattr(x, "shape")}

    saved, want = shapes(saved_metadata), shapes(target)
    diffs = [f"{k}: saved {saved[k][0]} {saved[k][1]}, now {want[k][0]} {want[k][1]}"
             for k in sorted(saved.keys() & want.keys()) if saved[k] != want[k]]
    diffs += [f"{k}: only in the checkpoint" for k in sorted(saved.keys() - want.keys()) if k.startswith("params.")]
    diffs += [f"{k}: not in the checkpoint" for k in sorted(want.keys() - saved.keys()) if k.startswith("params.")]
    if diffs:
        more = f"\n  ... and {len(diffs) - 10} more" if len(diffs) > 10 else ""
        raise ValueError(f"{where}: the model changed since this checkpoint was written ({len(diffs)} arrays "
                         f"differ), so it cannot be resumed:\n  " + "\n  ".join(diffs[:10]) + more +
                         "\nRestore the old model config, or train the new one in another --workdir.")


class _quiet_orbax:
    """Orbax logs every failed read with a traceback at ERROR; the caller reports the failure once."""

    def __enter__(self):
        self.logger = logging.getLogger("absl")
        self.level = self.logger.level
        self.logger.setLevel(logging.CRITICAL)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def _words(x):
    """The array's bits as uint32 words (a 2-byte element per word, 8-byte ones as two)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _sums(x):
    """Two wrapping uint32 sums of the words: plain and position-weighted (odd weights 2i+1, so a changed word
    always changes both and a swap of two words changes the second). Element-wise on the sharded array."""
    w = _words(x)
    index = jnp.zeros(w.shape, jnp.uint32)
    for d, n in enumerate(w.shape):
        index = index * jnp.uint32(n) + jax.lax.broadcasted_iota(jnp.uint32, w.shape, d)
    return jnp.stack([jnp.sum(w, dtype=jnp.uint32), jnp.sum(w * (2 * index + 1), dtype=jnp.uint32)])


_sums_jit = jax.jit(lambda tree: jax.tree.map(_sums, tree))


def checksums(state: dict) -> dict:
    """{array name: [sum, weighted sum]} of a (sharded) state tree, for the checkpoint's meta item; computed
    on the devices (no gather), identical for any mesh the same values live on."""
    sums = _sums_jit(state)
    return {_leaf_name(p): [int(v) for v in np.asarray(x.addressable_data(0))]
            for p, x in jax.tree_util.tree_flatten_with_path(sums)[0]}


def verify_checksums(state: dict, saved: dict, where: str) -> None:
    """ValueError naming the arrays whose restored bits differ from the sums recorded at save time."""
    now = checksums(state)
    bad = sorted(k for k in saved if now.get(k) != list(saved[k]))
    if bad:
        raise ValueError(f"{where}: checksum mismatch (the files changed after they were written) in "
                         f"{len(bad)} array(s): {', '.join(bad[:5])}")


def abstract_target(state: dict, shardings: dict) -> dict:
    """ShapeDtypeStructs (with the given shardings) for a state tree: the restore target on any mesh."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
