"""Procedural text-rich image QA: determinism, boxes where the ink is, answers re-derived from metadata
and from the pixels."""
import re

import numpy as np
import pytest

from jaxmm.data.textvqa import COLORS, KINDS, TextVQA, available_fonts

N = 40


@pytest.fixture(scope="module")
def examples():
    ds = TextVQA(N, seed=3, kinds=KINDS, max_words=3)
    return [ds[i] for i in range(N)]


def test_deterministic_per_seed_split_and_index(examples):
    again = TextVQA(N, seed=3, kinds=KINDS)
    for i in (0, 7, N - 1):
        b = again[i]
        np.testing.assert_array_equal(examples[i]["image"], b["image"])
        assert examples[i]["conversations"] == b["conversations"]
        np.testing.assert_array_equal(examples[i]["boxes"], b["boxes"])
    other_seed = TextVQA(N, seed=4, kinds=KINDS)[0]
    other_split = TextVQA(N, seed=3, kinds=KINDS, split="eval")[0]
    assert not np.array_equal(other_seed["image"], examples[0]["image"])
    assert not np.array_equal(other_split["image"], examples[0]["image"])
    assert examples[0]["image"].dtype == np.uint8 and examples[0]["image"].shape == (64, 64, 3)
    assert {e["kind"] for e in examples} == set(KINDS)


def _dist(img, color):
    return np.abs(img.astype(np.int32) - np.asarray(color)).max(-1)


def test_boxes_hold_the_words_ink_and_nothing_of_its_colour_around(examples):
    for ex in examples:
        img, n = ex["image"], int(ex["num_words"])
        boxes = ex["boxes"]
        assert (boxes[n:] == -1).all()
        covered = np.zeros(img.shape[:2], bool)
        for x0, y0, x1, y1 in boxes[:n]:
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert not covered[y0:y1, x0:x1].any()  # disjoint boxes
            covered[y0:y1, x0:x1] = True
        assert all(boxes[i, 1] < boxes[i + 1, 1] for i in range(n - 1))  # listed top to bottom
        for (x0, y0, x1, y1), color in zip(boxes[:n], ex["colors"]):
            d = _dist(img, COLORS[color])
            assert d[y0:y1, x0:x1].min() <= 12, "the box holds solid ink of the word's colour"
            # the 3-pixel ring around the box (minus other words' boxes) is background: far from the colour
            ring = np.zeros_like(covered)
            ring[max(0, y0 - 3):y1 + 3, max(0, x0 - 3):x1 + 3] = True
            ring &= ~covered
            assert ring.any() and d[ring].min() > 60
            # visible ink (closer to the colour than any background around) reaches within 2 px of each side
            ink = d[y0:y1, x0:x1] < d[ring].min() - 5
            assert ink[:2].any() and ink[-2:].any() and ink[:, :2].any() and ink[:, -2:].any()


def test_answers_are_correct_by_construction(examples):
    names = list(COLORS)
    for ex in examples:
        n, words, colors, kind = int(ex["num_words"]), ex["words"], ex["colors"], ex["kind"]
        assert ex["conversations"] == [("user", "<image>\n" + ex["question"]), ("assistant", ex["answer"])]
        assert len(words) == len(set(words)) == len(colors) == n
        # the colour of each word read back from its pixels: the palette colour nearest to the darkest ink
        for (x0, y0, x1, y1), color in zip(ex["boxes"][:n], colors):
            patch = ex["image"][y0:y1, x0:x1].reshape(-1, 3).astype(np.int32)
            nearest = [min(names, key=lambda c: np.abs(p - COLORS[c]).max()) for p in patch]
            close = [c for p, c in zip(patch, nearest) if np.abs(p - COLORS[c]).max() <= 12]
            assert max(set(close), key=close.count) == color
        if kind == "read":
            assert n == 1 and ex["answer"] == words[0]
        elif kind == "red":
            assert colors.count("red") == 1 and ex["answer"] == words[colors.index("red")]
        elif kind == "top":
            top = int(np.argmin(ex["boxes"][:n, 1]))
            assert n >= 2 and ex["answer"] == words[top]
        elif kind == "count":
            assert ex["answer"] == str(n)
        else:
            asked = re.findall(r"the word (\w+)", ex["question"])
            assert len(asked) == 1 and ex["answer"] == colors[words.index(asked[0])]


def test_fonts_sizes_and_argument_errors():
    assert available_fonts()[0] == "builtin"
    big = TextVQA(4, image_size=96, max_words=4, fonts=("builtin",))[1]
    assert big["image"].shape == (96, 96, 3) and big["boxes"].shape == (4, 4) and big["font"] == "builtin"
    with pytest.raises(ValueError, match="kinds"):
        TextVQA(4, kinds=("poem",))
    with pytest.raises(ValueError, match="image_size"):
        TextVQA(4, image_size=30, max_words=3)
    with pytest.raises(ValueError, match="split"):
        TextVQA(4, split="dev")
    with pytest.raises(FileNotFoundError, match="/no/such.ttf"):
        TextVQA(4, fonts=("/no/such.ttf",))
    with pytest.raises(IndexError):
        TextVQA(4)[4]
