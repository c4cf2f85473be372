"""The one loader: checkpoint/restore continues identically, per-process rows are disjoint and cover, epochs are
permutations, determinism by seed, a global batch does not depend on the process count, eval padding."""
import numpy as np
import pytest

from jaxmm.data.conversation import ConversationFormatter
from jaxmm.data.pipeline import CachedSource, eval_batches, make_loader, take
from jaxmm.data.textvqa import TextVQA
from jaxmm.data.tokenizers import ByteTokenizer


class Indices:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"index": np.int64(i), "x": np.full((2,), i, np.float32)}


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_state_restore_gives_identical_following_batches():
    fmt = ConversationFormatter(ByteTokenizer(), max_len=48, keep=("boxes",))
    make = lambda: make_loader(TextVQA(20), batch_size=3, seed=5, transforms=[fmt], shard_index=0, shard_count=1)
    it = make()
    take(it, 8)  # crosses an epoch boundary (20 examples, 3 per batch)
    state = it.get_state()
    expected = take(it, 4)
    restored = make()
    restored.set_state(state)
    for a, b in zip(expected, take(restored, 4)):
        _same(a, b)
    assert expected[0]["input_ids"].shape == (3, 48) and expected[0]["image"].shape == (3, 64, 64, 3)


def test_epochs_are_fresh_permutations_and_seeded():
    it = make_loader(Indices(10), batch_size=5, seed=1, num_epochs=3, shard_index=0, shard_count=1)
    batches = list(it)
    assert len(batches) == 6
    epochs = np.concatenate([b["index"] for b in batches]).reshape(3, 10)
    for e in epochs:
        assert sorted(e) == list(range(10))
    assert not np.array_equal(epochs[0], epochs[1])
    again = np.concatenate([b["index"] for b in make_loader(Indices(10), batch_size=5, seed=1, num_epochs=3,
                                                             shard_index=0, shard_count=1)])
    np.testing.assert_array_equal(again, epochs.ravel())
    other = np.concatenate([b["index"] for b in make_loader(Indices(10), batch_size=5, seed=2, num_epochs=1,
                                                             shard_index=0, shard_count=1)])
    assert not np.array_equal(other, epochs[0])
    ordered = np.concatenate([b["index"] for b in make_loader(Indices(7), batch_size=2, seed=0, shuffle=False,
                                                               num_epochs=1, drop_remainder=False,
                                                               shard_index=0, shard_count=1)])
    np.testing.assert_array_equal(ordered, np.arange(7))


@pytest.mark.parametrize("count", [2, 3])
def test_process_shards_are_disjoint_and_cover(count):
    seen = []
    for index in range(count):
        it = make_loader(Indices(23), batch_size=count, seed=0, num_epochs=1, shard_index=index,
                         shard_count=count, drop_remainder=False)
        seen.append({int(b["index"][0]) for b in it})
    for a in range(count):
        for b in range(a + 1, count):
            assert not seen[a] & seen[b]
    assert set().union(*seen) == set(range(23))


def test_default_shard_is_this_process_and_errors():
    it = make_loader(Indices(4), batch_size=4, seed=0, shuffle=False, num_epochs=1)
    np.testing.assert_array_equal(next(it)["index"], np.arange(4))  # one process: the whole source
    with pytest.raises(ValueError, match="shard_index"):
        make_loader(Indices(4), batch_size=1, seed=0, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(Indices(4), batch_size=0, seed=0)
    with pytest.raises(ValueError, match="source"):
        make_loader(object(), batch_size=1, seed=0)


def test_state_through_json_and_orbax_checkpoint(tmp_path):
    import json

    import grain
    import orbax.checkpoint as ocp

    from jaxmm.data.audioqa import AudioQA

    fmt = ConversationFormatter(ByteTokenizer(), max_len=40)
    make = lambda: make_loader(AudioQA(12, max_digits=2, duration=0.5), batch_size=2, seed=0,  # noqa: E731
                               transforms=[fmt], shard_index=0, shard_count=1, num_threads=2)
    it = make()
    take(it, 3)
    state = json.loads(json.dumps(it.get_state()))
    mngr = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",))
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    expected = take(it, 2)
    assert expected[0]["audio"].shape == (2, 50, 80)
    from_json, from_orbax = make(), make()
    from_json.set_state(state)
    mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(from_orbax)))
    for restored in (from_json, from_orbax):
        for a, b in zip(expected, take(restored, 2)):
            _same(a, b)


def test_cached_source_gives_the_same_batches_and_reads_each_example_once():
    class Counting(Indices):
        calls = 0

        def __getitem__(self, i):
            Counting.calls += 1
            return super().__getitem__(i)

    plain = [b["index"] for b in make_loader(Indices(8), batch_size=4, seed=3, num_epochs=3, shard_index=0,
                                             shard_count=1)]
    cached = [b["index"] for b in make_loader(CachedSource(Counting(8)), batch_size=4, seed=3, num_epochs=3,
                                              shard_index=0, shard_count=1, num_threads=0)]  # no read race
    np.testing.assert_array_equal(np.stack(plain), np.stack(cached))
    assert Counting.calls == 8


def test_eval_batches_have_one_shape_and_mark_fillers():
    batches = list(eval_batches(Indices(10), batch_size=4, shard_index=0, shard_count=1))
    assert [b["index"].shape for b in batches] == [(4,)] * 3
    np.testing.assert_array_equal(np.concatenate([b["index"][b["valid"] == 1] for b in batches]), np.arange(10))
    np.testing.assert_array_equal(batches[-1]["valid"], [1, 1, 0, 0])
    halves = [list(eval_batches(Indices(10), batch_size=4, shard_index=i, shard_count=2)) for i in range(2)]
    got = [set(np.concatenate([b["index"][b["valid"] == 1] for b in h]).tolist()) for h in halves]
    assert got[0] | got[1] == set(range(10)) and not got[0] & got[1]
    fmt = ConversationFormatter(ByteTokenizer(), max_len=48, eval=True, max_answer_len=4)
    b = list(eval_batches(TextVQA(3), batch_size=2, transforms=[fmt]))[1]
    assert b["prompt_ids"].shape == (2, 48) and b["answer"][0] == TextVQA(3)[2]["answer"]


def test_a_global_batch_is_the_same_rows_whatever_the_process_count():
    one = next(make_loader(Indices(12), batch_size=4, seed=7, shard_index=0, shard_count=1))["index"]
    halves = [next(make_loader(Indices(12), batch_size=4, seed=7, shard_index=i, shard_count=2))["index"]
              for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(halves), one)
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(Indices(12), batch_size=3, seed=0, shard_index=0, shard_count=2)
