"""LaRA's data (TRINS, arXiv 2406.06730; PAPERS.md §9): TRINS-style examples from the text-rich page generator,
each with the page's OCR words in the prompt as text tokens beside the visual tokens.

    from jaxmm.data.lara import LaraData
    src = LaraData(1000, split="train", task="mix", ocr="rapidocr", layout=False, ocr_budget=160)
    src[0]["conversations"]   # [("user", "<image>\\nOCR:\\nCITY DELI donut 17.36 ...\\n\\nWhat is the total?"),
                              #  ("assistant", "29.10")]

Pages are `jaxmm.data.textrich.make_page` pages; captions are `jaxmm.data.trins.caption_page` (TRINS-Cap's ~65-word
descriptions that quote the text) and questions `jaxmm.data.trins.trins_qa` (TRINS-VQA's: generated from caption +
ground truth), so an example here is one record of a `write_trins` folder, made in memory.
Tasks (`task=`):
  "caption"  TRINS-Cap: the instruction `trins.CAPTION_PROMPT`, the caption as answer        kind "caption"
  "vqa"      TRINS-VQA: a question that needs reading (`VQA_KINDS`)                        kind = question kind
  "visual"   non-text VQA: background colour, shape counts / colours, kind of page (`VISUAL_KINDS`)
  "mix"      training: a caption with probability `caption_fraction` (the instruction data), else any question
             of the page (reading or not: LaRA's VQA data)
**[reconstruction]** LaRA trains on ~90k VQA + ~158k LLaVA instruction samples; here the instruction data is the
caption instruction and the split between the two is `caption_fraction`.

OCR (`ocr=`): "none" (no OCR block: the no-OCR ablation), "oracle" (the page's true words and boxes), or an engine
of jaxmm.ocr ("rapidocr", "tesseract") run on the full-resolution page (cached on disk with `ocr_cache` or
$JAXMM_OCR_CACHE). The words become text through `jaxmm.data.ocr_text` (shared with LLaVA-Read): `layout=True`
the layout-recovered canvas `width` characters wide, `layout=False` the words in reading order joined by
spaces; then the token budget `ocr_budget` ("head" rule: the top of the page survives) with the formatter's
tokenizer. The image the encoder sees is the page padded to a square and resized to `image_size` (low
resolution: at 48 px the small text is not legible, so reading must come from the OCR tokens).

Example i of a split uses page (data_seed, split, i mod `pages`) and a question drawn by (data_seed, split, i); the
page set does not depend on the training seed, so seeds of one ablation see the same pages. A page's image, caption,
questions and OCR text are made once per source object.
"""
from __future__ import annotations

import numpy as np

from jaxmm.checks import check_positive, fail
from jaxmm.data import ocr_text as ocr_text_lib
from jaxmm.data.textrich import KINDS as PAGE_KINDS, READING_QUESTIONS, VISUAL_QUESTIONS, make_page, \
    page_questions, square_view
from jaxmm.data.trins import CAPTION_PROMPT, caption_page, trins_qa

TASKS = ("mix", "caption", "vqa", "visual")
OCR = ("none", "oracle", "rapidocr", "tesseract")
VQA_KINDS = READING_QUESTIONS + ("first_line",)     # TRINS-VQA: questions that need reading
VISUAL_KINDS = VISUAL_QUESTIONS + ("page_kind",)    # the non-text VQA set
KINDS = ("caption",) + VQA_KINDS + VISUAL_KINDS
DEFAULT_PAGE_KINDS = ("receipt", "poster", "sign", "chart", "table")   # documents: 400+ words, left out by default
_SPLITS = {"train": 0, "eval": 1, "test": 2}


def page_qa(page, seed: int = 0) -> list[tuple[str, str, str]]:
    """(question, answer, kind) of every TRINS question of `page` (`trins.trins_qa`, whose last two are the
    caption's "What kind of image is this?" -> kind "page_kind" and the first line of text -> "first_line")."""
    kinds = [q.kind for q in page_questions(page, seed)] + ["page_kind", "first_line"]
    qa = trins_qa(page, caption_page(page), seed)
    if len(qa) != len(kinds):   # trins_qa = page_questions(page, seed) + two caption questions
        raise AssertionError(f"trins_qa gave {len(qa)} questions, expected {len(kinds)}")
    return [(q["question"], q["answer"], k) for q, k in zip(qa, kinds)]


def page_ocr_text(page, ocr: str = "oracle", *, layout: bool = False, width: int = 48, max_words=None,
                  cache=None) -> str:
    """The OCR text of `page` (before the token budget): "" for ocr="none", else `ocr_text.ocr_context` of the
    page's truth ("oracle") or of what the engine reads from its pixels."""
    if ocr not in OCR:
        fail("ocr", f"one of {OCR}", repr(ocr))
    if ocr == "none":
        return ""
    if ocr == "oracle":
        return ocr_text_lib.ocr_context((page.words, page.boxes), layout=layout, width=width, max_words=max_words,
                                        page_size=tuple(page.image.shape[:2]))
    return ocr_text_lib.read_context(page.image, ocr, layout=layout, width=width, max_words=max_words, cache=cache)


