"""The one data loader (the trainer's and everyone's): one ordering rule, one eval padding rule.

Ordering: the stream of examples is a seeded permutation of the source per epoch (`np.random.default_rng(
[seed, epoch])`, a new one each epoch); global batch s is stream examples [s*B, (s+1)*B); process p of P feeds
the p-th contiguous B/P rows of it. So the examples of a global batch do not depend on the process count, and a
run on 8 devices sees the data a run on one device sees.

`make_loader(source, batch_size=B, seed=...)` returns a `grain.DatasetIterator` yielding this process's rows of
each global batch: dicts of numpy arrays with a leading B/P axis (strings become numpy unicode arrays). Its
state is checkpointable: `state = it.get_state()` (a small JSON-able dict) and, on a fresh loader built with
the same arguments, `it.set_state(state)` continues with exactly the same batches. For Orbax, save that dict
(e.g. as JSON) or use `grain.checkpoint.CheckpointSave(it)` / `CheckpointRestore(it)` items.

Eval padding: `eval_batches` walks the first examples in order in global batches of B; the last is filled up
with copies of its first example and the int32 field "valid" marks the real rows (one shape for a jitted eval;
fillers count nowhere).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Iterator, Sequence

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


def _epoch_order(seed: int, n: int) -> Callable[[int], int]:
    """Stream position -> source index: a new seeded permutation of the n examples each epoch."""
    @functools.lru_cache(maxsize=2)
    def perm(epoch: int):
        return np.random.default_rng([seed, epoch]).permutation(n)

    return lambda i: int(perm(i // n)[i % n])


def _shard(shard_index, shard_count):
    if shard_index is None or shard_count is None:
        import jax

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    check_positive("shard_count", shard_count)
    if not 0 <= shard_index < shard_count:
        fail("shard_index", f"an integer in [0, {shard_count})", shard_index)
    return shard_index, shard_count


def _local_rows(batch_size: int, shard_count: int) -> int:
    check_positive("batch_size", batch_size)
    if batch_size % shard_count:
        fail("batch_size", f"a multiple of the process count {shard_count} (it is the global batch)", batch_size)
    return batch_size // shard_count


def make_loader(source, *, batch_size: int, seed: int, shuffle: bool = True, num_epochs: int | None = None,
                num_examples: int | None = None, shard_index: int | None = None, shard_count: int | None = None,
                transforms: Sequence[Callable[[Any], Any]] = (), drop_remainder: bool = True,
                num_threads: int = 2, prefetch: int = 8) -> grain.DatasetIterator:
    """A checkpointable iterator of this process's rows of each global batch over `source` (module docstring).

    Args:
      source: a `grain.MapDataset` or a random-access source (e.g. `TextVQA`, `AudioQA`, `LlavaJsonSource`).
      batch_size: examples per GLOBAL batch (a multiple of shard_count); each process gets batch_size/shard_count.
      seed: order seed (and seed of any `grain.transforms.RandomMap` transform).
      shuffle: a new permutation every epoch (False: source order, every epoch).
      num_epochs: passes over the source; None = infinite (or `num_examples` stream examples).
      num_examples: length of the stream (e.g. steps x batch_size for a trainer), overrides num_epochs.
      shard_index / shard_count: default `jax.process_index()` / `jax.process_count()`.
      transforms: applied in order to each example (callables or grain Map / RandomMap transforms),
        e.g. `[ConversationFormatter(tokenizer, max_len=64)]`.
      drop_remainder: drop a last, smaller batch (only matters with a finite stream).
      num_threads / prefetch: grain read threads and prefetch buffer (the output does not depend on them).
    """
    shard_index, shard_count = _shard(shard_index, shard_count)
    per = _local_rows(batch_size, shard_count)
    if num_epochs is not None:
        check_positive("num_epochs", num_epochs)
    ds = as_map_dataset(source)
    n = len(ds)
    if n < 1:
        fail("source", "at least one example", n)
    total = (num_examples if num_examples is not None else n * num_epochs if num_epochs is not None else 2 ** 53)
    order = _epoch_order(seed, n) if shuffle else (lambda i: i % n)
    stream = grain.MapDataset.range(int(total)).map(lambda i: ds[order(i)])
    for i, t in enumerate(transforms):
        if isinstance(t, grain.transforms.RandomMap):
            stream = stream.random_map(t, seed=seed + 1 + i)
        else:
            stream = stream.map(t)
    batches = stream.batch(per, drop_remainder=drop_remainder)[shard_index::shard_count]
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(batches.to_iter_dataset(read_options=options))


def eval_batches(source, *, batch_size: int, transforms: Sequence[Callable[[Any], Any]] = (),
                 num_examples: int | None = None, shard_index: int | None = None,
                 shard_count: int | None = None) -> Iterator[dict]:
    """This process's rows of each fixed-shape global eval batch over the first `num_examples` examples of
    `source` (all by default; 0 = all), in order.

    Global batch b holds examples [b*B, (b+1)*B); process p gets its contiguous B/P rows. The last batch is
    filled up with copies of its first example, and the int32 field "valid" [B/P] is 0 on those rows.
    """
    shard_index, shard_count = _shard(shard_index, shard_count)
    per = _local_rows(batch_size, shard_count)
    n = len(source) if not num_examples else min(int(num_examples), len(source))

    def example(i):
        ex = source[int(i)]
        for t in transforms:
            ex = t(ex)
        return ex

    for start in range(0, n, batch_size):
        index = np.arange(start + shard_index * per, start + (shard_index + 1) * per)
        valid = (index < n).astype(np.int32)
        items = [example(i if i < n else start) for i in index]
        batch = {k: np.stack([np.asarray(it[k]) for it in items]) for k in items[0]}
        batch["valid"] = valid
        yield batch


def take(iterator: Iterable, n: int) -> list:
    """The next `n` items of `iterator` (convenience for eval sets and tests)."""
    out = []
    for _ in range(n):
        out.append(next(iterator))
    return out
