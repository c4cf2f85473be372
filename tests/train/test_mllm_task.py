"""The generic MLLM instruction-tuning task (train/tasks/mllm.py) in the shared loop, on the real tiny MLLM:
sharded (data x fsdp x tensor) = one device, TFDS mock data and a LLaVA-JSON folder train, exact-match
scoring against a Python reference."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import config as config_lib
from train import loop
from train.metrics import read
from train.tasks import get
from trained_close import SGD, assert_losses_close, assert_params_close, flat

TASK = get("mllm.qa")


def tiny(**overrides):
    c = config_lib.defaults()
    d = TASK().default_config()
    c.task = "mllm.qa"
    c.model, c.data, c.task_args = d.model, d.data, d.task_args
    c.model.vit.update(dict(image_size=16, patch_size=8, d_model=32, num_layers=1, num_heads=2, mlp_dim=64))
    c.model.llm.update(dict(num_layers=1, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64))
    c.data.update(dict(train_examples=64, eval_examples=16, max_len=48, max_prompt_len=40, max_answer_len=4))
    c.data.textvqa.update(dict(max_words=1, kinds=("read",), font_sizes=(10, 12)))
    c.train.update(dict(steps=5, batch_size=16, log_every=1, eval_batch_size=16, progress=False, plots=False))
    c.optim.update(dict(lr=3e-3, schedule="constant"))
    c.checkpoint.update(dict(every=0, async_save=False))
    return config_lib.apply_overrides(c, overrides)


def _losses(workdir):
    return [r["loss"] for r in read(os.path.join(workdir, "metrics.jsonl")) if "loss" in r]


def test_mllm_sharded_matches_one_device(tmp_path):
    # SGD, not Adam: see tests/train/trained_close.py for the tolerance argument
    sgd = {**SGD, "optim.lr": 0.05}
    s1, one = loop.train(tiny(**{"mesh.shape": (1, 1, 1), **sgd}), str(tmp_path / "one"), TASK, return_state=True)
    s8, eight = loop.train(tiny(**{"mesh.shape": (2, 2, 2), **sgd}), str(tmp_path / "dft"), TASK,
                           return_state=True)
    assert set(one.params) == {"encoder", "projector", "llm"}
    emb = eight.params["llm"]["embedder"]["embedding"]
    assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert_losses_close(_losses(tmp_path / "dft"), _losses(tmp_path / "one"))
    assert_params_close(eight.params, one.params, "2x2x2 mesh vs one device")
    # the tolerance still sees a wrong sharding: two tensor-sharded embedding rows swapped
    wrong = flat(one.params)
    key = next(k for k in wrong if "embedding" in k)
    wrong[key] = wrong[key][[1, 0, *range(2, wrong[key].shape[0])]]
    with pytest.raises(AssertionError, match="embedding"):
        assert_params_close(flat(eight.params), wrong)
    assert 0.0 <= s8["eval_accuracy"] <= 1.0 and s8["eval_accuracy"] == s1["eval_accuracy"]
    rec = read(os.path.join(tmp_path / "one", "metrics.jsonl"))[0]
    assert {"lr/encoder", "lr/projector", "lr/llm", "grad_norm/encoder", "tokens_per_s"} <= set(rec)


def test_exact_match_against_python_reference(monkeypatch):
    import jaxmm.models.mllm as mllm_mod
    from jaxmm.data import ByteTokenizer

    tok = ByteTokenizer()
    e, p = tok.eos_id, tok.pad_id
    answers = [[99, 97, 116, p], [99, 97, 116, p], [49, p, p, p], [100, 111, 103, p], [100, 111, p, p]]
    generated = [[99, 97, 116, e, 5], [99, 97, 116, 7, e], [49, e, p, p, p], [100, 111, 103, e, e],
                 [100, 111, 103, e, p]]

    def reference(ans, gen):
        text = []
        for t in gen:
            if t == e:
                break
            text.append(t)
        return float(text == [t for t in ans if t != p])

    monkeypatch.setattr(mllm_mod, "generate", lambda *a, **k: jnp.asarray(generated, jnp.int32))
    task = TASK(tiny())  # a run's task object: byte tokenizer, max_new_tokens 0
    batch = {"answer_ids": jnp.asarray(answers, jnp.int32), "prompt_ids": jnp.zeros((5, 3), jnp.int32),
             "prompt_mask": jnp.ones((5, 3), jnp.int32), "image": jnp.zeros((5, 16, 16, 3), jnp.uint8)}

    class _M:
        class config:
            modality = "image"

    got = task.exact_match(_M(), None, batch)
    np.testing.assert_array_equal(np.asarray(got), [reference(a, g) for a, g in zip(answers, generated)])


def test_tfds_mock_data_trains(tmp_path):
    import tensorflow_datasets as tfds  # the data extra, installed by `make test`
    with tfds.testing.mock_data(num_examples=48, policy=tfds.testing.MockPolicy.USE_CODE):
        c = tiny(**{"data.source": "tfds", "mesh.shape": (2, 1, 1), "train.steps": 6, "train.eval_examples": 16})
        c.data.tfds.update(dict(name="mnist", train_split="train", eval_split="test",
                                question="Which digit is this?"))
        summary = loop.train(c, str(tmp_path / "tfds"), TASK)
    losses = _losses(tmp_path / "tfds")
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    assert 0.0 <= summary["eval_accuracy"] <= 1.0


def test_llava_json_folder_trains(tmp_path):
    from jaxmm.data import TextVQA, write_llava_folder

    src = TextVQA(40, image_size=16, max_words=1, kinds=("read",), font_sizes=(10, 12))
    path = write_llava_folder(src, tmp_path / "llava", 32)
    _add_bad_records(path)
    c = tiny(**{"data.source": "llava_json", "mesh.shape": (1, 1, 1), "train.steps": 4})
    c.data.llava_json.update(dict(train_json=path, eval_json=path, image_folder=str(tmp_path / "llava"),
                                  skip_bad_records=True))
    with pytest.warns(UserWarning, match="skipped 2 of 34 bad records"):
        summary = loop.train(c, str(tmp_path / "lj"), TASK)
    losses = _losses(tmp_path / "lj")
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert "eval_accuracy" in summary
    # the two bad records were dropped and counted in the summary, per split and per reason
    assert summary["data_skipped/train"] == summary["data_skipped/eval"] == 2
    assert summary["data_skipped/train/too_long"] == summary["data_skipped/train/no_assistant_turn"] == 1


def test_skipped_records_reach_the_summary_without_an_eval_set(tmp_path):
    from jaxmm.data import TextVQA, write_llava_folder

    path = write_llava_folder(TextVQA(20, image_size=16, max_words=1, kinds=("read",)), tmp_path / "llava", 16)
    _add_bad_records(path)
    c = tiny(**{"data.source": "llava_json", "mesh.shape": (1, 1, 1), "train.steps": 1})
    c.data.llava_json.update(dict(train_json=path, image_folder=str(tmp_path / "llava"), skip_bad_records=True))
    with pytest.warns(UserWarning, match="skipped 2 of 18 bad records"):
        summary = loop.train(c, str(tmp_path / "lj"), TASK)
    assert summary["eval_skipped"] == "no eval set"
    assert summary["data_skipped/train"] == 2 and "data_skipped/eval" not in summary
    assert summary["data_skipped/train/too_long"] == 1


def _add_bad_records(path):
    import json

    with open(path) as f:
        records = json.load(f)
    long = [{"from": "human", "value": "x" * 60}, {"from": "gpt", "value": "a"}]
    mute = [{"from": "human", "value": "hi"}]
    records += [{"id": "long", "conversations": long}, {"id": "mute", "conversations": mute}]
    with open(path, "w") as f:
        json.dump(records, f)


def test_bad_llava_record_stops_the_run_before_compiling(tmp_path):
    from jaxmm.data import BadRecordError, TextVQA, write_llava_folder

    path = write_llava_folder(TextVQA(2, image_size=16, max_words=1, kinds=("read",)), tmp_path / "llava", 2)
    _add_bad_records(path)
    c = tiny(**{"data.source": "llava_json"})
    c.data.llava_json.update(dict(train_json=path, image_folder=str(tmp_path / "llava")))
    # bos, user, 60 bytes, assistant = 63 prompt tokens; data.max_len is 48
    with pytest.raises(BadRecordError, match=r"record 2 \(id 'long'\): prompt of 63 tokens \+ 1 answer token "
                                             r"exceeds max_len 48 \[2 of 4 records are bad"):
        TASK(c).datasets(c)
