"""LLaVA-Read's data (arXiv 2407.19185; PAPERS.md §2) from the procedural text-rich pages (jaxmm.data.textrich):
layout-aware pre-training targets, then reading questions split by text size, each with the OCR context of
jaxmm.data.ocr_text placed between the image and the instruction.

    from jaxmm.data.llava_read import LlavaReadSource, pretrain_example, box_tokens
    src = LlavaReadSource(1000, stage="finetune", ocr="layout", engine="oracle", image_size=96)
    src[0]   # {"image", "conversations", "question", "answer", "kind", ...}

Pre-training tasks (`PRETRAIN_TASKS`; our small-scale reconstruction of the paper's four, whose exact prompts are
unpublished). On a page with words w_i, boxes b_i and reading-order lines:
  recognition   "What text is in the box [x0 y0 x1 y1]?"         -> the word whose box that is
  localisation  "Where is the word 'w'?"                          -> its box as quantised tokens "[x0 y0 x1 y1]"
  parsing       "Read line n of the page."                        -> the words of reading-order line n, spaces
  layout        "Recover the layout of line n."                   -> line n's row of the layout canvas
                                                                     (jaxmm.ocr.layout_text: leading spaces
                                                                     place it, inner spaces keep its columns)
Box tokens (`box_tokens`): the word's axis-aligned pixel box (the bounds of its quadrilateral), each coordinate
quantised to floor(c / side * bins) clipped to [0, bins - 1] (x by the page width, y by its height), written
"[x0 y0 x1 y1]" so any tokenizer reads it. Words asked about are unique on the page (the target is unambiguous);
lines asked about have at most `MAX_LINE_CHARS` characters.

Fine-tuning ("finetune"): the reading questions of textrich (`READING_KINDS`: key_value, price, above,
read_at), whose answer is a word of the page; kind "small" when the answer's font size is under
`small_text` (default 0.03) of the page's longer side, else "large" — the split of the ablation table.

OCR (`ocr`): "none" (no OCR block), "plain" (words in reading order) or "layout" (the canvas `width` chars
wide), read by `engine` (oracle: the page's truth; rapidocr / tesseract: from the full-resolution page, cached
on disk in `ocr_cache`), then cut to `budget` tokens of the run's tokenizer by `budget_rule`
(jaxmm.data.ocr_text). `eval_engine` may differ from the training engine (train on the oracle, test on rapidocr).

Tokenizer: the ablation rows (configs/llava_read.py) use configs/llava_read_bpe, the word-preserving BPE of
`jaxmm.data.tokenizers.train_word_bpe` trained on `page_corpus(300)` (vocab 1024):
    train_word_bpe(page_corpus(300), "configs/llava_read_bpe", vocab_size=1024)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxmm.checks import fail
from jaxmm.data import ocr_text
from jaxmm.data.textrich import KINDS, Page, make_page, page_questions, square_view
from jaxmm.ocr.layout import layout_lines, layout_text
from jaxmm.ocr.engines import OcrResult

PRETRAIN_TASKS = ("recognition", "localisation", "parsing", "layout")
READING_KINDS = ("key_value", "price", "above", "read_at")
SIZE_KINDS = ("small", "large")
STAGES = ("pretrain", "finetune")
OCR_MODES = ("none", "plain", "layout")
MAX_LINE_CHARS = 40
_SPLITS = {"train": 0, "eval": 1, "test": 2}


def box_tokens(quad, page_hw, bins: int = 100) -> str:
    """A word's quadrilateral [4, 2] (x, y pixels) -> "[x0 y0 x1 y1]" quantised to `bins` (module docstring)."""
    quad = np.asarray(quad, np.float64).reshape(4, 2)
    h, w = page_hw
    lo, hi = quad.min(0), quad.max(0)
    scale = np.array([w, h, w, h], np.float64)
    q = np.clip(np.floor(np.array([lo[0], lo[1], hi[0], hi[1]]) / scale * bins), 0, bins - 1).astype(int)
    return "[" + " ".join(str(v) for v in q) + "]"


def _truth(page: Page) -> OcrResult:
    return OcrResult(page.words, page.boxes, np.ones(len(page.words), np.float32), page.image.shape[:2])


