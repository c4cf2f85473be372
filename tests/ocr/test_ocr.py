"""jaxmm.ocr.read / read_many: the engine interface, bad input, the OCR budget, the disk cache (a counting fake
engine and rapidocr on a real page), worker processes, and rapidocr (PP-OCR) reading PIL-rendered text with boxes
checked against PIL's own text boxes. rapidocr is loaded once per module (about 1 s)."""
import dataclasses
import os

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from jaxmm import ocr
from jaxmm.ocr import engines as engines_mod

FONT = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")


def render(lines, size=(400, 120), font_px=24):
    """White page with black text lines [(text, x, y)]; returns the image and the words' true xyxy boxes."""
    img = Image.new("RGB", size, "white")
    draw, font = ImageDraw.Draw(img), ImageFont.truetype(FONT, font_px)
    words, boxes = [], []
    for text, x, y in lines:
        draw.text((x, y), text, fill="black", font=font)
        for i, word in enumerate(text.split()):
            prefix = " ".join(text.split()[:i]) + (" " if i else "")
            x0 = x + draw.textlength(prefix, font=font)
            _, top, right, bottom = draw.textbbox((x0, y), word, font=font)
            words.append(word)
            boxes.append([x0, top, right, bottom])
    return img, words, np.asarray(boxes, np.float32)


# --- the counting fake engine: the cache tests must see whether an engine ran ---------------------------------
CALLS = []


def _counting_run(image, settings):
    CALLS.append(image.shape)
    n = int(image.mean()) % 3 + 1
    return ocr.OcrResult([f"w{i}" for i in range(n)], np.arange(n * 8, dtype=np.float32).reshape(n, 4, 2),
                         np.linspace(0.5, 1, n), image.shape[:2])


ocr.register(ocr.Engine("test-counting", _counting_run, defaults=dict(level=1)))


@pytest.fixture(autouse=True)
def _no_env_cache(monkeypatch):
    monkeypatch.delenv(ocr.reader.CACHE_ENV, raising=False)
    CALLS.clear()


def _require_rapidocr():
    reason = ocr.ENGINES["rapidocr"].missing()
    assert not reason, f"rapidocr is installed by `make test` (the ocr extra): {reason}"


@pytest.fixture(scope="module")
def sign():
    _require_rapidocr()
    img, words, boxes = render([("OPEN 24 HOURS", 10, 10), ("Coffee $3.50", 10, 60)])
    return img, words, boxes, ocr.read(img, "rapidocr", cache=False)


# --- input --------------------------------------------------------------------------------------------------
def test_inputs_path_pil_array_agree(tmp_path):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    img.save(tmp_path / "x.png")
    a = ocr.load_image(img)
    np.testing.assert_array_equal(ocr.load_image(str(tmp_path / "x.png")), a)
    np.testing.assert_array_equal(ocr.load_image(tmp_path / "x.png"), a)
    np.testing.assert_array_equal(ocr.load_image(np.asarray(img)), a)
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(ocr.load_image(gray), np.repeat(gray[..., None], 3, -1))
    rgba = np.dstack([np.asarray(img), np.full((20, 30), 7, np.uint8)])
    np.testing.assert_array_equal(ocr.load_image(rgba), a)


