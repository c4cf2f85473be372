"""grain pipelines: shard per process -> shuffle (a new permutation each epoch) -> repeat -> map -> batch.

`make_loader(source, batch_size=..., seed=...)` returns a `grain.DatasetIterator` yielding batches: dicts of
numpy arrays with a leading `batch_size` axis (strings become numpy unicode arrays). Its state is
checkpointable: `state = it.get_state()` (a small JSON-able dict) and, on a fresh loader built with the same
arguments, `it.set_state(state)` continues with exactly the same batches. For Orbax, save that dict
(e.g. as JSON) or use `grain.checkpoint.CheckpointSave(it)` / `CheckpointRestore(it)` items.

Sharding: process `shard_index` of `shard_count` reads the examples with index % shard_count == shard_index
(disjoint shards covering the source); `batch_size` is the per-process batch.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import grain
import numpy as np

from jaxmm.checks import check_positive, fail


def as_map_dataset(source) -> grain.MapDataset:
    """A `grain.MapDataset` from a MapDataset or any random-access source (`__len__` + `__getitem__`)."""
    if isinstance(source, grain.MapDataset):
        return source
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
        fail("source", "a grain.MapDataset or a random-access source with __len__/__getitem__",
             type(source).__name__)
    return grain.MapDataset.source(source)


class CachedSource:
    """Memoises a random-access source in memory (examples are made once, then reused every epoch).

    For procedural sets trained over many epochs (rendering/feature extraction paid once). Thread-safe for
    grain's reader threads: a race only makes the same deterministic example twice.
    """

    def __init__(self, source):
        if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
            fail("source", "a random-access source with __len__/__getitem__", type(source).__name__)
        self.source, self._cache = source, {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        index = int(index)
        if index not in self._cache:
            self._cache[index] = self.source[index]
        return self._cache[index]


def make_loader(source, *, batch_size: int, seed: int, shuffle: bool = True, num_epochs: int | None = None,
                shard_index: int | None = None, shard_count: int | None = None,
                transforms: Sequence[Callable[[Any], Any]] = (), drop_remainder: bool = True,
                num_threads: int = 2, prefetch: int = 8) -> grain.DatasetIterator:
    """A checkpointable iterator of batches over `source`.

    Args:
      source: a `grain.MapDataset` or a random-access source (e.g. `TextVQA`, `AudioQA`, `LlavaJsonSource`).
      batch_size: examples per batch in this process.
      seed: shuffle seed (and seed of any `grain.transforms.RandomMap` transform).
      shuffle: reshuffle every epoch.
      num_epochs: passes over this process's shard; None = infinite.
      shard_index / shard_count: default `jax.process_index()` / `jax.process_count()`.
      transforms: applied in order to each example (callables or grain Map / RandomMap transforms),
        e.g. `[ConversationFormatter(tokenizer, max_len=64)]`.
      drop_remainder: drop a last, smaller batch (only matters with a finite num_epochs).
      num_threads / prefetch: grain read threads and prefetch buffer (the output does not depend on them).
    """
    check_positive("batch_size", batch_size)
    if shard_index is None or shard_count is None:
        import jax

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    check_positive("shard_count", shard_count)
    if not 0 <= shard_index < shard_count:
        fail("shard_index", f"an integer in [0, {shard_count})", shard_index)
    if num_epochs is not None:
        check_positive("num_epochs", num_epochs)

    ds = as_map_dataset(source)
    if len(ds) < shard_count:
        fail("source", f"at least shard_count={shard_count} examples", len(ds))
    ds = ds[shard_index::shard_count]
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    for i, t in enumerate(transforms):
        if isinstance(t, grain.transforms.RandomMap):
            ds = ds.random_map(t, seed=seed + 1 + i)
        else:
            ds = ds.map(t)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(ds.to_iter_dataset(read_options=options))


def eval_batches(source, *, batch_size: int, transforms: Sequence[Callable[[Any], Any]] = (),
                 num_examples: int | None = None, shard_index: int = 0, shard_count: int = 1) -> list[dict]:
    """Fixed-shape batches over the first `num_examples` of `source` (all by default), in order, for eval.

    Every batch has `batch_size` rows; the last is filled up with copies of its first row, and the int32 field
    "valid" [batch_size] marks real rows (so jitted eval steps see one shape and metrics can skip fillers).
    `shard_index` / `shard_count` split the examples across processes as `make_loader` does.
    """
    check_positive("batch_size", batch_size)
    if not 0 <= shard_index < shard_count:
        fail("shard_index", f"an integer in [0, {shard_count})", shard_index)
    n = len(source) if num_examples is None else min(int(num_examples), len(source))
    examples = []
    for i in range(shard_index, n, shard_count):
        ex = source[i]
        for t in transforms:
            ex = t(ex)
        examples.append(ex)
    batches = []
    for start in range(0, len(examples), batch_size):
        rows = examples[start:start + batch_size]
        valid = [1] * len(rows) + [0] * (batch_size - len(rows))
        rows = rows + [rows[0]] * (batch_size - len(rows))
        batch = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}
        batch["valid"] = np.asarray(valid, np.int32)
        batches.append(batch)
    return batches


def take(iterator: Iterable, n: int) -> list:
    """The next `n` items of `iterator` (convenience for eval sets and tests)."""
    out = []
    for _ in range(n):
        out.append(next(iterator))
    return out