def pretrain_example(page: Page, task: str, rng, *, bins: int = 100, width: int = 48) -> tuple[str, str] | None:
    """(question, answer) of pre-training `task` on `page`, or None when the page has no suitable word/line."""
    if task not in PRETRAIN_TASKS:
        fail("task", f"one of {PRETRAIN_TASKS}", repr(task))
    if not page.words:
        return None
    hw = page.image.shape[:2]
    if task in ("recognition", "localisation"):
        low = [w.lower() for w in page.words]
        unique = [i for i, w in enumerate(low) if low.count(w) == 1]
        if not unique:
            return None
        i = unique[int(rng.integers(len(unique)))]
        box = box_tokens(page.boxes[i], hw, bins)
        if task == "recognition":
            return f"What text is in the box {box}?", page.words[i]
        return f"Where is the word '{page.words[i]}'?", box
    truth = _truth(page)
    lines = layout_lines(truth)
    if task == "parsing":
        texts = [" ".join(page.words[j] for j in line) for line in lines]
    else:
        texts = layout_text(truth, width=width).split("\n")
    ok = [n for n, t in enumerate(texts) if 0 < len(t) <= MAX_LINE_CHARS and t.strip()]
    if not ok:
        return None
    n = ok[int(rng.integers(len(ok)))]
    if task == "parsing":
        return f"Read line {n + 1} of the page.", texts[n]
    return f"Recover the layout of line {n + 1}.", texts[n]


def text_size_kind(page: Page, answer: str, small_text: float = 0.03) -> str | None:
    """"small" / "large" by the font size of the first page word equal to the answer's first word (None when
    the answer is not on the page)."""
    first = answer.split()[0] if answer.split() else ""
    idx = [i for i, w in enumerate(page.words) if w == first]
    if not idx:
        return None
    return "small" if page.sizes[idx[0]] < small_text * max(page.image.shape[:2]) else "large"


