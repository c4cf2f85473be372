"""LLaVA conversation JSON + image folder: a generated sample folder reads back; path errors name the path."""
import json

import numpy as np
import pytest
from PIL import Image

from jaxmm.data.conversation import ConversationFormatter
from jaxmm.data.llava_json import PAD_COLOR, LlavaJsonSource, write_llava_folder
from jaxmm.data.pipeline import make_loader
from jaxmm.data.textvqa import TextVQA
from jaxmm.data.tokenizers import ByteTokenizer


def _sample_folder(tmp_path):
    images = tmp_path / "imgs" / "coco"
    images.mkdir(parents=True)
    square = np.random.default_rng(0).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    Image.fromarray(square).save(images / "a.png")
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[...] = (200, 30, 30)
    Image.fromarray(wide).save(images / "b.jpg", quality=95)
    records = [
        {"id": "a", "image": "coco/a.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "noise"},
            {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "yes"}]},
        {"id": "b", "image": "coco/b.jpg", "conversations": [
            {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "red"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    ]
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(records))
    return path, tmp_path / "imgs", square


def test_reads_sample_folder(tmp_path):
    path, folder, square = _sample_folder(tmp_path)
    src = LlavaJsonSource(path, folder, image_size=16)
    assert len(src) == 3
    a, b, c = src[0], src[1], src[2]
    np.testing.assert_array_equal(a["image"], square)  # PNG is lossless and already 16 x 16
    assert a["conversations"] == [("user", "<image>\nWhat is this?"), ("assistant", "noise"),
                                  ("user", "Sure?"), ("assistant", "yes")]
    # 40 x 20 red padded to 40 x 40 (10 rows of fill above and below) then resized to 16: rows 0-2 are the
    # fill colour, rows 5-10 the (JPEG) red
    assert b["image"].shape == (16, 16, 3) and b["has_image"] == 1
    np.testing.assert_allclose(b["image"][:3].reshape(-1, 3), np.tile(PAD_COLOR, (48, 1)), atol=3)
    np.testing.assert_allclose(b["image"][5:11].reshape(-1, 3), np.tile((200, 30, 30), (96, 1)), atol=12)
    stretched = LlavaJsonSource(path, folder, image_size=16, resize="stretch")[1]["image"]
    np.testing.assert_allclose(stretched.reshape(-1, 3), np.tile((200, 30, 30), (256, 1)), atol=12)
    assert c["has_image"] == 0 and not c["image"].any()

    tok = ByteTokenizer()
    it = make_loader(src, batch_size=3, seed=0, shuffle=False, shard_index=0, shard_count=1,
                     transforms=[ConversationFormatter(tok, max_len=48)])
    batch = next(it)
    assert batch["image"].shape == (3, 16, 16, 3)
    np.testing.assert_array_equal((batch["input_ids"] == tok.image_id).sum(1), [1, 1, 0])
    np.testing.assert_array_equal(batch["has_image"], [1, 1, 0])
    assert tok.decode(batch["input_ids"][0][batch["loss_mask"][0] == 1], skip_special=False) == "noise<eos>yes<eos>"


def test_round_trip_of_a_procedural_set(tmp_path):
    ds = TextVQA(5, image_size=32, max_words=2)
    path = write_llava_folder(ds, tmp_path / "export", 5)
    src = LlavaJsonSource(path, tmp_path / "export", image_size=32)
    for i in range(5):
        np.testing.assert_array_equal(src[i]["image"], ds[i]["image"])
        assert src[i]["conversations"] == ds[i]["conversations"]


def test_missing_paths_are_named(tmp_path):
    path, folder, _ = _sample_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope.json")):
        LlavaJsonSource(tmp_path / "nope.json", folder)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "no_images")):
        LlavaJsonSource(path, tmp_path / "no_images")
    (folder / "coco" / "b.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=str(folder / "coco" / "b.jpg")):
        LlavaJsonSource(path, folder, check_files="startup")
    lazy = LlavaJsonSource(path, folder)  # the default: files are checked when read
    with pytest.raises(FileNotFoundError, match=str(folder / "coco" / "b.jpg")):
        lazy[1]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "x", "conversations": [{"from": "robot", "value": "hi"}]}]))
    with pytest.raises(ValueError, match="record 0"):
        LlavaJsonSource(bad, folder)