def test_unreadable_file_names_the_path(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really an image")
    with pytest.raises(ValueError, match="broken.png"):
        ocr.read(bad, "test-counting")
    with pytest.raises(ValueError, match="missing.jpg"):
        ocr.read(tmp_path / "missing.jpg", "test-counting")
    assert not CALLS


@pytest.mark.parametrize("array, match", [
    (np.zeros((8, 8, 3), np.float32), "uint8"),
    (np.zeros((8, 8, 3), np.int64), "uint8"),
    (np.zeros((8, 8, 3), bool), "uint8"),
    (np.zeros((2, 8, 8, 3), np.uint8), r"\[H, W, C\]"),
    (np.zeros((8,), np.uint8), r"\[H, W, C\]"),
    (np.zeros((8, 8, 5), np.uint8), "C in"),
    (np.zeros((0, 8, 3), np.uint8), "1 x 1"),
])
def test_bad_arrays_fail_before_the_engine(array, match):
    with pytest.raises(ValueError, match=f"image.*{match}"):
        ocr.read(array, "test-counting")
    with pytest.raises(ValueError, match="image"):
        ocr.read([[1, 2]], "test-counting")        # a list is not an image
    assert not CALLS


def test_unknown_engine_and_setting():
    with pytest.raises(ValueError, match=r"engine.*oracle.*rapidocr.*tesseract"):
        ocr.read(np.zeros((4, 4, 3), np.uint8), "paddle")
    with pytest.raises(ValueError, match=r"settings.*lvl"):
        ocr.read(np.zeros((4, 4, 3), np.uint8), "test-counting", lvl=2)


def test_result_shapes_checked():
    with pytest.raises(ValueError, match="boxes"):
        ocr.OcrResult(["a", "b"], np.zeros((2, 4)), np.ones(2))
    with pytest.raises(ValueError, match="scores"):
        ocr.OcrResult(["a"], np.zeros((1, 4, 2)), np.ones(2))


# --- word boxes from line boxes -------------------------------------------------------------------------------
def test_split_line_interpolates_along_the_quad():
    quad = np.array([[0, 0], [90, 0], [90, 10], [0, 10]], np.float32)      # 9 characters, 10 px each
    words, boxes, scores = ocr.split_line("ab  cd ef", quad, 0.75)
    assert words == ["ab", "cd", "ef"]
    np.testing.assert_allclose(boxes[:, 0, 0], [0, 40, 70])
    np.testing.assert_allclose(boxes[:, 1, 0], [20, 60, 90])
    np.testing.assert_allclose(boxes[:, [0, 1], 1], 0)
    np.testing.assert_allclose(boxes[:, [2, 3], 1], 10)
    np.testing.assert_allclose(scores, 0.75)
    # a rotated quad: corners stay on the line's edges, at the same fractions
    a = np.deg2rad(10)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    _, rboxes, _ = ocr.split_line("ab  cd ef", quad @ rot.T, 0.75)
    np.testing.assert_allclose(rboxes, boxes.astype(np.float64) @ rot.T, atol=1e-4)


# --- budget -------------------------------------------------------------------------------------------------
def test_truncate_keeps_highest_scores_in_reading_order():
    r = ocr.OcrResult(list("abcde"), np.zeros((5, 4, 2)), [0.5, 0.9, 0.9, 0.1, 0.7])
    assert ocr.truncate(r, 3).words == ["b", "c", "e"]
    assert ocr.truncate(r, 1).words == ["b"]              # tie 0.9: the earlier word
    assert ocr.truncate(r, 0).words == []
    assert ocr.truncate(r, None) is r and ocr.truncate(r, 5) is r
    for bad in (-1, 2.5, "3", True):
        with pytest.raises(ValueError, match="max_words"):
            ocr.truncate(r, bad)


def test_2000_word_page_budget():
    """A 2,000-word page (oracle truth) under a 500-word budget: the rule against a plain-Python reference."""
    rng = np.random.default_rng(1)
    n = 2000
    words = [f"w{i}" for i in range(n)]
    xy = np.stack([rng.uniform(0, 1000, n), rng.uniform(0, 1000, n)], -1)
    boxes = np.concatenate([xy, xy + 10], -1)
    scores = np.round(rng.uniform(0.5, 1, n), 2).astype(np.float32)     # many ties
    img = np.zeros((1024, 1024, 3), np.uint8)
    full = ocr.read(img, "oracle", truth=(words, boxes, scores))
    assert len(full) == n
    cut = ocr.read(img, "oracle", truth=(words, boxes, scores), max_words=500)
    ref = sorted(sorted(range(n), key=lambda i: (-float(scores[i]), i))[:500])
    assert cut.words == [words[i] for i in ref]
    np.testing.assert_array_equal(cut.boxes, full.boxes[ref])
    assert layout_ok(cut)


def layout_ok(result):
    text = ocr.layout_text(result, width=120)
    return sorted(text.split()) == sorted(result.words)


# --- oracle ---------------------------------------------------------------------------------------------------
def test_oracle_truth_forms():
    img = Image.new("RGB", (50, 20))
    r = ocr.read(img, "oracle", truth=(["hi"], [[1, 2, 11, 12]]))
    np.testing.assert_array_equal(r.boxes[0], [[1, 2], [11, 2], [11, 12], [1, 12]])
    assert r.scores.tolist() == [1.0] and r.size == (20, 50)
    img.info["ocr_truth"] = {"words": ["yo"], "boxes": np.zeros((1, 4, 2)), "scores": [0.5]}
    assert ocr.read(img, "oracle").words == ["yo"]
    with pytest.raises(ValueError, match="truth"):
        ocr.read(Image.new("RGB", (5, 5)), "oracle")


# --- cache --------------------------------------------------------------------------------------------------
def test_cache_reads_a_page_once(tmp_path):
    page = np.full((1024, 1024, 3), 200, np.uint8)
    first = ocr.read(page, "test-counting", cache=tmp_path)
    second = ocr.read(page, "test-counting", cache=tmp_path)
    assert len(CALLS) == 1
    assert second.words == first.words and second.size == first.size
    np.testing.assert_array_equal(second.boxes, first.boxes)
    np.testing.assert_array_equal(second.scores, first.scores)
    ocr.read(page, "test-counting", cache=tmp_path, level=2)          # other settings: read again
    assert len(CALLS) == 2
    page[0, 0, 0] = 0                                                   # other pixels: read again
    ocr.read(page, "test-counting", cache=tmp_path)
    assert len(CALLS) == 3
    ocr.read(page, "test-counting", cache=False)                       # cache off
    assert len(CALLS) == 4
    ocr.read(page, "test-counting")                                     # no folder, no env: no cache
    assert len(CALLS) == 5
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 3 and not [f for f in files if f.startswith(".tmp")]


def test_cache_from_env_and_budget_after_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(ocr.reader.CACHE_ENV, str(tmp_path / "c"))
    page = np.full((16, 16, 3), 2, np.uint8)       # mean 2 -> 3 words
    assert len(ocr.read(page, "test-counting")) == 3
    assert ocr.read(page, "test-counting", max_words=1).words == ["w2"]      # highest score, from the cache
    assert len(CALLS) == 1 and len(os.listdir(tmp_path / "c")) == 1


def test_damaged_cache_entry_is_read_again(tmp_path):
    page = np.zeros((8, 8, 3), np.uint8)
    ocr.read(page, "test-counting", cache=tmp_path)
    (entry,) = tmp_path.iterdir()
    entry.write_bytes(b"garbage")
    assert ocr.read(page, "test-counting", cache=tmp_path).words == ["w0"]
    assert len(CALLS) == 2


def test_rapidocr_page_cached(tmp_path, sign):
    """A real 1024 px page read by rapidocr twice through the cache: the engine runs once."""
    img, _, _, _ = sign
    page = Image.new("RGB", (1024, 1024), "white")
    page.paste(img, (300, 500))
    eng = ocr.ENGINES["rapidocr"]
    calls = []
    ocr.ENGINES["rapidocr"] = dataclasses.replace(eng, run=lambda image, s: calls.append(1) or eng.run(image, s))
    try:
        first = ocr.read(page, cache=tmp_path)
        second = ocr.read(page, cache=tmp_path)
    finally:
        ocr.ENGINES["rapidocr"] = eng
    assert len(calls) == 1
    assert first.words == second.words == ["OPEN", "24", "HOURS", "Coffee", "$3.50"]
    np.testing.assert_array_equal(first.boxes, second.boxes)


# --- rapidocr -------------------------------------------------------------------------------------------------
def test_rapidocr_reads_words_and_boxes(sign):
    _, words, boxes, r = sign
    assert r.words == words == ["OPEN", "24", "HOURS", "Coffee", "$3.50"]
    assert r.boxes.dtype == np.float32 and r.boxes.shape == (5, 4, 2) and r.size == (120, 400)
    assert np.all((r.scores > 0.9) & (r.scores <= 1))
    _check_boxes(r.boxes, boxes, x_atol=4)        # word boxes from the recogniser's CTC columns
    # 20 px per column: the same canvas as the true boxes give
    truth = ocr.read(sign[0], "oracle", truth=(words, boxes))
    assert ocr.layout_text(r, width=20) == ocr.layout_text(truth, width=20) == " OPEN 24 HOURS\n Coffee $3.50"
    img = sign[0]
    inter = ocr.read(img, "rapidocr", cache=False, word_boxes="interpolate")
    assert inter.words == words
    _check_boxes(inter.boxes, boxes, x_atol=14)   # cut by character count: looser in x
    assert np.abs(inter.boxes - r.boxes).max() > 4    # the two modes do differ
    with pytest.raises(ValueError, match="word_boxes"):
        ocr.read(img, "rapidocr", word_boxes="chars")


def _check_boxes(quads, truth_xyxy, x_atol):
    got = np.concatenate([quads.min(1), quads.max(1)], -1)          # xyxy around each quad
    # y: the detector's line box holds the glyphs (PIL's ink box) with at most 8 px padding (24 px font)
    assert np.all(got[:, 1] <= truth_xyxy[:, 1] + 1) and np.all(got[:, 3] >= truth_xyxy[:, 3] - 1)
    np.testing.assert_allclose(got[:, [1, 3]], truth_xyxy[:, [1, 3]], atol=8)
    np.testing.assert_allclose(got[:, [0, 2]], truth_xyxy[:, [0, 2]], atol=x_atol)


def test_rapidocr_empty_page_and_odd_arrays(sign):
    empty = ocr.read(np.full((200, 300, 3), 255, np.uint8), "rapidocr")
    assert len(empty) == 0 and empty.boxes.shape == (0, 4, 2) and empty.size == (200, 300)
    assert len(ocr.read(np.zeros((1, 1, 3), np.uint8), "rapidocr")) == 0
    img, words, _ = render([("HELLO", 5, 5)], size=(120, 40))
    gray = np.asarray(img.convert("L"))
    assert ocr.read(gray, "rapidocr").words == ["HELLO"]


def test_rapidocr_settings_are_checked(sign):
    with pytest.raises(ValueError, match="text_scor"):
        ocr.read(np.zeros((8, 8, 3), np.uint8), "rapidocr", text_scor=0.3)
    for bad in (100, 640.0, None):
        with pytest.raises(ValueError, match="max_side_len.*640"):
            ocr.read(np.zeros((8, 8, 3), np.uint8), "rapidocr", max_side_len=bad)


def test_pad_to_aspect():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (3, 100, 3), dtype=np.uint8)
    img[0] = img[-1] = (10, 20, 30)                       # the border's median colour is (10, 20, 30)
    out = engines_mod.pad_to_aspect(img, 16)
    assert out.shape == (7, 100, 3)                       # ceil(100 / 16) rows
    np.testing.assert_array_equal(out[:3], img)           # the original keeps its pixel coordinates
    np.testing.assert_array_equal(out[3:], np.broadcast_to([10, 20, 30], (4, 100, 3)))
    tall = engines_mod.pad_to_aspect(np.ascontiguousarray(img.transpose(1, 0, 2)), 16)
    np.testing.assert_array_equal(tall, out.transpose(1, 0, 2))
    square = np.zeros((20, 300, 3), np.uint8)
    assert engines_mod.pad_to_aspect(square, 16) is square   # within the ratio: untouched


