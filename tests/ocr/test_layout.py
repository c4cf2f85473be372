"""jaxmm.ocr.layout_text on hand-made layouts: exact expected canvases (a table, two columns, jittered baselines,
a page rotated by a few degrees), the rotated cases failing when the deskew step is removed."""
import numpy as np
import pytest

from jaxmm import ocr
from jaxmm.ocr import layout as layout_mod


def _result(items, size):
    """items: (word, x0, y0, x1, y1) axis-aligned."""
    words = [w for w, *_ in items]
    return ocr.OcrResult(words, ocr.xyxy_to_quads([b for _, *b in items]), np.ones(len(words)), size)


def _rotated(result, degrees):
    """Every corner rotated by `degrees` about the page centre (a skewed scan of the same page)."""
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c = np.array([result.size[1] / 2, result.size[0] / 2])
    return ocr.OcrResult(result.words, (result.boxes - c) @ rot.T + c, result.scores, result.size)


# 200 px wide page, width 40 -> 5 px per character column
TABLE = [("Item", 0, 0, 20, 10), ("Qty", 100, 0, 115, 10), ("Price", 150, 0, 175, 10),
         ("Coffee", 0, 20, 30, 30), ("2", 100, 21, 105, 31), ("3.50", 150, 19, 170, 29),
         ("Tea", 0, 40, 15, 50), ("10", 100, 40, 110, 50), ("12.00", 150, 40, 175, 50)]
TABLE_TEXT = ("Item                Qty       Price\n"
              "Coffee              2         3.50\n"
              "Tea                 10        12.00")

# two columns: the left column's lines and the right column's lines share canvas rows
COLUMNS = [("The", 0, 0, 15, 10), ("cat", 20, 0, 35, 10), ("Right", 110, 0, 135, 10), ("side", 140, 0, 160, 10),
           ("sat", 0, 15, 15, 25), ("on", 20, 15, 30, 25), ("column", 110, 15, 140, 25),
           ("mats.", 0, 30, 25, 40), ("two.", 110, 30, 130, 40)]
COLUMNS_TEXT = ("The cat".ljust(22) + "Right side\n"      # x = 110 px -> column 22
                + "sat on".ljust(22) + "column\n"
                + "mats.".ljust(22) + "two.")


def test_table_exact():
    assert ocr.layout_text(_result(TABLE, (60, 200)), width=40) == TABLE_TEXT


def test_two_columns_exact():
    assert ocr.layout_text(_result(COLUMNS, (45, 200)), width=40) == COLUMNS_TEXT


def test_input_order_does_not_matter():
    perm = np.random.default_rng(0).permutation(len(TABLE))
    assert ocr.layout_text(_result([TABLE[i] for i in perm], (60, 200)), width=40) == TABLE_TEXT


def test_width_scales_columns():
    r = _result([("a", 0, 0, 5, 10), ("b", 100, 0, 105, 10), ("c", 190, 0, 195, 10)], (10, 200))
    assert ocr.layout_text(r, width=20) == "a" + " " * 9 + "b" + " " * 8 + "c"     # 10 px per column
    assert ocr.layout_text(r, width=4) == "a b c"                                   # collisions keep one space


def test_crowded_row_runs_past_width_and_keeps_order():
    r = _result([("alpha", 0, 0, 10, 10), ("beta", 10, 0, 20, 10), ("gamma", 20, 0, 30, 10)], (10, 30))
    assert ocr.layout_text(r, width=3) == "alpha beta gamma"


@pytest.mark.parametrize("degrees", [-5, 3, 5])
def test_rotated_page_gives_the_same_canvas(degrees):
    assert ocr.layout_text(_rotated(_result(TABLE, (60, 200)), degrees), width=40) == TABLE_TEXT
    assert ocr.layout_text(_rotated(_result(COLUMNS, (45, 200)), degrees), width=40) == COLUMNS_TEXT


def test_deskew_is_what_makes_rotation_work(monkeypatch):
    """Without the deskew (identity), a 5 degree page breaks its table rows apart: the mechanism is not inert."""
    monkeypatch.setattr(layout_mod, "_deskewed", lambda boxes, centre=(0.0, 0.0): boxes.astype(np.float64))
    assert ocr.layout_text(_rotated(_result(TABLE, (60, 200)), 5), width=40) != TABLE_TEXT


def test_individually_tilted_words_group_by_centre():
    """Words tilted +-6 degrees about their own centres, on one baseline: still one line each."""
    r = _result(TABLE, (60, 200))
    boxes = r.boxes.copy()
    for i in range(len(boxes)):
        a = np.deg2rad(6 if i % 2 else -6)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        c = boxes[i].mean(0)
        boxes[i] = (boxes[i] - c) @ rot.T + c
    tilted = ocr.OcrResult(r.words, boxes, r.scores, r.size)
    assert [[r.words[j] for j in line] for line in ocr.layout_lines(tilted)] == [
        ["Item", "Qty", "Price"], ["Coffee", "2", "3.50"], ["Tea", "10", "12.00"]]


def test_lines_are_reading_order():
    lines = ocr.layout_lines(_result(COLUMNS, (45, 200)))
    assert [[COLUMNS[j][0] for j in line] for line in lines] == [
        ["The", "cat", "Right", "side"], ["sat", "on", "column"], ["mats.", "two."]]


def test_empty_and_page_width_default():
    assert ocr.layout_text(ocr.OcrResult.empty((10, 10))) == ""
    r = _result([("x", 0, 0, 10, 10), ("y", 90, 0, 100, 10)], (0, 0))    # no size: right-most edge is the width
    assert ocr.layout_text(r, width=10) == "x" + " " * 8 + "y"


def test_bad_arguments():
    r = _result(TABLE, (60, 200))
    with pytest.raises(ValueError, match="width"):
        ocr.layout_text(r, width=0)
    with pytest.raises(ValueError, match="result"):
        ocr.layout_text({"words": []})
    with pytest.raises(ValueError, match="line_tolerance"):
        ocr.layout_text(r, line_tolerance=0)
