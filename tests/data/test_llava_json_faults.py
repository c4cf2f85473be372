"""LLaVA-JSON bad input (issue 25 item 6), each reproduction made small: every bad record fails the build with
the file, index, id and reason (or is skipped and counted), bad files name the file, oversized images are
refused from their header, a decode failure in training names the record, and a placeholder is never a target.
"""
import json
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from jaxmm.data.conversation import ConversationFormatter
from jaxmm.data.llava_json import BadRecordError, LlavaJsonSource, load_image
from jaxmm.data.tokenizers import ByteTokenizer


def _turns(*pairs):
    return [{"from": r, "value": v} for r, v in pairs]


GOOD = _turns(("human", "<image>\nWhat?"), ("gpt", "a cat"))


def _folder(tmp_path, records, name="data.json"):
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.fromarray(np.full((8, 12, 3), 90, np.uint8)).save(tmp_path / "img" / "ok.png")
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path, tmp_path / "img"


def _fails(tmp_path, bad_record, reason, **kwargs):
    """The build fails naming the file, the bad record's index and id, and the reason."""
    path, img = _folder(tmp_path, [{"id": "fine", "image": "ok.png", "conversations": GOOD},
                                   {"id": "bad-1", **bad_record}])
    with pytest.raises(BadRecordError) as info:
        LlavaJsonSource(path, img, image_size=8, **kwargs)
    msg = str(info.value)
    assert str(path) in msg and "record 1 " in msg and "'bad-1'" in msg and reason in msg, msg
    assert info.value.index == 1 and info.value.record_id == "bad-1"
    return info.value


def test_two_image_tags(tmp_path):
    e = _fails(tmp_path, {"image": "ok.png", "conversations": _turns(("human", "<image><image>q"), ("gpt", "a"))},
               "2 <image> tags (at most one, in a human turn)")
    assert e.kind == "image_tags"


def test_image_tag_in_an_assistant_turn_or_without_an_image(tmp_path):
    _fails(tmp_path, {"image": "ok.png", "conversations": _turns(("human", "q"), ("gpt", "<image> a"))},
           "<image> tag in turn 1 ('gpt'); it belongs in a human turn")
    _fails(tmp_path, {"conversations": _turns(("human", "<image>q"), ("gpt", "a"))}, "<image> tag but no 'image'")


def test_no_assistant_turn_and_roles_out_of_order(tmp_path):
    assert _fails(tmp_path, {"conversations": _turns(("human", "q"))}, "no gpt turn").kind == "no_assistant_turn"
    _fails(tmp_path, {"conversations": _turns(("human", "q"), ("human", "q2"), ("gpt", "a"))},
           "turn 1 is 'human'; expected human and gpt turns alternating")
    _fails(tmp_path, {"conversations": _turns(("gpt", "a"), ("human", "q"))}, "turn 0 is 'gpt'")
    _fails(tmp_path, {"conversations": [{"from": "robot", "value": "x"}]}, "turn 0: expected {'from'")
    _fails(tmp_path, {"conversations": "hello"}, "a non-empty 'conversations' list")


def test_over_long_prompt_is_found_with_the_formatter(tmp_path):
    fmt = ConversationFormatter(ByteTokenizer(), max_len=32)
    long = {"image": "ok.png", "conversations": _turns(("human", "<image>" + "x" * 40), ("gpt", "a"))}
    # bos, user, image, 40 bytes, assistant = 44 tokens before the answer
    e = _fails(tmp_path, long, "prompt of 44 tokens + 1 answer token exceeds max_len 32", formatter=fmt)
    assert e.kind == "too_long"
    path, img = _folder(tmp_path, [long])
    LlavaJsonSource(path, img)  # without a formatter lengths are not checked here


def test_image_as_a_list(tmp_path):
    path, img = _folder(tmp_path, [{"id": "one", "image": ["ok.png"], "conversations": GOOD}])
    assert LlavaJsonSource(path, img, image_size=8)[0]["has_image"] == 1  # a one-element list is its element
    _fails(tmp_path, {"image": ["ok.png", "ok.png"], "conversations": GOOD},
           "'image' is a list of 2 files; a record takes one image")
    _fails(tmp_path, {"image": 7, "conversations": GOOD}, "'image' must be a file name, got int")


def test_missing_image_is_a_file_not_found_naming_the_record(tmp_path):
    path, img = _folder(tmp_path, [{"id": "m", "image": "gone.png", "conversations": GOOD}])
    with pytest.raises(FileNotFoundError, match=r"record 0 \(id 'm'\): image file not found: .*gone.png"):
        LlavaJsonSource(path, img, check_files="startup")
    with pytest.raises(FileNotFoundError, match=r"record 0 \(id 'm'\): image file not found: .*gone.png"):
        LlavaJsonSource(path, img)[0]  # lazily (the default): when the example is read


