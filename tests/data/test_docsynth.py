"""jaxmm.data.docsynth: serialisation round trip, reading order, procedural pages, loaders, the decoding mask."""
import json
import re

import numpy as np
import pytest

from jaxmm.data import docsynth as ds
from jaxmm.data.docsynth import DocVocab, Element, Layout

VOCAB = DocVocab()


def _page(seed):
    return ds.procedural_document(seed)


def test_vocab_layout_and_kinds():
    v = DocVocab(categories=("a", "b"), bins=8, words=("x", "y"))
    assert (v.pad, v.sos, v.eos, v.na, v.unk) == (0, 1, 2, 3, 4)
    assert [v.kind(t) for t in range(v.size)] == ["pad", "sos", "eos", "na", "unk"] + ["category"] * 2 + \
        ["geometry"] * 9 + ["word"] * 2
    assert v.size == 5 + 2 + 9 + 2 and v.token_str(v.geo0 + 8) == "8" and v.word_id("zzz") == v.unk
    with pytest.raises(ValueError, match="category"):
        v.category_id("nope")
    with pytest.raises(ValueError, match="bins"):
        DocVocab(bins=0)


@pytest.mark.parametrize("bins", [7, 10, 32])
def test_quantisation_is_exact_on_quantised_boxes(bins):
    for x in range(bins):
        for w in range(1, bins - x + 1):
            q = (x, (x * 3) % bins, w, 1)
            assert ds.quantize_box(ds.dequantize_box(q, bins), bins) == q
    assert ds.quantize_box((0.99, -0.2, 0.5, 2.0), 10) == (9, 0, 1, 10)   # clipped inside the page


def test_round_trip_hand_written_layout_with_missing_attributes():
    lay = Layout((Element("title", (0.0, 0.0, 1.0, 0.125), "hello   river stone"),
                  Element("figure", (0.5, 0.25, 0.25, 0.25), None),
                  Element("text", (0.0, 0.25, 0.5, None), "river")), aspect=1.5)
    ids = ds.serialize(lay, VOCAB)
    toks = [VOCAB.token_str(t) for t in ids]
    # reading order: title, then the left column (missing h: last), figure on the right; "hello" is unknown
    assert toks == ["<sos>", "title", "0", "0", "32", "4", "<unk>", "river", "stone",
                    "figure", "16", "8", "8", "8", "<na>", "text", "0", "8", "16", "<na>", "river", "<eos>"]
    back = ds.parse(ids, VOCAB, aspect=1.5)
    assert back.elements[1] == Element("figure", (0.5, 0.25, 0.25, 0.25), None)
    assert back.elements[2] == Element("text", (0.0, 0.25, 0.5, None), "river")
    assert back.elements[0].text == "<unk> river stone"
    assert ds.serialize(back, VOCAB) == ids


@pytest.mark.parametrize("with_text", [True, False])
def test_round_trip_procedural_pages(with_text):
    for seed in range(100):
        page = _page(seed)
        ids = ds.serialize(page, VOCAB, with_text=with_text)
        back = ds.parse(ids + [VOCAB.pad] * 3, VOCAB, with_text=with_text, aspect=page.aspect)
        expect = ds.quantize_layout(page, VOCAB.bins)
        if not with_text:
            expect = Layout(tuple(Element(e.category, e.box, None) for e in expect.elements), expect.aspect)
        assert back == expect   # procedural pages are generated in reading order on the 32-grid: exact
        assert ds.serialize(back, VOCAB, with_text=with_text) == ids


def test_parse_names_the_broken_position():
    v = VOCAB
    ok = [v.sos, v.category_id("text"), v.geo0 + 2, v.geo0 + 2, v.geo0 + 4, v.geo0 + 1, v.word0, v.eos]
    ds.parse(ok, v)
    with pytest.raises(ValueError, match=r"ids\[1\]: expected a category"):
        ds.parse([v.sos, v.word0, v.eos], v)
    bad = list(ok)
    bad[4] = v.geo0 + 31   # x = 2, w = 31: past the right edge
    with pytest.raises(ValueError, match="leaves the page"):
        ds.parse(bad, v)
    with pytest.raises(ValueError, match="text slot"):
        ds.parse(ok[:6] + [v.na, v.word0, v.eos], v)
    with pytest.raises(ValueError, match="<eos>"):
        ds.parse(ok[:-1], v)


def test_reading_order_xy_cut():
    g = 32.0
    boxes = [(2 / g, 2 / g, 28 / g, 2 / g),                       # 0 title
             (17 / g, 6 / g, 13 / g, 4 / g), (17 / g, 11 / g, 13 / g, 3 / g),   # right column
             (2 / g, 6 / g, 13 / g, 2 / g), (2 / g, 9 / g, 13 / g, 5 / g), (2 / g, 15 / g, 13 / g, 2 / g)]  # left
    assert ds.reading_order(boxes) == [0, 3, 4, 5, 1, 2]
    # a row gap wider than the column gap reads in rows
    rows = [(0.0, 0.0, 0.4, 0.1), (0.5, 0.0, 0.4, 0.1), (0.0, 0.5, 0.4, 0.1), (0.5, 0.5, 0.4, 0.1)]
    assert ds.reading_order(rows) == [0, 1, 2, 3]
    assert ds.reading_order([(0.5, 0.5, 0.1, 0.1), (None, 0, 0.1, 0.1), (0.0, 0.0, 0.1, 0.1)]) == [2, 0, 1]


