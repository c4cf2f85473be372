"""jaxmm.data.textrich: boxes hold each word's ink (found by drawing the page with and without the word),
reading order, determinism, sizes, and every question's answer re-derived from the ground truth."""
import dataclasses

import numpy as np
import pytest
from PIL import Image, ImageDraw

from jaxmm.data import textrich as tr


def _cross(a, b):
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _inside(quad: np.ndarray, pts: np.ndarray, margin: float) -> np.ndarray:
    """Points (x, y) within `margin` px of the convex quadrilateral `quad` [4, 2] (corners in order)."""
    inside = np.ones(len(pts), bool)
    orient = np.sign(_cross(quad[1] - quad[0], quad[2] - quad[1]))
    for a, b in zip(quad, np.roll(quad, -1, 0)):
        edge = b - a
        dist = orient * _cross(edge, pts - a) / np.linalg.norm(edge)   # > 0 inside
        inside &= dist >= -margin
    return inside


@pytest.mark.parametrize("kind", tr.KINDS)
@pytest.mark.parametrize("rotation", [0.0, 3.5])
def test_boxes_contain_each_words_ink(kind, rotation):
    layout = dataclasses.replace(tr.layout_page(11, kind), rotation=rotation)
    full, quads, _ = tr.render_layout(layout)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(layout.words), size=min(6, len(layout.words)), replace=False)
    for i in idx:
        without, _, _ = tr.render_layout(layout, omit=[i])
        ys, xs = np.nonzero(np.abs(full.astype(int) - without.astype(int)).max(-1) > 24)
        assert len(xs) > 0, f"word {layout.words[i].text!r} left no ink"
        pts = np.stack([xs + 0.5, ys + 0.5], -1)          # pixel centres
        ok = _inside(quads[i], pts, margin=1.0 if rotation else 0.01)
        assert ok.all(), (kind, layout.words[i].text, pts[~ok][:5], quads[i])
        # and the box is tight: the ink spans most of it (not a whole-page box)
        w = np.linalg.norm(quads[i][1] - quads[i][0])
        assert xs.max() - xs.min() + 1 >= 0.6 * (w - 2) * np.cos(np.radians(rotation)) - 2


def test_quadrilaterals_rotate_with_the_page():
    layout = tr.layout_page(5, "sign")
    upright = dataclasses.replace(layout, rotation=0.0)
    _, q0, _ = tr.render_layout(upright)
    _, q1, _ = tr.render_layout(dataclasses.replace(layout, rotation=10.0))
    centre = np.array([layout.width / 2, layout.height / 2])
    # rotating a point counter-clockwise on screen (y down) by 10 degrees: angle measured with -y
    a0 = np.arctan2(-(q0[..., 1] - centre[1]), q0[..., 0] - centre[0])
    a1 = np.arctan2(-(q1[..., 1] - centre[1]), q1[..., 0] - centre[0])
    np.testing.assert_allclose(np.degrees(np.angle(np.exp(1j * (a1 - a0)))), 10.0, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(q1 - centre, axis=-1), np.linalg.norm(q0 - centre, axis=-1),
                               rtol=1e-5)


def test_reading_order_is_line_by_line_left_to_right():
    for seed in range(12):
        page = tr.make_page(seed)
        ub, lines = page.upright_boxes, page.lines
        assert np.all(np.diff(lines) >= 0) and np.all(np.diff(lines) <= 1), page.kind
        for line in np.unique(lines):
            sel = np.nonzero(lines == line)[0]
            assert np.all(np.diff(ub[sel, 0]) > 0), (page.kind, [page.words[j] for j in sel])
        # a later line starts no higher than the previous line's top (upright boxes)
        tops = np.array([ub[lines == line, 1].min() for line in np.unique(lines)])
        bottoms = np.array([ub[lines == line, 3].max() for line in np.unique(lines)])
        assert np.all(tops[1:] >= tops[:-1]) and np.all(bottoms[1:] > bottoms[:-1] - 1), page.kind


def test_deterministic_and_seed_dependent():
    a, b, c = tr.make_page(3), tr.make_page(3), tr.make_page(4)
    assert np.array_equal(a.image, b.image) and a.words == b.words
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert a.words != c.words
    assert [q.question for q in tr.page_questions(a, 1)] == [q.question for q in tr.page_questions(b, 1)]


