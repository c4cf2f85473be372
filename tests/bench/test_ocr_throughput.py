"""bench/ocr_throughput.py: its word matching rule against hand-made cases, and --small runs end to end."""
import json
import os
import sys

import numpy as np

from jaxmm import ocr

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import ocr_throughput  # noqa: E402


def test_match_words_rule():
    truth = ocr.xyxy_to_quads([[0, 0, 40, 10], [50, 0, 90, 10], [0, 20, 40, 30]])       # a b a
    read = ocr.xyxy_to_quads([[51, 1, 91, 11],    # B over b: matched (case-insensitive)
                              [2, 0, 42, 10],     # A over the first a: matched
                              [0, 40, 40, 50],    # a, centre (20, 45): 15 px under the second a's box, grown by
                              #                     5 px (half its height): not matched, nearest is that a
                              [4, 22, 44, 32],    # c over the second a: wrong text, not matched
                              [3, 1, 43, 11]])    # A again over the first a, farther than the 2nd read word: not matched
    tm, rm, near = ocr_throughput.match_words(["a", "b", "a"], truth, ["B", "A", "a", "c", "A"], read)
    assert tm.tolist() == [True, True, False]
    assert rm.tolist() == [True, True, False, False, False]
    assert near.tolist() == [1, 0, 2, 2, 0]
    # greedy by distance: the closer of two candidates wins
    tm, rm, _ = ocr_throughput.match_words(["a"], truth[:1], ["a", "a"], read[[4, 1]])
    assert rm.tolist() == [False, True]                   # read[1] (centre 2 px away) beats read[4] (3.2 px)
    # rotated quads: the rule is measured in the word's own frame
    a = np.radians(30)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    tq = truth[:1] @ rot.T
    inside = (np.array([[38, 2], [44, 2], [44, 8], [38, 8]]) @ rot.T)[None]   # centre 1 px past the right end
    outside = (np.array([[44, 2], [50, 2], [50, 8], [44, 8]]) @ rot.T)[None]  # centre 7 px past it (> 5)
    assert ocr_throughput.match_words(["a"], tq, ["a"], inside)[0].tolist() == [True]
    assert ocr_throughput.match_words(["a"], tq, ["a"], outside)[0].tolist() == [False]
    assert [x.tolist() for x in ocr_throughput.match_words(["a"], tq, [], np.zeros((0, 4, 2)))] == [[False], [], []]


def test_small_run(tmp_path):
    assert not ocr.ENGINES["rapidocr"].missing(), "rapidocr is installed by `make test` (the ocr extra)"
    res = ocr_throughput.main(["--small", "--workers", "1", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "ocr_bench.json").read_text())["accuracy"] == res["accuracy"]
    assert "| 24-31 |" in (tmp_path / "ocr_bench.md").read_text()
    (tp,) = res["throughput"]
    assert tp["workers"] == 1 and tp["images_per_s"] > 0 and tp["cpu_s"] > 0
    cells = {(r["font_px"], r["rotation"]): r for r in res["accuracy"]}
    assert {r for _, r in cells} == {0, 5}
    for r in res["accuracy"]:
        assert r["matched"] <= r["words"] and r["read_matched"] <= r["read"] and r["pages"] <= 2
    upright = cells[("24-31", 0)]
    assert upright["words"] >= 5 and upright["recall"] >= 0.9    # 24 px upright sign / receipt text