def test_text_height_rule_and_procedural_pages_follow_it():
    # 2 chars per unit: width 4 -> 8 chars a line: "ab cd" (5) + " efgh" (10 > 8) -> 2 lines
    assert ds.wrap_lines("ab cd efgh", 4, "text") == 2
    assert ds.text_height("text", "ab cd efgh", 4) == 2
    assert ds.text_height("title", "ab cd efgh", 4) == 6   # 4 chars a line: 3 lines of 2 units
    assert ds.text_height("list", "a b c", 28) == 3
    for seed in range(50):
        page = _page(seed)
        assert page.elements[0].category == "title"
        for e in page.elements:
            x, y, w, h = (round(v * ds.GRID) for v in e.box)
            assert x >= 2 and y >= 2 and x + w <= 30 and y + h <= 30
            assert (e.text is not None) == (e.category in ds.TEXT_CATEGORIES)
            if e.text:
                assert h == ds.text_height(e.category, e.text, w)
        assert len(page.elements) <= 8


def test_coco_loader(tmp_path):
    coco = {"images": [{"id": 7, "width": 200, "height": 400, "file_name": "a.png"},
                       {"id": 8, "width": 100, "height": 100, "file_name": "b.png"}],
            "categories": [{"id": 1, "name": "Text"}, {"id": 5, "name": "Figure"}],
            "annotations": [{"image_id": 7, "category_id": 5, "bbox": [100, 200, 100, 100]},
                            {"image_id": 7, "category_id": 1, "bbox": [20, 40, 60, 20]},
                            {"image_id": 7, "category_id": 1, "bbox": [150, 380, 100, 40]}]}
    path = tmp_path / "val.json"
    path.write_text(json.dumps(coco))
    (lay,) = ds.load_coco_layouts(str(path))   # image 8 has no annotation
    assert lay.aspect == 2.0
    assert [e.category for e in lay.elements] == ["text", "figure", "text"]
    np.testing.assert_allclose(lay.elements[0].box, (0.1, 0.1, 0.3, 0.05))
    np.testing.assert_allclose(lay.elements[1].box, (0.5, 0.5, 0.5, 0.25))
    np.testing.assert_allclose(lay.elements[2].box, (0.75, 0.95, 0.25, 0.05))   # clipped to the page
    assert ds.parse(ds.serialize(lay, VOCAB, with_text=False), VOCAB, with_text=False).elements[0].box == \
        (3 / 32, 3 / 32, 10 / 32, 2 / 32)
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="annotations"):
        ds.load_coco_layouts(str(path))


def test_crello_loader_rows_and_columns(tmp_path):
    docs = [{"canvas_width": 100, "canvas_height": 50,
             "elements": [{"type": "textElement", "left": 10, "top": 5, "width": 50, "height": 10, "text": "Big sale"},
                          {"type": "imageElement", "left": 0, "top": 0, "width": 100, "height": 50, "text": ""}]},
            {"canvas_width": 1, "canvas_height": 1,
             "elements": {"type": ["svgElement"], "left": [0.25], "top": [0.5], "width": [0.5], "height": [0.25]}}]
    path = tmp_path / "crello.json"
    path.write_text(json.dumps({"documents": docs}))
    a, b = ds.load_crello_json(str(path), types={"textElement": "text"})
    assert a.aspect == 0.5
    assert a.elements[0] == Element("imageElement", (0.0, 0.0, 1.0, 1.0), None)
    assert a.elements[1].category == "text" and a.elements[1].text == "Big sale"
    np.testing.assert_allclose(a.elements[1].box, (0.1, 0.1, 0.5, 0.2))
    assert b.elements == (Element("svgElement", (0.25, 0.5, 0.5, 0.25), None),)
    v = DocVocab(categories=("text", "imageElement", "svgElement"))
    assert ds.parse(ds.serialize(a, v), v).elements[1].text == "<unk> <unk>"
    with pytest.raises(ValueError, match="units"):
        ds.load_crello_json(str(path), units="cm")


# --------------------------------------------------------------------------------------------- the mask
def _classes(ids, v):
    return "".join({"sos": "S", "eos": "E", "na": "N", "unk": "W", "word": "W", "category": "C", "geometry": "G",
                    "pad": "P"}[v.kind(t)] for t in ids)


