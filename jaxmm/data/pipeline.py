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

Sharding: this process's share is a `grain.sharding.ShardOptions` (default `ShardByJaxProcess()`), applied to
the stream of per-process batches (grain's `IndexSampler` would bring its own shuffle, not this rule).
Workers: `worker_count=N` makes reading, decoding, transforms and batching run in N grain worker processes
(`mp_prefetch`; worker i makes this process's batches i, i+N, ...; grain interleaves them back in order): the
same batches as in-process, for sources that read files (`LlavaJsonSource`, `TFDSSource`). `CachedSource` is
for small procedural sets only: file-backed sources are never cached whole in RAM.
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

    For small procedural sets trained over many epochs (rendering/feature extraction paid once); refuses a
    source that reads files (`file_backed = True`: LLaVA-JSON, TFDS), whose whole set must not sit in RAM.
    Thread-safe for grain's reader threads: a race only makes the same deterministic example twice. With
    worker processes each worker holds its own cache.
    """

    def __init__(self, source):
        if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
            fail("source", "a random-access source with __len__/__getitem__", type(source).__name__)
        if getattr(source, "file_backed", False):
            fail("source", "a small procedural source (a file-backed one is read on every access, never cached "
                 "whole in RAM)", type(source).__name__)
        self.source, self._cache = source, {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        index = int(index)
        if index not in self._cache:
            self._cache[index] = self.source[index]
        return self._cache[index]


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


class _Stream:
    """Stream position -> example: a new seeded permutation of the n examples each epoch (or source order).

    A small picklable object (not a closure) so a grain worker process can rebuild it; the permutations are
    memoised per process (`_permutation`), never pickled."""

    def __init__(self, ds: grain.MapDataset, seed: int, shuffle: bool):
        self.ds, self.seed, self.shuffle, self.n = ds, int(seed), bool(shuffle), len(ds)

    def __call__(self, i: int):
        epoch, j = divmod(int(i), self.n)
        return self.ds[int(_permutation(self.seed, epoch, self.n)[j]) if self.shuffle else j]


def _shard_options(shard_options, shard_index, shard_count) -> grain.sharding.ShardOptions:
    """`grain.sharding.ShardOptions` for this process: given, or from shard_index / shard_count, or
    `ShardByJaxProcess` (jax.process_index() of jax.process_count())."""
    if shard_options is not None:
        if shard_index is not None or shard_count is not None:
            fail("shard_options", "either shard_options or shard_index/shard_count", "both")
        if not isinstance(shard_options, grain.sharding.ShardOptions):
            fail("shard_options", "a grain.sharding.ShardOptions", type(shard_options).__name__)
        return shard_options
    if shard_index is None and shard_count is None:
        return grain.sharding.ShardByJaxProcess()
    if shard_index is None or shard_count is None:
        fail("shard_index/shard_count", "both or neither", f"shard_index={shard_index}, shard_count={shard_count}")
    check_positive("shard_count", shard_count)
    if not 0 <= shard_index < shard_count:
        fail("shard_index", f"an integer in [0, {shard_count})", shard_index)
    return grain.sharding.ShardOptions(int(shard_index), int(shard_count))


def _local_rows(batch_size: int, shard_count: int) -> int:
    check_positive("batch_size", batch_size)
    if batch_size % shard_count:
        fail("batch_size", f"a multiple of the process count {shard_count} (it is the global batch)", batch_size)
    return batch_size // shard_count


def _check_workers(worker_count: int, worker_buffer_size: int) -> None:
    if not isinstance(worker_count, (int, np.integer)) or isinstance(worker_count, bool) or worker_count < 0:
        fail("worker_count", "an integer >= 0 (0 = decode in this process)", repr(worker_count))
    check_positive("worker_buffer_size", worker_buffer_size)


def _in_workers(ds: grain.IterDataset, worker_count: int, worker_buffer_size: int) -> grain.IterDataset:
    """`ds` produced by `worker_count` grain worker processes (batch i by worker i % worker_count, output
    interleaved back in order); unchanged for 0 workers."""
    if not worker_count:
        return ds
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain 0.2.18 reads an absl flag in mp_prefetch even when none were parsed
        flags.FLAGS.mark_as_parsed()
    return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(worker_count),
                                                       per_worker_buffer_size=int(worker_buffer_size)))


def make_loader(source, *, batch_size: int, seed: int, shuffle: bool = True, num_epochs: int | None = None,
                num_examples: int | None = None, shard_options: grain.sharding.ShardOptions | None = None,
                shard_index: int | None = None, shard_count: int | None = None,
                transforms: Sequence[Callable[[Any], Any]] = (), drop_remainder: bool = True,
                num_threads: int = 2, prefetch: int = 8, worker_count: int = 0,
                worker_buffer_size: int = 2) -> grain.DatasetIterator:
    """A checkpointable iterator of this process's rows of each global batch over `source` (module docstring).

    Args:
      source: a `grain.MapDataset` or a random-access source (e.g. `TextVQA`, `AudioQA`, `LlavaJsonSource`).
      batch_size: examples per GLOBAL batch (a multiple of shard_count); each process gets batch_size/shard_count.
      seed: order seed (and seed of any `grain.transforms.RandomMap` transform).
      shuffle: a new permutation every epoch (False: source order, every epoch).
      num_epochs: passes over the source; None = infinite (or `num_examples` stream examples).
      num_examples: length of the stream (e.g. steps x batch_size for a trainer), overrides num_epochs.
      shard_options: this process's `grain.sharding.ShardOptions`; default `ShardByJaxProcess()`
        (shard_index=jax.process_index(), shard_count=jax.process_count()). `shard_index=` / `shard_count=`
        are a shorthand for `ShardOptions(shard_index, shard_count)`.
      transforms: applied in order to each example (callables or grain Map / RandomMap transforms),
        e.g. `[ConversationFormatter(tokenizer, max_len=64)]`.
      drop_remainder: drop a last, smaller batch (only matters with a finite stream).
      num_threads / prefetch: grain read threads and prefetch buffer (per worker process when there are any).
      worker_count: grain worker processes that read, decode, transform and batch (0: all in this process).
        Source, transforms and order must then pickle (cloudpickle; workers are spawned).
      worker_buffer_size: batches each worker keeps ready.
    The output (values and order) does not depend on num_threads, prefetch, worker_count or
    worker_buffer_size; the iterator's state does (resume with the same worker_count). Close the iterator
    (`it.close()`) to stop its workers at once (otherwise they stop when it is garbage-collected or at exit).
    """
    shard = _shard_options(shard_options, shard_index, shard_count)
    per = _local_rows(batch_size, shard.shard_count)
    _check_workers(worker_count, worker_buffer_size)
    if num_epochs is not None:
        check_positive("num_epochs", num_epochs)
    ds = as_map_dataset(source)
    n = len(ds)
    if n < 1:
        fail("source", "at least one example", n)
    total = (num_examples if num_examples is not None else n * num_epochs if num_epochs is not None else 2 ** 53)
    stream = grain.MapDataset.range(int(total)).map(_Stream(ds, seed, shuffle))
    for i, t in enumerate(transforms):
        if isinstance(t, grain.transforms.RandomMap):
            stream = stream.random_map(t, seed=seed + 1 + i)
        else:
            stream = stream.map(t)
    # global batch s = local batches s*P .. s*P+P-1 (contiguous rows); this process takes the (s*P+p)-th
    batches = stream.batch(per, drop_remainder=drop_remainder)[shard.shard_index::shard.shard_count]
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(_in_workers(batches.to_iter_dataset(read_options=options), worker_count, worker_buffer_size))


class _EvalBatch:
    """Eval batch b -> this process's rows of it (picklable for grain workers; see `eval_batches`)."""

    def __init__(self, source, transforms, n: int, batch_size: int, per: int, shard_index: int):
        self.source, self.transforms, self.n = source, tuple(transforms), n
        self.batch_size, self.per, self.shard_index = batch_size, per, shard_index

    def example(self, i: int):
        ex = self.source[int(i)]
        for t in self.transforms:
            ex = t(ex)
        return ex

    def __call__(self, b: int) -> dict:
        start = int(b) * self.batch_size
        index = np.arange(start + self.shard_index * self.per, start + (self.shard_index + 1) * self.per)
        items = [self.example(i if i < self.n else start) for i in index]
        batch = {k: np.stack([np.asarray(it[k]) for it in items]) for k in items[0]}
        batch["valid"] = (index < self.n).astype(np.int32)
        return batch


def eval_batches(source, *, batch_size: int, transforms: Sequence[Callable[[Any], Any]] = (),
                 num_examples: int | None = None, shard_options: grain.sharding.ShardOptions | None = None,
                 shard_index: int | None = None, shard_count: int | None = None, worker_count: int = 0,
                 worker_buffer_size: int = 2) -> Iterator[dict]:
    """This process's rows of each fixed-shape global eval batch over the first `num_examples` examples of
    `source` (all by default; 0 = all), in order.

    Global batch b holds examples [b*B, (b+1)*B); process p gets its contiguous B/P rows. The last batch is
    filled up with copies of its first example, and the int32 field "valid" [B/P] is 0 on those rows.
    Sharding as in `make_loader`; `worker_count` > 0 makes the batches in grain worker processes (stopped when
    the generator finishes or is closed).
    """
    shard = _shard_options(shard_options, shard_index, shard_count)
    per = _local_rows(batch_size, shard.shard_count)
    _check_workers(worker_count, worker_buffer_size)
    n = len(source) if not num_examples else min(int(num_examples), len(source))
    make = _EvalBatch(source, transforms, n, batch_size, per, shard.shard_index)
    count = -(-n // batch_size)
    if not worker_count:
        for b in range(count):
            yield make(b)
        return
    ds = grain.MapDataset.range(count).map(make).to_iter_dataset(grain.ReadOptions(num_threads=1))
    it = iter(_in_workers(ds, worker_count, worker_buffer_size))
    try:
        yield from it
    finally:
        it.close()


def take(iterator: Iterable, n: int) -> list:
    """The next `n` items of `iterator` (convenience for eval sets and tests)."""
    out = []
    for _ in range(n):
        out.append(next(iterator))
    return out
