"""bench/ocr_throughput.py --small runs and reports sane numbers; its word matching against hand counts."""
import json
import os
import sys

import pytest

from jaxmm import ocr

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import ocr_throughput  # noqa: E402


def test_recall_precision_counts():
    # multiset, lower-cased: true {a, b, b, c}, read {B, a, x}: matched a, b
    assert ocr_throughput.recall_precision(["a", "b", "b", "c"], ["B", "a", "x"]) == (2, 4, 3)
    assert ocr_throughput.recall_precision(["a"], []) == (0, 1, 0)


def test_small_run(tmp_path):
    assert not ocr.ENGINES["rapidocr"].missing(), "rapidocr is installed by `make test` (the ocr extra)"
    res = ocr_throughput.main(["--small", "--workers", "1", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "ocr_bench.json").read_text())["accuracy"] == res["accuracy"]
    assert "| 24 |" in (tmp_path / "ocr_bench.md").read_text()
    (tp,) = res["throughput"]
    assert tp["workers"] == 1 and tp["images_per_s"] > 0
    assert len(res["accuracy"]) == 2
    for r in res["accuracy"]:
        assert 0 <= r["recall"] <= 1 and 0 <= r["precision"] <= 1 and r["words"] == 10
    big = [r for r in res["accuracy"] if r["font_px"] == 24 and r["rotation"] == 0][0]
    assert big["recall"] >= 0.9    # 24 px upright DejaVu: PP-OCR reads it