def test_rapidocr_extreme_strips_read_without_crashing(sign):
    """rapidocr 3.10 alone raises ResizeImgError on a 2 x 2100 strip (its resize rounds the short side to 0);
    through jaxmm the strip is padded (pad_to_aspect) and reads as empty. A real 20 x 760 text strip (aspect 38,
    padded too) reads its words, with boxes inside the original strip."""
    assert ocr.read(np.zeros((2, 2100, 3), np.uint8), "rapidocr").size == (2, 2100)
    img, words, boxes = render([("OPEN 24 HOURS EVERY DAY", 4, -3)], size=(760, 20), font_px=16)
    r = ocr.read(img, "rapidocr")
    assert r.words == words and r.size == (20, 760)
    assert r.boxes[..., 1].max() <= 22 and r.boxes[..., 0].max() <= 762


def test_read_many_workers_match_sequential(sign, monkeypatch):
    imgs = [render([(t, 5, 5)], size=(160, 40))[0] for t in ("ALPHA", "BRAVO 7", "")]
    seq = ocr.read_many(imgs, "rapidocr", progress=False)
    pools = []
    real_pool = ocr.reader.concurrent.futures.ProcessPoolExecutor

    def recording_pool(n, **kw):
        pools.append((n, kw["mp_context"].get_start_method()))
        return real_pool(n, **kw)

    monkeypatch.setattr(ocr.reader.concurrent.futures, "ProcessPoolExecutor", recording_pool)
    par = ocr.read_many(imgs, "rapidocr", workers=2, progress=False)
    assert pools == [(2, "spawn")]                 # the reads did go through two worker processes
    assert [r.words for r in seq] == [["ALPHA"], ["BRAVO", "7"], []]
    assert [r.words for r in par] == [r.words for r in seq]
    for a, b in zip(seq, par):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_read_many_sequential_uses_cache(tmp_path):
    pages = [np.full((4, 4, 3), v, np.uint8) for v in (0, 1, 0)]
    out = ocr.read_many(pages, "test-counting", cache=tmp_path, progress=False)
    assert [len(r) for r in out] == [1, 2, 1] and len(CALLS) == 2
    with pytest.raises(ValueError, match="workers"):
        ocr.read_many(pages, "test-counting", workers=0)