def test_sizes_fonts_colours_and_rotation_ranges():
    pages = [tr.make_page(s) for s in range(30)]
    assert {p.kind for p in pages} == set(tr.KINDS)
    for p in pages:
        h, w = p.image.shape[:2]
        assert tr.MIN_SIDE <= h <= tr.MAX_SIDE and tr.MIN_SIDE <= w <= tr.MAX_SIDE and p.image.dtype == np.uint8
        assert len(p.words) == len(p.boxes) == len(p.lines) == len(p.colors) == len(p.sizes) > 0
        assert p.sizes.min() >= tr.MIN_TEXT and p.sizes.max() <= tr.MAX_TEXT
        assert abs(p.rotation) <= 4.0
    sizes = np.concatenate([p.sizes for p in pages])
    assert sizes.min() <= 8 and sizes.max() >= 30          # the 6..40 px range is used, both ends
    assert len({f for p in pages for f in p.fonts}) >= 3
    assert sum(p.rotation != 0 for p in pages) >= 5


def _point_in(quad, x, y):
    return _inside(quad, np.array([[x, y]]), 0.0)[0]


def test_every_answer_follows_from_the_ground_truth():
    from jaxmm.metrics import vqa_score

    seen = set()
    for seed in range(24):
        page = tr.make_page(seed)
        h, w = page.image.shape[:2]
        for qa in tr.page_questions(page, seed):
            seen.add(qa.kind)
            assert qa.needs_reading == (qa.kind in tr.READING_QUESTIONS)
            q = qa.question
            if qa.kind == "read_at":
                fx, fy = [float(t.rstrip("%")) for t in q.split() if t.endswith("%")]
                hits = [i for i in range(len(page.words)) if _point_in(page.boxes[i], fx * w / 100, fy * h / 100)]
                assert [page.words[i] for i in hits] == [qa.answer], (q, hits)
            elif qa.kind == "key_value" and page.kind == "document":
                key = q[len("What is the "):-1]
                i = page.words.index(key + ":")
                assert page.words[i + 1] == qa.answer and page.lines[i] == page.lines[i + 1]
            elif qa.kind == "key_value":       # table: the cell in the row's line under the column's header
                col, row = q[len("In the table, what is the "):-1].split(" value of ")
                r, c = page.words.index(row), page.words.index(col)
                cell = [i for i in range(len(page.words)) if page.lines[i] == page.lines[r]
                        and abs(page.upright_boxes[i, 0] - page.upright_boxes[c, 0]) < 1e-3]
                assert [page.words[i] for i in cell] == [qa.answer]
            elif qa.kind == "price" and page.kind == "receipt":
                item = "TOTAL" if q == "What is the total?" else q[len("What is the price of "):-1]
                i = page.words.index(item)
                assert page.words[i + 1] == qa.answer and page.lines[i + 1] == page.lines[i]
                if item == "TOTAL":   # the total is the sum of the item prices, in cents
                    prices = [page.fields[k] for k in page.fields if k != "TOTAL"]
                    assert sum(round(float(p) * 100) for p in prices) == round(float(qa.answer) * 100)
            elif qa.kind == "price":           # chart: the value printed in the label's column
                label = q[len("What is the value of the bar labelled "):-1]
                i = page.words.index(label)
                centre = page.upright_boxes[i, [0, 2]].mean()
                vals = [j for j in range(len(page.words)) if page.lines[j] == 1
                        and abs(page.upright_boxes[j, [0, 2]].mean() - centre) < 1.0]
                assert [page.words[j] for j in vals] == [qa.answer]
            elif qa.kind == "above":
                word = q.split("'")[1]
                i, j = page.words.index(word), page.words.index(qa.answer)
                ub = page.upright_boxes
                assert ub[j, 3] <= ub[i, 1] and min(ub[i, 2], ub[j, 2]) > max(ub[i, 0], ub[j, 0])
            elif qa.kind == "count_color":
                color = q.split(" in ")[1][:-1]
                assert qa.answer == str(sum(c == color for c in page.colors))
            elif qa.kind == "background":
                # the page's corner pixel (never covered) is the named colour
                assert tuple(page.image[0, 0]) == tr.BACKGROUNDS[qa.answer] or page.rotation != 0
            elif qa.kind == "count_shapes":
                shape = q.split()[2][:-1]
                assert qa.answer == str(sum(s["shape"] == shape for s in page.shapes))
            elif qa.kind == "shape_color":
                shape = q.split()[-1][:-1]
                assert [s["color"] for s in page.shapes if s["shape"] == shape] == [qa.answer]
            assert vqa_score(qa.answer, qa.answer, mode="exact") == 1.0
    assert seen == set(tr.QUESTION_KINDS)


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        tr.make_page(0, "menu")
    with pytest.raises(ValueError, match="fonts"):
        tr.make_page(0, fonts=["/nonexistent.ttf"])
    with pytest.raises(ValueError, match="kinds"):
        tr.page_questions(tr.make_page(0), kinds=["ocr"])


