"""vit_probe's multi-target heads (train/tasks/vit_probe.py, `data.target="word+color"`): the loss is the sum of
the per-head cross-entropies and each head's accuracy is its own, checked against float64 numpy on the task's
own model, batch and label wiring; the labels against the TextVQA metadata; bad targets fail by name."""
from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest

from jaxmm.data.textvqa import COLORS, DEFAULT_WORDS, TextVQA
from train import tasks
from train.tasks.vit_probe import ViTProbe, multi_head_loss, targets


def _ce(logits, labels):
    """float64 per-row softmax cross-entropy."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    return np.log(np.exp(z).sum(-1)) - z[np.arange(len(labels)), labels]


def test_multi_head_loss_is_the_sum_of_independent_per_head_ces():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 17)).astype(np.float32) * 3
    word, color = rng.integers(0, 12, 6), rng.integers(0, 5, 6)
    loss, hits = multi_head_loss(logits, {"word": word, "color": color}, {"word": 12, "color": 5})
    want = _ce(logits[:, :12], word) + _ce(logits[:, 12:], color)
    np.testing.assert_allclose(np.asarray(loss), want, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(hits["word"]), logits[:, :12].argmax(-1) == word)
    np.testing.assert_array_equal(np.asarray(hits["color"]), logits[:, 12:].argmax(-1) == color)
    # one CE over all 17 logits (the heads not split) would differ
    assert not np.allclose(np.asarray(loss), _ce(logits, word), rtol=1e-3)


def test_targets_parse_and_reject_bad_names():
    assert targets("word") == {"word": DEFAULT_WORDS}
    assert list(targets("color+word")) == ["color", "word"] and targets("color+word")["color"] == tuple(COLORS)
    for bad in ("wrod", "word+word", "", "word+"):
        with pytest.raises(ValueError, match="config.data.target.*word"):
            targets(bad)


@pytest.fixture(scope="module")
def probe():
    """The task at toy size with two heads: its config, model, params and one eval batch."""
    c = ml_collections.ConfigDict(dict(task="vit_probe", model=dict(image_size=16, patch_size=8, d_model=16,
                                                                    num_layers=1, num_heads=2, mlp_dim=32),
                                       data=dict(target="word+color", train_examples=8, eval_examples=8)))
    c = tasks.full_config(c)
    task = ViTProbe(c)
    model = task.build_model(c)
    _, eval_data = task.datasets(c)
    rows = [eval_data[i] for i in range(8)]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    params = model.init(jax.random.PRNGKey(0), batch["image"])["params"]
    return task, model, params, batch


def test_labels_match_the_textvqa_metadata(probe):
    _, _, _, batch = probe
    ds = TextVQA(8, seed=0, split="eval", image_size=16, max_words=1, kinds=("read",), font_sizes=(10, 14))
    np.testing.assert_array_equal(batch["label_word"], [DEFAULT_WORDS.index(ds[i]["words"][0]) for i in range(8)])
    np.testing.assert_array_equal(batch["label_color"], [list(COLORS).index(ds[i]["colors"][0]) for i in range(8)])


def test_task_loss_and_accuracies_per_head_match_numpy(probe):
    task, model, params, batch = probe
    logits = np.asarray(model.apply({"params": params}, batch["image"]))
    assert logits.shape == (8, 12 + 5)
    ce = _ce(logits[:, :12], batch["label_word"]) + _ce(logits[:, 12:], batch["label_color"])
    acc_w = logits[:, :12].argmax(-1) == batch["label_word"]
    acc_c = logits[:, 12:].argmax(-1) == batch["label_color"]
    loss, aux = task.loss_fn(model, params, batch, None)
    np.testing.assert_allclose(float(loss), ce.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(aux["train_accuracy/word"]), acc_w.mean())
    np.testing.assert_allclose(float(aux["train_accuracy/color"]), acc_c.mean())
    np.testing.assert_allclose(float(aux["train_accuracy"]), (acc_w.mean() + acc_c.mean()) / 2)
    ev = task.eval_metrics(model, params, batch)
    np.testing.assert_allclose(np.asarray(ev["loss"]), ce, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(ev["accuracy/word"]), acc_w)
    np.testing.assert_array_equal(np.asarray(ev["accuracy/color"]), acc_c)
    np.testing.assert_allclose(np.asarray(ev["accuracy"]), (acc_w + acc_c) / 2)