# --- tesseract: runs only where the binary exists (not counted as coverage here) ----------------------------------
def test_tesseract_reads_words():
    reason = ocr.ENGINES["tesseract"].missing()
    if reason:
        pytest.skip(f"tesseract unavailable: {reason}")
    img, words, _ = render([("OPEN 24 HOURS", 10, 10)], font_px=32)
    assert ocr.read(img, "tesseract").words == words


def test_tesseract_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(engines_mod.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="tesseract.*PATH|pytesseract"):
        ocr.read(np.zeros((8, 8, 3), np.uint8), "tesseract")


@pytest.mark.slow
def test_rapidocr_2000_word_page_under_budget(sign):
    """A 1024 px page holding 2,000 rendered words (9 px DejaVu), read by rapidocr with max_words=500: a result
    of exactly 500 words, the kept ones scoring at least as high as every dropped one, in reading order."""
    rng = np.random.default_rng(0)
    vocab = ["open", "menu", "price", "total", "street", "coffee", "ticket", "market", "north", "river"]
    lines, words = [], [str(w) for w in rng.choice(vocab, 2000)]
    per_line = 25
    for i in range(0, 2000, per_line):
        lines.append((" ".join(words[i:i + per_line]), 4, 4 + 12 * (i // per_line)))
    img, _, _ = render(lines, size=(1024, 1024), font_px=9)
    full = ocr.read(img, "rapidocr", cache=False)
    assert len(full) > 500
    cut = ocr.truncate(full, 500)
    assert len(cut) == 500
    kept = set(sorted(range(len(full)), key=lambda i: (-float(full.scores[i]), i))[:500])
    assert cut.words == [full.words[i] for i in sorted(kept)]
    assert cut.scores.min() >= max(full.scores[i] for i in range(len(full)) if i not in kept)
    assert ocr.read(img, "rapidocr", cache=False, max_words=500).words == cut.words


def test_rapidocr_table_layout_matches_truth(sign):
    """A rendered 3 x 3 table with a gap between two column groups: the canvas from rapidocr's words equals the
    canvas from the true boxes (12 px per character column)."""
    rows = [("Item", "Qty", "Price"), ("Coffee", "2", "3.50"), ("Tea", "10", "12.00")]
    lines = [(cell, x, 10 + 34 * i) for i, row in enumerate(rows) for cell, x in zip(row, (10, 170, 300))]
    img, words, boxes = render(lines, size=(420, 120), font_px=20)
    r = ocr.read(img, "rapidocr", cache=False)
    truth = ocr.read(img, "oracle", truth=(words, boxes))
    expected = ocr.layout_text(truth, width=35)
    assert expected == (" Item".ljust(14) + "Qty".ljust(11) + "Price\n" + " Coffee".ljust(14) + "2".ljust(11)
                        + "3.50\n" + " Tea".ljust(14) + "10".ljust(11) + "12.00")
    assert ocr.layout_text(r, width=35) == expected
