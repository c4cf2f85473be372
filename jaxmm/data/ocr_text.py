"""LLaVA-Read's visual text encoder (arXiv 2407.19185; PAPERS.md §2): OCR words + boxes -> (optional) layout
recovery -> the LLM's own tokenizer, under a token budget, placed between the image and the instruction. No
network of its own: the "encoder" is an OCR engine (jaxmm.ocr: oracle, rapidocr, tesseract) plus text.

    from jaxmm.data import ocr_text
    text = ocr_text.read_context(page_png, engine="rapidocr", layout=True, width=80)
    text = ocr_text.ocr_context((words, boxes), layout=True, width=80)       # oracle truth of a procedural page
    text = ocr_text.fit_text(text, tokenizer, budget=256)                    # the OCR token budget
    prompt = ocr_text.ocr_prompt("What is the total?", text)                 # "<image>\\nOCR:\\n...\\n\\nWhat is ..."

Prompt order (the paper's): [fused visual tokens] [layout-recovered OCR text] [instruction]; the visual tokens
are the one `<image>` placeholder that the MLLM expands into the encoder's features.

`layout=True` is jaxmm.ocr.layout_text (a whitespace/newline canvas, LATIN-Prompt style). `layout=False` is the
ablation without layout recovery: the same words in the same reading order (lines top to bottom, words left to
right, jaxmm.ocr.layout_lines), joined by single spaces, so the two differ only in the geometry the whitespace
carries.

Budget rule (`budget_ids`): the OCR text's token ids are cut to `budget` tokens by `rule`:
  "head"   keep the first `budget` ids: the top of the page (reading order) survives, the end is dropped;
  "middle" keep the first ceil(budget/2) and the last floor(budget/2) ids (the page's header and its footer,
           e.g. a receipt's shop and its TOTAL), dropping the middle.
The OCR text is budgeted before it is joined with the instruction, so the question is never cut. (The word-level
budget of jaxmm.ocr, `max_words`, drops the least confident words first and applies before this.)
"""
from __future__ import annotations

import numpy as np

from jaxmm.checks import fail
from jaxmm.ocr.engines import OcrResult, as_result
from jaxmm.ocr.layout import layout_lines, layout_text
from jaxmm.ocr.reader import read, truncate

RULES = ("head", "middle")
ENGINES = ("oracle", "rapidocr", "tesseract")
OCR_HEADER = "OCR:\n"


def _as_ocr(ocr, size=(0, 0)) -> OcrResult:
    if isinstance(ocr, OcrResult):
        return ocr
    return as_result(ocr, size)


def _check_width(width) -> None:
    if isinstance(width, bool) or not (isinstance(width, (int, np.integer)) and width >= 1):
        fail("width", "an integer >= 1 (characters per canvas row)", repr(width))


def ocr_context(ocr, *, layout: bool = True, width: int = 80, max_words: int | None = None,
                page_size: tuple | None = None) -> str:
    """The OCR text of one image. `ocr`: an OcrResult (jaxmm.ocr.read) or the truth of a procedural page,
    (words, boxes[, scores]) / {"words", "boxes"[, "scores"]} with boxes [N, 4, 2] quads or [N, 4] xyxy pixels.
    layout: True -> layout-recovered canvas `width` characters wide; False -> words in reading order joined by
    single spaces. max_words: the word budget (jaxmm.ocr.truncate: least confident words dropped first).
    page_size: (height, width) in pixels when `ocr` carries none (sets the canvas scale)."""
    if not isinstance(layout, (bool, np.bool_)):
        fail("layout", "True or False", repr(layout))
    _check_width(width)
    result = _as_ocr(ocr)
    if page_size is not None and result.size == (0, 0):
        result = OcrResult(result.words, result.boxes, result.scores, page_size)
    result = truncate(result, max_words)
    if len(result) == 0:
        return ""
    if layout:
        return layout_text(result, width=int(width))
    return " ".join(result.words[j] for line in layout_lines(result) for j in line)


def budget_ids(ids, budget: int, rule: str = "head") -> list[int]:
    """`ids` cut to at most `budget` tokens by `rule` ("head" | "middle"; module docstring). budget >= 0."""
    if isinstance(budget, bool) or not (isinstance(budget, (int, np.integer)) and budget >= 0):
        fail("budget", "an integer >= 0 (OCR tokens)", repr(budget))
    if rule not in RULES:
        fail("rule", f"one of {RULES}", repr(rule))
    ids = [int(i) for i in ids]
    if len(ids) <= budget:
        return ids
    if rule == "head":
        return ids[:budget]
    head = (budget + 1) // 2
    return ids[:head] + ids[len(ids) - (budget - head):]


def fit_text(text: str, tokenizer, budget: int | None, rule: str = "head") -> str:
    """`text` cut so that `tokenizer.encode` of the result has at most `budget` tokens (None: no budget).
    The ids are cut by `budget_ids` and decoded; a BPE tokenizer may re-encode the decoded text to more tokens,
    so the cut repeats with a smaller budget until it fits."""
    if not isinstance(text, str):
        fail("text", "a str", type(text).__name__)
    if budget is None:
        return text
    ids = tokenizer.encode(text)
    target = budget
    while True:
        out = tokenizer.decode(budget_ids(ids, target, rule))
        over = len(tokenizer.encode(out)) - budget
        if over <= 0:
            return out
        target = max(0, target - over)


def ocr_prompt(instruction: str, ocr_text: str, *, image: bool = True) -> str:
    """The user turn in LLaVA-Read's order: ["<image>\\n"] [OCR_HEADER + ocr_text + "\\n\\n"] [instruction].
    An empty `ocr_text` leaves the OCR block out (the no-OCR ablation)."""
    for name, value in (("instruction", instruction), ("ocr_text", ocr_text)):
        if not isinstance(value, str):
            fail(name, "a str", type(value).__name__)
    if "<image>" in instruction or "<image>" in ocr_text:
        fail("instruction/ocr_text", "no '<image>' placeholder (ocr_prompt places it)", "one")
    block = f"{OCR_HEADER}{ocr_text}\n\n" if ocr_text else ""
    return ("<image>\n" if image else "") + block + instruction


def read_context(image, engine: str = "rapidocr", *, layout: bool = True, width: int = 80,
                 max_words: int | None = None, truth=None, cache=None, **settings) -> str:
    """`ocr_context` of `image` read by `engine` (one of ENGINES; "oracle" needs `truth`, see jaxmm.ocr.read)."""
    if engine not in ENGINES:
        fail("engine", f"one of {ENGINES}", repr(engine))
    if engine == "oracle":
        settings["truth"] = truth
    return ocr_context(read(image, engine, cache=cache, **settings), layout=layout, width=width,
                       max_words=max_words)
