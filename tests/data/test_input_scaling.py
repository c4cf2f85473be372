"""Input that scales (issue 14 item 4): file-backed sources decode in grain worker processes with the same
batches in the same order as in-process, image files are checked lazily (a missing one fails the step naming
it, also from a worker) or at start-up on request, two shards partition the data, file-backed sources hold no
decoded images and are never cached, and data paths go through etils.epath (a fake gs:// file system).

Worker tests are small (a dozen 8x8 images, 2 workers), run under a deadline (a hang fails, it does not block
CI) and check that the worker processes are gone after `close()`."""
import contextlib
import json
import multiprocessing
import os
import signal
import sys
import time

import cloudpickle
import grain
import numpy as np
import pytest
from PIL import Image

from jaxmm.data import sources
from jaxmm.data.conversation import ConversationFormatter
from jaxmm.data.llava_json import BadRecordError, LlavaJsonSource
from jaxmm.data.pipeline import CachedSource, eval_batches, make_loader, take
from jaxmm.data.tokenizers import ByteTokenizer

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers get this module's helpers by value

# grain's worker semaphores are released by the garbage collector; Python warns when that happens inside the
# resource tracker's own clean-up (harmless: the workers are checked to be gone)
pytestmark = pytest.mark.filterwarnings("ignore:ResourceTracker called reentrantly:UserWarning")