def test_qa_source_and_registry():
    from jaxmm.data import sources

    src = tr.TextRichQA(8, seed=2, split="eval", image_size=48, kinds=("price", "background"), keep_page=True)
    again = tr.TextRichQA(8, seed=2, split="eval", image_size=48, kinds=("price", "background"))
    kinds = set()
    for i in range(len(src)):
        ex = src[i]
        kinds.add(ex["kind"])
        assert ex["image"].shape == (48, 48, 3) and ex["kind"] in ("price", "background")
        assert ex["conversations"][1] == ("assistant", ex["answer"])
        np.testing.assert_array_equal(ex["image"], tr.square_view(ex["page_image"], 48))
        np.testing.assert_array_equal(ex["image"], again[i]["image"])
    assert kinds == {"price", "background"}
    built = sources.get("textrich").build(dict(sources.get("textrich").defaults), split="train", examples=3,
                                          seed=0, encoder_args={"image_size": 32})
    assert len(built) == 3 and built[2]["image"].shape == (32, 32, 3)
    with pytest.raises(ValueError, match="kinds"):
        tr.TextRichQA(3, kinds=("ocr",))


@pytest.mark.parametrize("kind", tr.KINDS)
def test_oracle_ocr_layout_recovers_the_reading_order(kind):
    """jaxmm.ocr's layout recovery (an independent implementation: lines from box geometry) on the page's true
    words and boxes gives back the generator's lines and their order, upright and rotated."""
    from jaxmm import ocr

    for seed in range(2):
        layout = tr.layout_page(seed, kind)
        for rotation in (0.0, 3.0):
            page = tr.page_from_layout(dataclasses.replace(layout, rotation=rotation))
            result = ocr.read(page.image, engine="oracle", truth=(page.words, page.boxes))
            got = [line.split() for line in ocr.layout_text(result, width=200).split("\n") if line.strip()]
            want = [[w for w, ln in zip(page.words, page.lines) if ln == k] for k in np.unique(page.lines)]
            assert got == want, (kind, seed, rotation)


def test_text_size_and_rotation_arguments():
    """The controls the OCR table (docs/results/ocr.md) uses: text_size sets the size text is drawn at (an element
    only ever shrinks from it to fit; a receipt's shop name is 1.4x), rotation replaces the random angle and
    changes nothing else."""
    for kind in tr.KINDS:
        base = tr.make_page(7, kind, rotation=0.0)
        small, big = (tr.make_page(7, kind, text_size=s, rotation=0.0) for s in (8, 24))
        assert 8 in small.sizes and small.sizes.max() <= (11 if kind == "receipt" else 8), kind
        assert big.sizes.max() <= (33 if kind == "receipt" else 24) and big.sizes.min() > 8, kind
        for page in (small, big):
            assert page.image.shape == base.image.shape and page.background == base.background
        turned = tr.make_page(7, kind, rotation=-12.5)
        assert turned.rotation == -12.5 and turned.words == base.words
        np.testing.assert_array_equal(turned.upright_boxes, base.upright_boxes)
        centre = np.array([base.image.shape[1] / 2, base.image.shape[0] / 2])
        a = np.radians(-12.5)                      # counter-clockwise on screen (y down)
        rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
        np.testing.assert_allclose(turned.boxes, (base.boxes - centre) @ rot.T + centre, atol=1e-3)
    doc_sizes, counts = np.unique(tr.make_page(7, "document", text_size=12).sizes, return_counts=True)
    assert doc_sizes[np.argmax(counts)] == 12          # nothing in a document shrinks at 12: the body is 12
    assert tr.make_page(7).words == tr.make_page(7, rotation=None, text_size=None).words
    for bad in (5, 41, 12.5, True):
        with pytest.raises(ValueError, match="text_size"):
            tr.make_page(0, text_size=bad)
    for bad in (31, -45.0, "3"):
        with pytest.raises(ValueError, match="rotation"):
            tr.make_page(0, rotation=bad)
