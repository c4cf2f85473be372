"""TFDS through `tfds.data_source` with `tfds.testing.mock_data`: examples, field mapping, loader, errors;
TensorFlow is never imported."""
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds  # the `data` extra, which `make test` installs

from jaxmm.data.conversation import ConversationFormatter
from jaxmm.data.pipeline import make_loader
from jaxmm.data.tfds import TFDSSource
from jaxmm.data.tokenizers import ByteTokenizer


def test_mock_mnist_yields_examples_and_batches():
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        raw = tfds.data_source("mnist", split="train")
        src = TFDSSource("mnist", split="train", question="Which digit is this?", image_size=16)
        assert len(src) == len(raw) == 6
        for i in range(6):
            ex = src[i]
            assert ex["image"].shape == (16, 16, 3) and ex["image"].dtype == np.uint8
            assert ex["conversations"] == [("user", "<image>\nWhich digit is this?"),
                                           ("assistant", str(int(raw[i]["label"])))]
        full = TFDSSource("mnist", split="train")[2]  # no resize: 28 x 28, grey repeated to RGB
        img = np.asarray(raw[2]["image"])[..., 0]
        for c in range(3):
            np.testing.assert_array_equal(full["image"][..., c], img)
        tok = ByteTokenizer()
        it = make_loader(src, batch_size=3, seed=0, shard_index=0, shard_count=1,
                         transforms=[ConversationFormatter(tok, max_len=40)])
        batch = next(it)
        assert batch["image"].shape == (3, 16, 16, 3) and batch["input_ids"].shape == (3, 40)
        assert ((batch["input_ids"] == tok.image_id).sum(1) == 1).all()
        custom = TFDSSource("mnist", conversation_fn=lambda r: [("user", "<image>\nparity?"),
                                                                ("assistant", "odd" if int(r["label"]) % 2 else "even")])
        assert custom[0]["conversations"][1][1] == ("odd" if int(raw[0]["label"]) % 2 else "even")
        with pytest.raises(ValueError, match="field mapping"):
            TFDSSource("mnist", answer_key="caption")
    assert "tensorflow" not in sys.modules


def test_missing_data_dir_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
        TFDSSource("mnist", data_dir=tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="not prepared as ArrayRecord under " + str(tmp_path)):
        TFDSSource("mnist", data_dir=tmp_path)
