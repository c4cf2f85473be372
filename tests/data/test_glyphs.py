"""jaxmm.data.glyphs: ink lies inside the reported boxes, every word is drawn, scenes are the glyph composited in
the prompt's colours, and bad arguments fail with a message naming them."""
import numpy as np
import pytest

from jaxmm.data import glyphs


def _ink_outside(glyph, boxes, pad=1.0):
    yy, xx = np.mgrid[0:glyph.shape[0], 0:glyph.shape[1]] + 0.5
    inside = np.zeros(glyph.shape, bool)
    for x0, y0, x1, y1 in boxes:
        inside |= (xx >= x0 - pad) & (xx <= x1 + pad) & (yy >= y0 - pad) & (yy <= y1 + pad)
    return int((glyph[~inside] > 0).sum())


def _ink_in(glyph, box):
    x0, y0, x1, y1 = np.floor(box[:2]).astype(int).tolist() + np.ceil(box[2:]).astype(int).tolist()
    return int(glyph[max(y0, 0):y1, max(x0, 0):x1].max())


@pytest.mark.parametrize("seed", range(6))
def test_single_word_ink_is_inside_its_box_and_deterministic(seed):
    g = glyphs.single_word(seed)
    assert g.glyph.shape == (glyphs.HEIGHT, glyphs.WIDTH) and g.glyph.dtype == np.uint8
    assert len(g.words) == 1 and g.words[0] in glyphs.SHORT_WORDS
    assert g.glyph.max() >= 240 and g.glyph.min() == 0             # white text on black (antialiased)
    assert _ink_outside(g.glyph, g.boxes) == 0 and _ink_in(g.glyph, g.boxes[0]) > 128
    assert np.all(g.boxes[:, :2] >= 0) and np.all(g.boxes[:, 2] <= glyphs.WIDTH) and np.all(g.boxes[:, 3] <= glyphs.HEIGHT)
    assert np.array_equal(glyphs.single_word(seed).glyph, g.glyph)
    assert not all(np.array_equal(glyphs.single_word(seed + 100).glyph, g.glyph) for _ in range(1))


@pytest.mark.parametrize("seed", range(6))
def test_layout_words_come_from_textrich_layouts_and_each_is_drawn(seed):
    g = glyphs.layout_words(seed, max_words=3, min_size=6)
    assert 1 <= len(g.words) <= 3 and all(w and glyphs.clean_word(w) == w for w in g.words)
    assert _ink_outside(g.glyph, g.boxes) == 0
    for box in g.boxes:
        assert _ink_in(g.glyph, box) > 128
    assert min(g.sizes) >= 6


def test_layout_words_keep_the_page_order_left_to_right_on_a_line():
    multi = [glyphs.layout_words(s, max_words=3) for s in range(40)]
    pairs = [(g.boxes[i], g.boxes[i + 1]) for g in multi for i in range(len(g.words) - 1)
             if abs(g.boxes[i, 3] - g.boxes[i + 1, 3]) < 1.0]          # same baseline row
    assert pairs, "no multi-word cut on one line in 40 seeds"
    assert all(a[2] <= b[0] + 0.5 for a, b in pairs)                     # reading order, no overlap


def test_render_in_boxes_fits_each_word_in_its_box():
    boxes = np.array([[2, 2, 30, 14], [34, 16, 62, 30]], np.float32)
    img = glyphs.render_in_boxes(["tiger", "ocean"], boxes)
    assert _ink_outside(img, boxes, pad=0.5) == 0
    assert all(_ink_in(img, b) > 128 for b in boxes)


def test_box_mask_matches_a_pixel_loop():
    boxes = np.array([[1.2, 0.0, 5.6, 3.4], [10, 4, 12.5, 8]], np.float32)
    got = glyphs.box_mask(boxes, (9, 16))
    want = np.zeros((9, 16), np.uint8)
    for y in range(9):
        for x in range(16):
            want[y, x] = any(b[0] <= x + 0.5 <= b[2] and b[1] <= y + 0.5 <= b[3] for b in boxes)
    assert np.array_equal(got, want)


def test_char_map_puts_each_letter_in_its_equal_width_slot():
    boxes = np.array([[2, 1, 8, 5], [10, 4, 14, 8]], np.float32)   # "abc": 2 px slots; "z9": 2 px slots
    got = glyphs.char_map(["abc", "z9"], boxes, (9, 16))
    want = np.zeros((9, 16), np.int64)
    for y in range(9):
        for x in range(16):
            for w, b in zip(["abc", "z9"], boxes):
                if b[0] <= x + 0.5 <= b[2] and b[1] <= y + 0.5 <= b[3]:
                    want[y, x] = 1 + glyphs.CHARSET.index(w[min(int((x + 0.5 - b[0]) // 2), len(w) - 1)])
    assert np.array_equal(got, want)
    assert np.array_equal(got > 0, glyphs.box_mask(boxes, (9, 16)) > 0)     # its support is the box mask
    assert sorted(np.unique(got[got > 0])) == [1, 2, 3, 26, 36]            # a b c z 9
    with pytest.raises(ValueError, match="boxes"):
        glyphs.char_map(["abc"], boxes, (9, 16))
    with pytest.raises(ValueError, match="words"):
        glyphs.char_map(["a-b", "z"], boxes, (9, 16))


def test_scene_is_the_glyph_composited_in_the_prompt_colours():
    s = glyphs.scene(3, height=16, width=48, size_range=(9, 13), min_size=8)
    bg, fg = np.array(glyphs.BACKGROUNDS[s["background"]]), np.array(glyphs.FOREGROUNDS[s["foreground"]])
    a = s["glyph"].astype(np.float64)[..., None] / 255
    assert np.abs(s["image"] - ((1 - a) * bg + a * fg)).max() <= 0.5 + 1e-9
    assert s["prompt"] == glyphs.prompt_for(s["words"], s["background"], s["foreground"])
    assert f'"{" ".join(s["words"])}"' in s["prompt"] and s["mask"].max() == 1


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="vocabulary"):
        glyphs.single_word(0, vocabulary=["Tiger!"])
    with pytest.raises(ValueError, match="size_range"):
        glyphs.single_word(0, size_range=(3, 2))
    with pytest.raises(ValueError, match="max_words"):
        glyphs.layout_words(0, max_words=0)
    with pytest.raises(ValueError, match="boxes"):
        glyphs.render_in_boxes(["a", "b"], np.zeros((1, 4)))