def test_non_utf8_malformed_and_empty_files_name_the_file(tmp_path):
    latin = tmp_path / "latin1.json"
    latin.write_bytes(json.dumps([{"id": "é", "conversations": GOOD}], ensure_ascii=False).encode("latin-1"))
    offset = latin.read_bytes().index(b"\xe9")
    with pytest.raises(ValueError, match=f"{latin}: not UTF-8: byte 0xe9 at offset {offset}"):
        LlavaJsonSource(latin, None)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(ValueError, match=f"{empty}: no records"):
        LlavaJsonSource(empty, None)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": 1,\n "conversations": ]')
    with pytest.raises(ValueError, match=f"{broken}: invalid JSON: .*line 2"):
        LlavaJsonSource(broken, None)
    lines = tmp_path / "data.jsonl"
    lines.write_text(json.dumps({"conversations": _turns(("human", "q"), ("gpt", "a"))}) + "\n{oops\n")
    with pytest.raises(ValueError, match=f"{lines}: line 2: invalid JSON"):
        LlavaJsonSource(lines, None)
    bom = tmp_path / "bom.json"  # a UTF-8 byte-order mark (Windows editors) is fine
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"conversations": _turns(("human", "q"), ("gpt", "a"))}]).encode())
    assert len(LlavaJsonSource(bom, None)) == 1


def test_extreme_aspect_ratio_is_refused_from_the_header(tmp_path):
    # the issue's 20000 x 2 PNG of ~200 bytes: padding it made a 20000^2 canvas (16 s, 1.8 GB)
    Image.new("RGB", (20000, 2), (1, 2, 3)).save(tmp_path / "strip.png")
    (tmp_path / "img").mkdir()
    (tmp_path / "strip.png").rename(tmp_path / "img" / "strip.png")
    assert (tmp_path / "img" / "strip.png").stat().st_size < 2000
    t = time.perf_counter()
    e = _fails(tmp_path, {"image": "strip.png", "conversations": GOOD},
               "image of 20000x2 pixels has aspect ratio 1e+04 > max_aspect_ratio 20", check_files="startup")
    assert e.kind == "image_size" and "strip.png" in str(e)
    lazy = LlavaJsonSource(tmp_path / "data.json", tmp_path / "img", image_size=8)  # checked when read
    with pytest.raises(BadRecordError, match="record 1 .*max_aspect_ratio"):
        lazy[1]
    with pytest.raises(ValueError, match="ok.png: image of 12x8 = 96 pixels exceeds max_pixels 50"):
        load_image(str(tmp_path / "img" / "ok.png"), 8, max_pixels=50)
    assert time.perf_counter() - t < 2.0
    # the bounds are options: a user with panoramas can lift them (stretched here: padding it is the 1.8 GB)
    loose = LlavaJsonSource(tmp_path / "data.json", tmp_path / "img", image_size=8, max_aspect_ratio=0,
                            resize="stretch")
    assert loose[1]["image"].shape == (8, 8, 3)


def test_truncated_jpeg_names_the_record_when_decoded(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    (tmp_path / "img").mkdir()
    Image.fromarray(noise).save(tmp_path / "img" / "cut.jpg", quality=90)
    data = (tmp_path / "img" / "cut.jpg").read_bytes()
    (tmp_path / "img" / "cut.jpg").write_bytes(data[:len(data) // 2])
    records = [{"id": "fine", "image": "ok.png", "conversations": GOOD},
               {"id": "cut", "image": "cut.jpg", "conversations": GOOD}]
    path, img = _folder(tmp_path, records)
    src = LlavaJsonSource(path, img, image_size=8, check_files="startup")  # the header reads: the build passes
    with pytest.raises(BadRecordError, match=r"record 1 \(id 'cut'\): cannot decode image .*cut.jpg: OSError"):
        src[1]
    e = _fails(tmp_path, {"image": "cut.jpg", "conversations": GOOD}, "cannot read image", check_files="decode")
    assert e.kind == "image_unreadable"


def test_skip_bad_records_counts_them(tmp_path):
    records = [{"id": "a", "image": "ok.png", "conversations": GOOD},
               {"id": "b", "conversations": _turns(("human", "q"))},
               {"id": "c", "image": ["ok.png", "ok.png"], "conversations": GOOD},
               {"id": "d", "conversations": _turns(("human", "q2"))},
               {"id": "e", "conversations": _turns(("human", "hi"), ("gpt", "yo"))}]
    path, img = _folder(tmp_path, records)
    with pytest.raises(BadRecordError, match=r"record 1 .*\[3 of 5 records are bad \(no_assistant_turn: 2, "
                                             r"image_field: 1\); skip_bad_records=True drops them\]"):
        LlavaJsonSource(path, img)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        src = LlavaJsonSource(path, img, image_size=8, skip_bad_records=True)
    assert len(src) == 2 and [src[i]["id"] for i in range(2)] == ["a", "e"]
    assert src.num_skipped == 3 and src.skipped == {"no_assistant_turn": 2, "image_field": 1}
    assert [(i, rid) for i, rid, _, _ in src.bad_records] == [(1, "b"), (2, "c"), (3, "d")]
    assert any("skipped 3 of 5 bad records" in str(w.message) for w in caught)
    path, img = _folder(tmp_path, records[1:2], name="all_bad.json")
    with pytest.raises(BadRecordError, match="1 of 1 records are bad"):  # nothing left: still an error
        LlavaJsonSource(path, img, skip_bad_records=True)
