"""LLaVA-Read's visual text encoder (issue 18): OCR reading order with and without layout, the prompt order
[image][OCR][instruction], and the token budget's truncation rules (expected strings written out by hand)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from jaxmm.data import ocr_text
from jaxmm.data.tokenizers import ByteTokenizer, HFTokenizer
from jaxmm.ocr import OcrResult

HF = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf")

# a 400 x 100 px page: two columns, two lines; given to the engine in a scrambled order
WORDS = ["total", "Shop", "9.50", "cafe"]
XYXY = np.array([[10, 60, 60, 75],     # total  (line 2, left)
                 [10, 10, 50, 25],     # Shop   (line 1, left)
                 [300, 60, 340, 75],   # 9.50   (line 2, right column)
                 [60, 10, 100, 25]],   # cafe   (line 1, just right of Shop)
                np.float32)


def test_no_layout_is_reading_order_joined_by_spaces():
    assert ocr_text.ocr_context((WORDS, XYXY), layout=False) == "Shop cafe total 9.50"


def test_layout_places_words_by_their_x():
    # width 40 chars over 400 px: 10 px per char; x = 10 -> column 1, 60 -> 6, 300 -> 30
    text = ocr_text.ocr_context((WORDS, XYXY), layout=True, width=40, page_size=(100, 400))
    assert text == " Shop cafe\n total" + " " * (30 - 6) + "9.50"


def test_max_words_drops_least_confident_first():
    res = OcrResult(WORDS, ocr_text._as_ocr((WORDS, XYXY)).boxes, [0.9, 0.2, 0.8, 0.7], (100, 400))
    assert ocr_text.ocr_context(res, layout=False, max_words=3) == "cafe total 9.50"
    assert ocr_text.ocr_context(res, layout=False, max_words=0) == ""


def test_prompt_order_image_then_ocr_then_instruction():
    p = ocr_text.ocr_prompt("What is the total?", "Shop cafe\ntotal 9.50")
    assert p == "<image>\nOCR:\nShop cafe\ntotal 9.50\n\nWhat is the total?"
    assert ocr_text.ocr_prompt("Q?", "") == "<image>\nQ?"          # no-OCR ablation: no OCR block
    assert ocr_text.ocr_prompt("Q?", "x", image=False) == "OCR:\nx\n\nQ?"


@pytest.mark.parametrize("budget,rule,expected", [
    (3, "head", [0, 1, 2]), (4, "middle", [0, 1, 8, 9]), (5, "middle", [0, 1, 2, 8, 9]), (1, "middle", [0]),
    (0, "head", []), (10, "head", list(range(10))), (12, "middle", list(range(10)))])
def test_budget_ids_rules(budget, rule, expected):
    assert ocr_text.budget_ids(list(range(10)), budget, rule) == expected


def test_fit_text_byte_and_bpe_tokenizers():
    text = "Shop cafe\ntotal 9.50 paid"
    assert ocr_text.fit_text(text, ByteTokenizer(), 9) == "Shop cafe"
    assert ocr_text.fit_text(text, ByteTokenizer(), 9, "middle") == "Shop paid"   # 5 head bytes "Shop " + 4 tail bytes
    assert ocr_text.fit_text(text, ByteTokenizer(), None) == text
    bpe = HFTokenizer(os.path.join(HF, "qwen2_chat"))
    ids = bpe.encode(text)
    for budget in range(len(ids) + 1):
        out = ocr_text.fit_text(text, bpe, budget)
        assert len(bpe.encode(out)) <= budget and text.startswith(out)
    assert ocr_text.fit_text(text, bpe, len(ids)) == text


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="budget"):
        ocr_text.budget_ids([1, 2], -1)
    with pytest.raises(ValueError, match="rule"):
        ocr_text.budget_ids([1, 2], 1, "tail")
    with pytest.raises(ValueError, match="width"):
        ocr_text.ocr_context((WORDS, XYXY), width=0)
    with pytest.raises(ValueError, match="layout"):
        ocr_text.ocr_context((WORDS, XYXY), layout="yes")
    with pytest.raises(ValueError, match="engine"):
        ocr_text.read_context(np.zeros((8, 8, 3), np.uint8), engine="paddle")
    with pytest.raises(ValueError, match="instruction"):
        ocr_text.ocr_prompt("<image>\nQ", "x")


def test_read_context_oracle_matches_truth():
    img = np.full((100, 400, 3), 255, np.uint8)
    assert ocr_text.read_context(img, "oracle", truth=(WORDS, XYXY), layout=False) == "Shop cafe total 9.50"