N = 12  # records; record i has image img/i.png, all 8x8, distinct


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail (TimeoutError) instead of hanging when the block takes longer than `seconds`."""
    def alarm(*_):
        raise TimeoutError(f"the block took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _no_workers_left(timeout: float = 20.0):
    end = time.monotonic() + timeout
    while multiprocessing.active_children() and time.monotonic() < end:
        time.sleep(0.05)
    assert not multiprocessing.active_children(), multiprocessing.active_children()


def _collect(it, n=None):
    """Copies of the batches (worker batches live in shared memory), then close the iterator."""
    try:
        out = []
        for batch in it:
            out.append({k: np.array(v) for k, v in batch.items()})
            if n is not None and len(out) == n:
                break
        return out
    finally:
        it.close()


def _folder(tmp_path, n=N):
    (tmp_path / "img").mkdir()
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
        records.append({"id": f"r{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\nWhat is {i}?"}, {"from": "gpt", "value": f"a{i}"}]})
    (tmp_path / "data.json").write_text(json.dumps(records))
    return tmp_path / "data.json", tmp_path / "img"


class WithPid:
    """Adds the id of the process that made the example (proves where decoding ran)."""

    def __call__(self, ex):
        return {**ex, "pid": np.int64(os.getpid())}


def _numeric(ex):
    return {k: v for k, v in ex.items() if np.asarray(v).dtype.kind in "biuf"}


def test_workers_give_the_same_batches_in_the_same_order_and_resume(tmp_path):
    path, img = _folder(tmp_path)
    src = LlavaJsonSource(path, img, image_size=8)
    fmt = ConversationFormatter(ByteTokenizer(), max_len=32)
    make = lambda **kw: make_loader(src, batch_size=4, seed=3, num_epochs=2, shard_index=0,  # noqa: E731
                                    shard_count=1, transforms=[fmt, _numeric, WithPid()], **kw)
    with deadline(120):
        plain = _collect(make())
        workers = _collect(make(worker_count=2, worker_buffer_size=1))
        _no_workers_left()
    assert len(plain) == len(workers) == 2 * N // 4
    for a, b in zip(plain, workers):
        assert a.keys() == b.keys() and {"image", "input_ids", "loss_mask", "has_image"} <= a.keys()
        for k in a.keys() - {"pid"}:
            np.testing.assert_array_equal(a[k], b[k])
    # independent reference: the files' pixels (PIL; 8x8 files read at 8x8 are unchanged) in the order of the
    # ordering rule (a NumPy permutation seeded [seed, epoch] per epoch), so equal batches are not equally wrong
    order = np.concatenate([np.random.default_rng([3, epoch]).permutation(N) for epoch in range(2)])
    expected = np.stack([np.asarray(Image.open(img / f"{i}.png").convert("RGB")) for i in order])
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in workers]), expected)
    # in-process decoding ran here; with workers, in 2 other processes
    assert set(np.concatenate([b["pid"] for b in plain])) == {os.getpid()}
    pids = set(np.concatenate([b["pid"] for b in workers]).tolist())
    assert len(pids) == 2 and os.getpid() not in pids

    # checkpoint / restore with workers continues with the same batches
    with deadline(120):
        it = make(worker_count=2)
        first = _collect_keep_open(it, 2)
        state = it.get_state()
        it.close()
        again = make(worker_count=2)
        again.set_state(state)
        rest = _collect(again)
        _no_workers_left()
    for a, b in zip(first + rest, plain):
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
        np.testing.assert_array_equal(a["image"], b["image"])
    assert len(first) + len(rest) == len(plain)


def _collect_keep_open(it, n):
    return [{k: np.array(v) for k, v in next(it).items()} for _ in range(n)]


def test_eval_batches_in_workers_equal_in_process(tmp_path):
    path, img = _folder(tmp_path, n=10)
    src = LlavaJsonSource(path, img, image_size=8)
    kw = dict(batch_size=4, transforms=[_numeric], shard_index=0, shard_count=1)
    with deadline(120):
        plain = list(eval_batches(src, **kw))
        workers = [{k: np.array(v) for k, v in b.items()} for b in eval_batches(src, worker_count=2, **kw)]
        _no_workers_left()
    assert [b["valid"].tolist() for b in workers] == [[1] * 4, [1] * 4, [1, 1, 0, 0]]
    for a, b in zip(plain, workers, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_missing_and_corrupt_images_fail_the_step_naming_the_file(tmp_path):
    path, img = _folder(tmp_path)
    (img / "5.png").unlink()
    t = time.perf_counter()
    src = LlavaJsonSource(path, img, image_size=8)  # lazy: the build reads only the JSON
    assert time.perf_counter() - t < 5.0 and len(src) == N
    with deadline(120), pytest.raises(FileNotFoundError, match=r"record 5 \(id 'r5'\): image file not found: "
                                                               + str(img / "5.png")):
        _collect(make_loader(src, batch_size=4, seed=0, shuffle=False, num_epochs=1, shard_index=0,
                             shard_count=1, worker_count=2))
    _no_workers_left()
    with pytest.raises(FileNotFoundError, match=str(img / "5.png")):
        src[5]
    # the batches before the bad one arrive: the failure is at the step that reads it
    assert len(_collect(make_loader(src, batch_size=4, seed=0, shuffle=False, num_epochs=1, shard_index=0,
                                    shard_count=1), n=1)) == 1
    # start-up check on request fails at the build, naming the file
    with pytest.raises(FileNotFoundError, match=str(img / "5.png")):
        LlavaJsonSource(path, img, image_size=8, check_files="startup")
    build = sources.get("llava_json").build
    args = dict(sources.get("llava_json").defaults, train_json=str(path), image_folder=str(img))
    assert len(build(args, split="train", examples=0, seed=0, encoder_args={"image_size": 8})) == N
    with pytest.raises(FileNotFoundError, match=str(img / "5.png")):
        build({**args, "check_files": "startup"}, split="train", examples=0, seed=0, encoder_args={"image_size": 8})
    with pytest.raises(ValueError, match="check_files: expected 'lazy' | 'startup' | 'decode', got True"):
        LlavaJsonSource(path, img, check_files=True)

    # a corrupt file (truncated PNG whose header reads) raises BadRecordError, which pickles back from a worker
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img / "5.png")
    data = (img / "5.png").read_bytes()
    (img / "5.png").write_bytes(data[: len(data) // 2])
    with deadline(120), pytest.raises(BadRecordError, match=r"record 5 \(id 'r5'\): cannot decode image .*5.png"):
        _collect(make_loader(src, batch_size=4, seed=0, shuffle=False, num_epochs=1, shard_index=0,
                             shard_count=1, worker_count=2))
    _no_workers_left()


def test_two_shards_partition_the_data_with_grain_shard_options(tmp_path):
    path, img = _folder(tmp_path)
    src = LlavaJsonSource(path, img, image_size=8)

    def ids(**kw):
        return [[int(x) for x in b["index"]] for b in _collect(make_loader(
            grain.MapDataset.source(src).map(lambda ex: {"index": int(ex["id"][1:])}), batch_size=4, seed=9,
            num_epochs=1, **kw))]

    one = ids(shard_options=grain.sharding.ShardOptions(0, 1))
    halves = [ids(shard_options=grain.sharding.ShardOptions(i, 2)) for i in range(2)]
    a, b = (set(sum(h, [])) for h in halves)
    assert not a & b and a | b == set(range(N)) and len(a) == len(b) == N // 2
    # global batch s = shard 0's rows then shard 1's rows of the one-process batch s (the ordering rule)
    for s, batch in enumerate(one):
        assert halves[0][s] + halves[1][s] == batch
    assert sorted(sum(one, [])) == list(range(N))
    assert ids() == one  # the default: grain.sharding.ShardByJaxProcess() (one process here)
    with pytest.raises(ValueError, match="shard_options: expected either shard_options or shard_index"):
        make_loader(src, batch_size=4, seed=0, shard_options=grain.sharding.ShardOptions(0, 2), shard_index=0,
                    shard_count=2)
    with pytest.raises(ValueError, match="worker_count: expected an integer >= 0"):
        make_loader(src, batch_size=4, seed=0, shard_index=0, shard_count=1, worker_count=-1)


def _arrays_in(obj, seen=None) -> int:
    """Number of numpy arrays reachable from obj's attributes and containers."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return 1
    if isinstance(obj, dict):
        return sum(_arrays_in(k, seen) + _arrays_in(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set)):
        return sum(_arrays_in(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return _arrays_in(vars(obj), seen)
    return 0


def test_file_backed_sources_hold_no_decoded_images_and_are_never_cached(tmp_path):
    path, img = _folder(tmp_path)
    src = LlavaJsonSource(path, img, image_size=8)
    for i in range(len(src)):
        assert src[i]["image"].shape == (8, 8, 3)
    assert _arrays_in(src) == 0  # after reading everything: nothing decoded is kept
    cached = CachedSource([{"x": np.zeros(2)} for _ in range(3)])
    [cached[i] for i in range(3)]
    assert _arrays_in(cached) == 3  # the probe sees a cache (so 0 above is not the probe being blind)
    with pytest.raises(ValueError, match="source: expected a small procedural source .* got LlavaJsonSource"):
        CachedSource(src)
    assert {n for n, s in sources.SOURCES.items() if s.cacheable} >= {"textvqa", "audioqa", "digits"}
    assert not sources.get("llava_json").cacheable and not sources.get("tfds").cacheable

    # the trainer's mllm task, with data.cache=True (its default), caches the procedural set only
    from train import config as config_lib
    from train.tasks.mllm import MLLMQATask

    task = MLLMQATask()
    config = config_lib.defaults()
    config.task = "mllm.qa"
    config.data = dict(source="llava_json", llava_json=dict(train_json=str(path), image_folder=str(img)))
    config.model = dict(vit=dict(image_size=8))
    config = config_lib.fill(config, task.default_config())
    train, _ = MLLMQATask(config).datasets(config)
    assert not _sources_in(train, CachedSource) and _sources_in(train, LlavaJsonSource)
    assert config.data.cache
    with config.unlocked():
        config.data.source, config.data.train_examples, config.data.eval_examples = "textvqa", 4, 2
        config.model.vit.image_size = 36
    train, _ = MLLMQATask(config).datasets(config)
    assert _sources_in(train, CachedSource)


def _sources_in(ds, cls) -> bool:
    """Whether a MapDataset pipeline reads from a source of type cls."""
    stack = [ds]
    while stack:
        d = stack.pop()
        if isinstance(getattr(d, "_source", None), cls):
            return True
        stack.extend(getattr(d, "parents", ()))
    return False


def test_tfds_source_decodes_in_workers_identically():
    import tensorflow_datasets as tfds

    from jaxmm.data.tfds import TFDSSource

    with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
        src = TFDSSource("mnist", split="train", image_size=8)
        make = lambda **kw: make_loader(src, batch_size=2, seed=1, num_epochs=1, shard_index=0,  # noqa: E731
                                        shard_count=1, transforms=[_numeric], **kw)
        with deadline(120):
            plain, workers = _collect(make()), _collect(make(worker_count=2))
            _no_workers_left()
    assert len(plain) == len(workers) == 4
    for a, b in zip(plain, workers):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["tfds_index"], b["tfds_index"])
    assert sorted(np.concatenate([b["tfds_index"] for b in plain]).tolist()) == list(range(8))


# ------------------------------------------------------------------------------------ remote paths (epath)
@pytest.fixture
def fake_gcs(monkeypatch):
    """gs:// served from memory through fsspec, the way etils.epath reaches a bucket without TensorFlow."""
    import importlib

    from etils.epath import backend, gpath
    from fsspec.implementations.memory import MemoryFileSystem

    class FakeGCS(MemoryFileSystem):
        protocol = ("gs", "gcs")
        store, pseudo_dirs = {}, [""]

        @classmethod
        def _strip_protocol(cls, path):
            path = str(path)
            for prefix in ("gs://", "gcs://"):
                path = path.removeprefix(prefix)
            return MemoryFileSystem._strip_protocol(path)

    for name in ("gs", "gcs"):
        monkeypatch.setitem(importlib.import_module("fsspec.registry")._registry, name, FakeGCS)
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    clear = type(backend.fsspec_backend)._get_filesystem.cache_clear
    clear()
    yield FakeGCS
    clear()


def test_llava_json_and_tfds_paths_through_epath(tmp_path, fake_gcs):
    from etils import epath

    path, img = _folder(tmp_path, n=4)
    bucket = epath.Path("gs://bucket/llava")
    (bucket / "img").mkdir(parents=True)
    (bucket / "data.json").write_bytes(path.read_bytes())
    for i in range(4):
        (bucket / "img" / f"{i}.png").write_bytes((img / f"{i}.png").read_bytes())
    assert not os.path.exists("gs:") and fake_gcs.store  # the files are in the fake bucket, not on disk

    local = LlavaJsonSource(path, img, image_size=8)
    remote = LlavaJsonSource("gs://bucket/llava/data.json", "gs://bucket/llava/img", image_size=8,
                             check_files="startup")
    assert len(remote) == 4
    for i in range(4):
        np.testing.assert_array_equal(remote[i]["image"], local[i]["image"])
        assert remote[i]["conversations"] == local[i]["conversations"]
    batch = _collect(make_loader(remote, batch_size=4, seed=0, shuffle=False, num_epochs=1, shard_index=0,
                                 shard_count=1, transforms=[_numeric]))[0]
    np.testing.assert_array_equal(batch["image"], np.stack([local[i]["image"] for i in range(4)]))

    (bucket / "img" / "2.png").unlink()
    with pytest.raises(FileNotFoundError, match="image file not found: gs://bucket/llava/img/2.png"):
        remote[2]
    with pytest.raises(FileNotFoundError, match="gs://bucket/llava/img/2.png"):
        LlavaJsonSource("gs://bucket/llava/data.json", "gs://bucket/llava/img", check_files="startup")
    with pytest.raises(FileNotFoundError, match="LLaVA conversation file not found: gs://bucket/nope.json"):
        LlavaJsonSource("gs://bucket/nope.json", "gs://bucket/llava/img")
    with pytest.raises(FileNotFoundError, match="LLaVA image folder not found: gs://bucket/none"):
        LlavaJsonSource("gs://bucket/llava/data.json", "gs://bucket/none")

    from jaxmm.data.tfds import TFDSSource

    with pytest.raises(FileNotFoundError, match="TFDS data_dir not found: gs://bucket/tfds"):
        TFDSSource("mnist", data_dir="gs://bucket/tfds")


class Pids:
    """Examples that say which process made them."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"index": np.int64(i), "pid": np.int64(os.getpid())}


def test_trainer_loader_takes_the_worker_count_from_the_config():
    import ml_collections

    from train import loop

    config = ml_collections.ConfigDict(dict(data=dict(worker_count=2, worker_buffer_size=1)))
    assert loop.loader_options(config) == dict(worker_count=2, worker_buffer_size=1)
    assert loop.loader_options(ml_collections.ConfigDict(dict(data={}))) == dict(worker_count=0,
                                                                                worker_buffer_size=2)
    with deadline(120):
        batches = _collect(loop.train_iterator(Pids(), 4, 2, 0, **loop.loader_options(config)))
        _no_workers_left()
    pids = set(np.concatenate([b["pid"] for b in batches]).tolist())
    assert len(batches) == 2 and len(pids) == 2 and os.getpid() not in pids
    assert sorted(np.concatenate([b["index"] for b in batches]).tolist()) == list(range(8))