class LaraData:
    """Random-access source of LaRA / TRINS examples (see the module docstring). Examples: {"image" uint8
    [image_size, image_size, 3], "has_image", "conversations", "question", "answer", "kind", "ocr_text", "id"}.

    tokenizer: what `ocr_budget` counts in (a ByteTokenizer when None; the trainer passes the formatter's)."""

    def __init__(self, num_examples: int, *, split: str = "train", data_seed: int = 0, pages: int = 256,
                 image_size: int = 48, task: str = "mix", caption_fraction: float = 0.3,
                 page_kinds=DEFAULT_PAGE_KINDS, ocr: str = "oracle", layout: bool = False, width: int = 48,
                 max_words=None, ocr_budget: int | None = 160, ocr_cache=None, tokenizer=None):
        check_positive("num_examples", num_examples)
        check_positive("pages", pages)
        check_positive("image_size", image_size)
        if split not in _SPLITS:
            fail("split", f"one of {tuple(_SPLITS)}", repr(split))
        if task not in TASKS:
            fail("task", f"one of {TASKS}", repr(task))
        if ocr not in OCR:
            fail("ocr", f"one of {OCR}", repr(ocr))
        if not 0.0 <= caption_fraction <= 1.0:
            fail("caption_fraction", "a fraction in [0, 1]", caption_fraction)
        bad = [k for k in page_kinds if k not in PAGE_KINDS]
        if bad or not page_kinds:
            fail("page_kinds", f"a non-empty subset of {PAGE_KINDS}", tuple(page_kinds))
        if ocr_budget is not None and (isinstance(ocr_budget, bool) or int(ocr_budget) != ocr_budget
                                       or ocr_budget < 0):
            fail("ocr_budget", "None or an integer >= 0 (OCR tokens)", repr(ocr_budget))
        if tokenizer is None:
            from jaxmm.data.tokenizers import ByteTokenizer
            tokenizer = ByteTokenizer()
        self.num_examples, self.split, self.data_seed, self.pages = int(num_examples), split, int(data_seed), int(pages)
        self.image_size, self.task, self.caption_fraction = int(image_size), task, float(caption_fraction)
        self.page_kinds, self.ocr, self.layout, self.width = tuple(page_kinds), ocr, bool(layout), int(width)
        self.max_words, self.ocr_budget, self.ocr_cache = max_words, ocr_budget, ocr_cache
        self.tokenizer = tokenizer
        self._pages: dict = {}

    def __len__(self) -> int:
        return self.num_examples

    def page(self, j: int) -> dict:
        """Page j's low-resolution image, caption, questions and budgeted OCR text (made once)."""
        if j not in self._pages:
            rng = np.random.default_rng([self.data_seed, _SPLITS[self.split], j, 7])
            page = make_page(int(rng.integers(2**31)), self.page_kinds[int(rng.integers(len(self.page_kinds)))])
            text = page_ocr_text(page, self.ocr, layout=self.layout, width=self.width, max_words=self.max_words,
                                 cache=self.ocr_cache)
            text = ocr_text_lib.fit_text(text, self.tokenizer, self.ocr_budget)
            self._pages[j] = dict(image=square_view(page.image, self.image_size), caption=caption_page(page),
                                  qa=page_qa(page, int(rng.integers(2**31))), ocr_text=text)
        return self._pages[j]

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range [0, {self.num_examples})")
        rng = np.random.default_rng([self.data_seed, _SPLITS[self.split], index])
        p = self.page(index % self.pages)
        task = self.task
        if task == "mix":
            task = "caption" if rng.random() < self.caption_fraction else "any"
        if task == "caption":
            question, answer, kind = CAPTION_PROMPT, p["caption"], "caption"
        else:
            allowed = {"vqa": VQA_KINDS, "visual": VISUAL_KINDS}.get(task, VQA_KINDS + VISUAL_KINDS)
            pool = [qa for qa in p["qa"] if qa[2] in allowed]   # never empty: first_line / page_kind always exist
            question, answer, kind = pool[int(rng.integers(len(pool)))]
        user = ocr_text_lib.ocr_prompt(question, p["ocr_text"])
        return {"image": p["image"], "has_image": np.int32(1),
                "conversations": [("user", user), ("assistant", answer)],
                "question": question, "answer": answer, "kind": kind, "ocr_text": p["ocr_text"],
                "id": f"{self.split}-{index}"}