def _check_complete(ids, v, with_text, max_length, max_words, categories=None):
    """An independent validator of a finished sequence: grammar by regex, boxes inside the page, budgets."""
    s = _classes(ids, v)
    elem = rf"CGGGG(?:N|W{{1,{max_words}}})" if with_text else "CGGGG"
    assert re.fullmatch(rf"S(?:{elem})+E", s), s
    assert len(ids) <= max_length
    cats = [m.start() for m in re.finditer("C", s)]
    for c in cats:
        x, y, w, h = (t - v.geo0 for t in ids[c + 1:c + 5])
        assert 0 <= x < v.bins and 0 <= y < v.bins and 1 <= w <= v.bins - x and 1 <= h <= v.bins - y, (x, y, w, h)
    if categories is not None:
        assert [v.token_str(ids[c]) for c in cats] == list(categories)


@pytest.mark.parametrize("with_text", [True, False])
def test_mask_random_walks_always_give_valid_documents(with_text):
    """Property test: from <sos>, draw uniformly among the allowed tokens (or, 1 time in 3, the eos / category
    tokens when allowed, to vary lengths) until <eos>; every walk is a valid document within the budget."""
    v, rng = DocVocab(bins=8), np.random.default_rng(0)
    for trial in range(60):
        max_length = int(rng.integers(8 if with_text else 7, 60))
        max_words = int(rng.integers(1, 5))
        cats = None
        if trial % 3 == 0:
            cats = list(rng.choice(v.categories, size=int(rng.integers(1, 4))))
            max_length = max(max_length, 2 + len(cats) * (6 if with_text else 5))
        ids = [v.sos]
        while ids[-1] != v.eos:
            m = ds.allowed_tokens(ids, v, with_text=with_text, max_length=max_length, max_words=max_words,
                                  categories=cats)
            choices = np.flatnonzero(m)
            assert len(choices), _classes(ids, v)
            structural = [t for t in choices if v.kind(t) in ("eos", "category")]
            pick = rng.choice(structural) if structural and rng.random() < 1 / 3 else rng.choice(choices)
            ids.append(int(pick))
            assert len(ids) <= max_length
        _check_complete(ids, v, with_text, max_length, max_words, cats)
        ds.parse(ids, v, with_text=with_text)
        assert np.flatnonzero(ds.allowed_tokens(ids, v, with_text=with_text)).tolist() == [v.pad]


def test_mask_exact_sets_at_hand_picked_prefixes():
    v = DocVocab(bins=8)
    geo = lambda *vals: [v.geo0 + x for x in vals]  # noqa: E731
    allowed = lambda p, **kw: set(np.flatnonzero(ds.allowed_tokens(p, v, **kw)).tolist())  # noqa: E731
    cats = set(range(v.cat0, v.geo0))
    words = {v.unk} | set(range(v.word0, v.size))
    assert allowed([]) == {v.sos}
    assert allowed([v.sos]) == cats   # no <eos> before the first element
    c = v.category_id("text")
    assert allowed([v.sos, c]) == set(geo(*range(8)))
    assert allowed([v.sos, c, *geo(6, 3)]) == set(geo(1, 2))           # w <= bins - x
    assert allowed([v.sos, c, *geo(6, 3, 2)]) == set(geo(1, 2, 3, 4, 5))   # h <= bins - y
    body = [v.sos, c, *geo(6, 3, 2, 5)]
    assert allowed(body) == {v.na} | words
    assert allowed(body, with_text=False) == cats | {v.eos}
    assert allowed(body + [v.na]) == cats | {v.eos}
    assert allowed(body + [v.word0]) == words | cats | {v.eos}
    assert allowed(body + [v.word0] * 2, max_words=2) == cats | {v.eos}
    assert allowed(body + [v.word0], max_length=8) == {v.eos}           # 7 tokens: only room for <eos>
    assert allowed(body + [v.word0], max_length=9) == words | {v.eos}   # a word, then <eos>
    assert allowed(body + [v.word0], max_length=13) == words | {v.eos}
    assert allowed(body + [v.word0], max_length=14) == words | cats | {v.eos}   # 7 + 6 + <eos>
    assert allowed(body + [v.word0], max_elements=1) == words | {v.eos}
    t, f = v.category_id("title"), v.category_id("figure")
    assert allowed([v.sos], categories=["title", "figure"]) == {t}
    assert allowed(body + [v.word0], categories=["text", "figure"], max_length=15) == words | {f}  # 7+1+6+1
    assert allowed(body + [v.word0], categories=["text", "figure"], max_length=14) == {f}   # 7 + 6 + 1
    assert allowed(body + [v.word0], categories=["text"]) == words | {v.eos}


def test_render_layout_draws_boxes():
    page = _page(3)
    img = ds.render_layout(page, width=100)
    assert img.shape == (round(100 * page.aspect), 100, 3) and img.dtype == np.uint8
    x, y, w, h = page.elements[0].box   # the title's outline is drawn in its colour
    assert tuple(img[int(y * img.shape[0]) + 1, int((x + w / 2) * 100)]) != (255, 255, 255)
    assert tuple(img[0, 0]) == (255, 255, 255)