class LlavaReadSource:
    """Random-access source (see the module docstring). Example i is page (seed, split, i); its question is a
    pre-training task (stage "pretrain", drawn from `tasks`) or a reading question (stage "finetune", drawn
    from `qa_kinds`, re-drawn from the next pages until one whose answer is on the page). Examples: {"image"
    uint8 [image_size, image_size, 3], "conversations", "question", "answer", "kind" (a task name or
    "small"/"large"), "ocr_text", "page_kind"}. `tokenizer` (the run's; default bytes) counts the OCR budget."""

    kinds = PRETRAIN_TASKS + SIZE_KINDS

    def __init__(self, num_examples: int = 1000, *, seed: int = 0, split: str = "train", image_size: int = 96,
                 stage: str = "finetune", tasks: Sequence[str] = PRETRAIN_TASKS,
                 qa_kinds: Sequence[str] = READING_KINDS, page_kinds: Sequence[str] = KINDS, ocr: str = "layout",
                 engine: str = "oracle", eval_engine: str = "", width: int = 48, budget: int | None = 128,
                 budget_rule: str = "head", box_bins: int = 100, small_text: float = 0.03, ocr_cache: str = "",
                 tokenizer=None):
        checks = (("split", split, tuple(_SPLITS)), ("stage", stage, STAGES), ("ocr", ocr, OCR_MODES),
                  ("engine", engine, ocr_text.ENGINES), ("eval_engine", eval_engine, ("",) + ocr_text.ENGINES))
        for name, value, allowed in checks:
            if value not in allowed:
                fail(name, f"one of {allowed}", repr(value))
        for name, values, allowed in (("tasks", tasks, PRETRAIN_TASKS), ("qa_kinds", qa_kinds, READING_KINDS),
                                      ("page_kinds", page_kinds, KINDS)):
            if not values or any(v not in allowed for v in values):
                fail(name, f"a non-empty subset of {allowed}", tuple(values))
        if num_examples < 1:
            fail("num_examples", "a positive integer", num_examples)
        if budget is not None and budget < 0:
            fail("budget", "None or an integer >= 0 (OCR tokens)", budget)
        if split != "train" and eval_engine:
            engine = eval_engine
        if tokenizer is None:
            from jaxmm.data.tokenizers import ByteTokenizer
            tokenizer = ByteTokenizer()
        self.num_examples, self.seed, self.split, self.image_size = int(num_examples), int(seed), split, int(image_size)
        self.stage, self.tasks, self.qa_kinds, self.page_kinds = stage, tuple(tasks), tuple(qa_kinds), tuple(page_kinds)
        self.ocr, self.engine, self.width, self.budget, self.budget_rule = ocr, engine, int(width), budget, budget_rule
        self.box_bins, self.small_text, self.ocr_cache, self.tokenizer = int(box_bins), float(small_text), ocr_cache, tokenizer

    def __len__(self) -> int:
        return self.num_examples

    def _page(self, rng) -> Page:
        return make_page(int(rng.integers(2**31)), self.page_kinds[int(rng.integers(len(self.page_kinds)))])

    def _question(self, index: int):
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], index])
        for _ in range(50):
            page = self._page(rng)
            if self.stage == "pretrain":
                task = self.tasks[int(rng.integers(len(self.tasks)))]
                qa = pretrain_example(page, task, rng, bins=self.box_bins, width=self.width)
                if qa is not None:
                    return page, qa[0], qa[1], task
                continue
            order = [self.qa_kinds[int(i)] for i in rng.permutation(len(self.qa_kinds))]
            for qa in page_questions(page, int(rng.integers(2**31)), order):
                size = text_size_kind(page, qa.answer, self.small_text)
                if size is not None:
                    return page, qa.question, qa.answer, size
        raise RuntimeError(f"no question found for example {index} in 50 pages")

    def ocr_context(self, page: Page) -> str:
        """The page's OCR text for this source's `ocr`, `engine`, `width` and budget."""
        if self.ocr == "none":
            return ""
        layout = self.ocr == "layout"
        if self.engine == "oracle":
            text = ocr_text.ocr_context(_truth(page), layout=layout, width=self.width)
        else:
            text = ocr_text.read_context(page.image, self.engine, layout=layout, width=self.width,
                                         cache=self.ocr_cache or None)
        return ocr_text.fit_text(text, self.tokenizer, self.budget, self.budget_rule)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range [0, {self.num_examples})")
        page, question, answer, kind = self._question(index)
        context = self.ocr_context(page)
        return {"image": square_view(page.image, self.image_size),
                "conversations": [("user", ocr_text.ocr_prompt(question, context)), ("assistant", answer)],
                "question": question, "answer": answer, "kind": kind, "ocr_text": context,
                "page_kind": page.kind}


def page_corpus(num_pages: int = 300, *, seed: int = 0, widths: Sequence[int] = (32, 48)):
    """Texts of the procedural pages for `jaxmm.data.tokenizers.train_word_bpe` (configs/llava_read_bpe): each
    page's OCR block in reading order and as layout canvases `widths` wide, its reading questions and answers and
    its pre-training prompts, plus the chat template's role texts. Pages: `make_page` of default_rng([seed, 99])
    draws (none of the sources' pages as such; the word lists and number ranges are shared by all splits)."""
    if isinstance(num_pages, bool) or not (isinstance(num_pages, (int, np.integer)) and num_pages >= 1):
        fail("num_pages", "a positive integer", repr(num_pages))
    rng = np.random.default_rng([seed, 99])
    yield from ("USER: ", " ASSISTANT: ", "SYSTEM: ", ocr_text.OCR_HEADER)
    for i in range(int(num_pages)):
        page = make_page(int(rng.integers(2**31)), KINDS[i % len(KINDS)])
        truth = _truth(page)
        yield ocr_text.OCR_HEADER + ocr_text.ocr_context(truth, layout=False)
        yield from (ocr_text.ocr_context(truth, layout=True, width=int(w)) for w in widths)
        yield from (f"{qa.question}\n{qa.answer}"
                    for qa in page_questions(page, int(rng.integers(2**31)), READING_KINDS))
        for task in PRETRAIN_TASKS:
            qa = pretrain_example(page, task, rng)
            if qa is not None:
                yield f"{qa[0]}\n{qa[1]}"
