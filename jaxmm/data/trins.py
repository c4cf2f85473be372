"""TRINS-format data (PAPERS.md §9, issue 16.4): long captions and reading QA for text-rich images, written and
read in a TRINS-style folder, and exported as LLaVA JSON.

TRINS (Zhang et al., CVPR 2024) pairs 39,153 LAION images with human captions of ~65 words that describe the
scene and every piece of text, and 102,437 QA pairs that text-only GPT-4 wrote from the caption + OCR
(benchmarks TRINS-Cap and TRINS-VQA). **[reconstruction]** The paper does not publish its release's file
layout; this module uses one caption file and one QA file keyed by image file name:

    <root>/images/<name>.png
    <root>/captions.json   {"<name>.png": "<caption>", ...}                                  (TRINS-Cap)
    <root>/qa.json         {"<name>.png": [{"question": "...", "answer": "..."}, ...], ...}  (TRINS-VQA)
    <root>/ocr.json        optional {"<name>.png": {"words": [...], "boxes": [[[x, y] x 4], ...]}}

An image may appear in either or both files. Generated data: `write_trins(root, n)` renders
`jaxmm.data.textrich` pages, captions them with `caption_page` (templated sentences naming the kind of page,
its background, tilt, colours, fonts, shapes, and quoting every line of text -- for documents the title, every
field and the first body line, with the body's line count; ~65 words on average) and writes QA pairs drawn from
the caption and the page's ground truth (the same facts an OCR + caption pass gives). User data in the same
layout loads with `TrinsSource(root, task="vqa" | "caption")`; bad records fail with a `BadRecordError` naming
the file, the record and the reason (or are dropped and counted with `skip_bad_records=True`), as in
`jaxmm.data.llava_json`. `export_llava(root, json_path)` writes LLaVA conversation JSON readable by
`LlavaJsonSource(json_path, root)`.
"""
from __future__ import annotations

import collections
import json
import os
import warnings

import numpy as np
from PIL import Image

from jaxmm.checks import check_positive, fail
from jaxmm.data.llava_json import MAX_ASPECT_RATIO, MAX_PIXELS, BadRecordError, load_image, size_problem
from jaxmm.data.textrich import KINDS, Page, make_page, page_questions

CAPTION_FILE, QA_FILE, OCR_FILE, IMAGE_DIR = "captions.json", "qa.json", "ocr.json", "images"
CAPTION_PROMPT = "Describe the image in detail, including all the text in it."
_NOUN = {"document": "a printed document", "receipt": "a narrow shop receipt", "poster": "an event poster",
         "sign": "a rectangular sign", "chart": "a bar chart", "table": "a table of numbers"}
_NUMBER = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _style(font_file: str) -> str:
    name = font_file.lower()
    family = "monospaced" if "mono" in name else "serif" if "serif" in name else "sans-serif"
    return ("bold " if "bold" in name else "") + ("italic " if ("oblique" in name or "italic" in name) else "") \
        + family


def _lines(page: Page) -> list[list[int]]:
    out = collections.defaultdict(list)
    for i, line in enumerate(page.lines):
        out[int(line)].append(i)
    return [out[k] for k in sorted(out)]


def _quote(page: Page, idx) -> str:
    return '"' + " ".join(page.words[i] for i in idx) + '"'


def _count(n: int, noun: str) -> str:
    word = _NUMBER[n] if n < len(_NUMBER) else str(n)
    return f"{word} {noun}{'' if n == 1 else 's'}"


def caption_page(page: Page) -> str:
    """A TRINS-style long caption of `page`: the scene, then every text element in reading order."""
    lines = _lines(page)
    tilt = "" if page.rotation == 0 else (", tilted slightly " + ("anticlockwise" if page.rotation > 0
                                                                    else "clockwise"))
    s = [f"The image shows {_NOUN[page.kind]} on a {page.background} background{tilt}."]
    first = lines[0]
    color0 = page.colors[first[0]]
    if page.kind == "document":
        s.append(f"The title at the top, in large {color0} {_style(page.fonts[first[0]])} letters, reads "
                 f"{_quote(page, first)}.")
        fields = [ln for ln in lines[1:] if page.words[ln[0]].endswith(":")]
        s.append("Below it are " + _count(len(fields), "field") + ": "
                 + ", ".join(_quote(page, ln) for ln in fields) + ".")
        body = lines[1 + len(fields):]
        if body:
            colored = sorted({page.colors[i] for ln in body for i in ln} - {"black"})
            s.append(f"A paragraph of {len(body)} lines of small {_style(page.fonts[body[0][0]])} text follows, "
                     f"starting with {_quote(page, body[0][:8])[:-1]}...\""
                     + (f"; some lines are printed in {', '.join(colored)}." if colored else "."))
    elif page.kind == "receipt":
        items = [ln for ln in lines[1:] if page.words[ln[0]] != "TOTAL"]
        s.append(f"The shop name {_quote(page, first)} is printed at the top in {_style(page.fonts[first[0]])} "
                 f"letters.")
        s.append("It lists " + _count(len(items), "item") + " with prices on the right: "
                 + ", ".join(f"{page.words[a]} for {page.words[b]}" for a, b in items) + ".")
        s.append(f"At the bottom, the total line reads {_quote(page, lines[-1])}. All the text is black.")
    elif page.kind == "poster":
        s.append(f"A large {color0} headline at the top reads {_quote(page, first)}.")
        s.append(f"Under it, a smaller {page.colors[lines[1][0]]} line says {_quote(page, lines[1])}, and a "
                 f"small line below gives {_quote(page, lines[2])}.")
    elif page.kind == "sign":
        s.append(f"Big white {_style(page.fonts[first[0]])} capitals in the middle read {_quote(page, first)}, and "
                 f"a small white line below says {_quote(page, lines[1])}.")
    elif page.kind == "chart":
        labels, values = lines[-1], lines[1]
        s.append(f"Its title reads {_quote(page, first)}.")
        s.append("There are " + _count(len(labels), "bar") + ", labelled "
                 + ", ".join(f"{page.words[a]} ({page.words[b]})" for a, b in zip(labels, values))
                 + ", with each value printed above its bar.")
    else:
        header, rows = lines[0], lines[1:]
        s.append(f"It has {_count(len(rows), 'row')} and a blue header row reading {_quote(page, header)}.")
        s.append("The rows read " + "; ".join(_quote(page, ln) for ln in rows) + ".")
    shapes = [x for x in page.shapes if x["shape"] in ("circle", "square", "triangle")]
    if page.kind == "sign":
        s.append(f"The plate itself is {page.shapes[0]['color']}, with a {page.background} margin around it.")
    elif shapes:
        by = collections.Counter(x["shape"] for x in shapes)
        s.append("Along the bottom there " + ("is " if len(shapes) == 1 else "are ")
                 + ", ".join(f"{_count(n, k)} ({', '.join(x['color'] for x in shapes if x['shape'] == k)})"
                             for k, n in sorted(by.items())) + ".")
    s.append(f"In all: {_count(len(page.words), 'word')} on {_count(len(lines), 'line')}, "
             f"{int(page.sizes.min())} to {int(page.sizes.max())} pixels tall, {_count(len(set(page.fonts)), 'font')}.")
    if page.kind == "chart":
        s.append("The bars are coloured " + ", ".join(x["color"] for x in page.shapes) + " from left to right.")
    return " ".join(s)


def trins_qa(page: Page, caption: str, seed: int = 0) -> list[dict]:
    """QA pairs for one page: every reading and non-reading question `page_questions` supports, plus questions
    answered by the caption (the kind of page, the first line of text)."""
    qa = [{"question": q.question, "answer": q.answer} for q in page_questions(page, seed)]
    qa.append({"question": "What kind of image is this?", "answer": _NOUN[page.kind].split(" ", 1)[1]})
    first = [page.words[i] for i in range(len(page.words)) if page.lines[i] == page.lines[0]]
    qa.append({"question": "What does the first line of text say?", "answer": " ".join(first)})
    return qa


def _dump(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def write_trins(root: str | os.PathLike, num_images: int, *, seed: int = 0, kinds=KINDS,
                with_ocr: bool = True, ocr_engine: str = "oracle", **ocr_settings) -> str:
    """Render `num_images` text-rich pages into a TRINS-layout folder (see the module docstring). Returns root.

    ocr.json holds the page's true words and boxes (`ocr_engine="oracle"`) or what a real engine reads
    (`"rapidocr"`, `"tesseract"`: `jaxmm.ocr.read(image, engine, **ocr_settings)`), for no-OCR / oracle-OCR /
    real-OCR ablations (LaRA, PAPERS.md §9). Captions and QA always come from the ground truth."""
    check_positive("num_images", num_images)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        fail("kinds", f"a non-empty subset of {KINDS}", tuple(kinds))
    root = os.fspath(root)
    os.makedirs(os.path.join(root, IMAGE_DIR), exist_ok=True)
    captions, qa, ocr = {}, {}, {}
    for i in range(int(num_images)):
        page = make_page(seed * 1_000_003 + i, kinds[i % len(kinds)])
        name = f"{i:06d}.png"
        Image.fromarray(page.image).save(os.path.join(root, IMAGE_DIR, name))
        captions[name] = caption_page(page)
        qa[name] = trins_qa(page, captions[name], seed + i)
        if with_ocr and ocr_engine == "oracle":
            ocr[name] = {"words": page.words, "boxes": np.round(page.boxes, 2).tolist()}
        elif with_ocr:
            from jaxmm import ocr as ocr_lib

            res = ocr_lib.read(page.image, engine=ocr_engine, **ocr_settings)
            ocr[name] = {"words": list(res.words), "boxes": np.round(res.boxes, 2).tolist()}
    _dump(os.path.join(root, CAPTION_FILE), captions)
    _dump(os.path.join(root, QA_FILE), qa)
    if with_ocr:
        _dump(os.path.join(root, OCR_FILE), ocr)
    return root


# ------------------------------------------------------------------------------------------------ reading
class _Bad(Exception):
    def __init__(self, kind, reason):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def _read_json(path: str, required: bool):
    if not os.path.isfile(path):
        if required:
            raise FileNotFoundError(f"TRINS file not found: {path}")
        return None
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object keyed by image file name, got {type(data).__name__}")
    return data


def _check_caption(value):
    if not isinstance(value, str) or not value.strip():
        raise _Bad("bad_caption", f"caption must be a non-empty string, got {value!r:.60}")


def _check_qa(value):
    if not isinstance(value, list) or not value:
        raise _Bad("bad_qa", f"QA must be a non-empty list of {{'question', 'answer'}} objects, got {value!r:.60}")
    for j, pair in enumerate(value):
        if not isinstance(pair, dict) or not all(isinstance(pair.get(k), str) and pair.get(k).strip()
                                                 for k in ("question", "answer")):
            raise _Bad("bad_qa", f"QA pair {j} must have non-empty string 'question' and 'answer', got {pair!r:.80}")


def _check_ocr(value):
    if not isinstance(value, dict) or not isinstance(value.get("words"), list):
        raise _Bad("bad_ocr", f"OCR entry must be {{'words': [...], 'boxes': [...]}}, got {value!r:.60}")
    boxes = np.asarray(value.get("boxes", []), np.float64)
    if boxes.size and (boxes.ndim != 3 or boxes.shape[1:] != (4, 2) or len(boxes) != len(value["words"])):
        raise _Bad("bad_ocr", f"OCR boxes must be [N, 4, 2] with N = {len(value['words'])} words, got shape "
                              f"{boxes.shape}")


class TrinsSource:
    """Random-access source over a TRINS-layout folder.

    task="vqa": one example per QA pair, conversations [("user", "<image>\\n" + question), ("assistant", answer)];
    task="caption": one example per captioned image, the prompt `CAPTION_PROMPT` and the caption as answer.
    Examples: {"id", "image" uint8 [image_size, image_size, 3] (padded/resized as in llava_json), "has_image",
    "conversations", "question", "answer", "kind" (= task), "ocr_text" (the OCR words joined by spaces; "" without ocr.json)}.
    """

    def __init__(self, root: str | os.PathLike, *, task: str = "vqa", image_size: int = 64, resize: str = "pad",
                 skip_bad_records: bool = False, max_aspect_ratio: float = MAX_ASPECT_RATIO,
                 max_pixels: int = MAX_PIXELS):
        if task not in ("vqa", "caption"):
            fail("task", "'vqa' or 'caption'", repr(task))
        check_positive("image_size", image_size)
        self.root, self.task = os.fspath(root), task
        self.image_size, self.resize = int(image_size), resize
        self.max_aspect_ratio, self.max_pixels = max_aspect_ratio, max_pixels
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"TRINS folder not found: {self.root}")
        file = CAPTION_FILE if task == "caption" else QA_FILE
        self.json_path = os.path.join(self.root, file)
        data = _read_json(self.json_path, required=True)
        if not data:
            raise ValueError(f"{self.json_path}: no records")
        ocr = _read_json(os.path.join(self.root, OCR_FILE), required=False) or {}
        self.examples, self.bad_records = [], []
        for i, (name, value) in enumerate(data.items()):
            try:
                path = self._check_image(name)
                (_check_caption if task == "caption" else _check_qa)(value)
                words = []
                if name in ocr:
                    _check_ocr(ocr[name])
                    words = list(ocr[name]["words"])
            except _Bad as bad:
                self.bad_records.append((i, name, bad.kind, bad.reason))
                continue
            pairs = [{"question": CAPTION_PROMPT, "answer": value}] if task == "caption" else value
            self.examples += [(name, path, p["question"], p["answer"], words) for p in pairs]
        self.skipped = dict(collections.Counter(b[2] for b in self.bad_records))
        if self.bad_records and (not skip_bad_records or not self.examples):
            i, name, kind, reason = self.bad_records[0]
            more = f" [{len(self.bad_records)} of {len(data)} records are bad ({self.skipped})" + \
                ("; skip_bad_records=True drops them]" if not skip_bad_records else "]")
            if kind == "image_missing":
                raise FileNotFoundError(f"{self.json_path}: record {i} ({name!r}): {reason}{more}")
            raise BadRecordError(self.json_path, i, name, kind, reason, more)
        if self.bad_records:
            warnings.warn(f"{self.json_path}: skipped {len(self.bad_records)} bad records ({self.skipped})")

    @property
    def num_skipped(self) -> int:
        """Bad records dropped (with `skipped`: reason kind -> count, reported by the trainer's summary)."""
        return len(self.bad_records)

    def _check_image(self, name) -> str:
        if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in name.split("/"):
            raise _Bad("bad_name", f"key must be an image file name relative to {IMAGE_DIR}/, got {name!r}")
        path = os.path.join(self.root, IMAGE_DIR, name)
        if not os.path.isfile(path):
            raise _Bad("image_missing", f"image file not found: {path}")
        try:
            with Image.open(path) as im:
                size = im.size
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
            raise _Bad("image_unreadable", f"cannot read image {path}: {type(e).__name__}: {e}") from None
        problem = size_problem(*size, self.max_aspect_ratio, self.max_pixels)
        if problem:
            raise _Bad("image_size", f"{path}: {problem}")
        return path

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        name, path, question, answer, words = self.examples[int(index)]
        image = load_image(path, self.image_size, self.resize, max_aspect_ratio=self.max_aspect_ratio,
                           max_pixels=self.max_pixels)
        return {"id": name, "image": image, "has_image": np.int32(1),
                "conversations": [("user", "<image>\n" + question), ("assistant", answer)],
                "question": question, "answer": answer, "kind": self.task, "ocr_text": " ".join(words)}


def export_llava(root: str | os.PathLike, json_path: str | os.PathLike, *, tasks=("caption", "vqa")) -> str:
    """Write the folder's captions and/or QA as LLaVA conversation JSON, one record per image (the caption
    turn first, then every QA pair as further turns), with `image` relative to `root`:
    `LlavaJsonSource(json_path, root)` reads it. Returns json_path."""
    bad = [t for t in tasks if t not in ("caption", "vqa")]
    if bad or not tasks:
        fail("tasks", "a non-empty subset of ('caption', 'vqa')", tuple(tasks))
    root = os.fspath(root)
    turns = collections.defaultdict(list)
    for task in ("caption", "vqa"):
        if task in tasks:
            for ex in TrinsSource(root, task=task).examples:
                turns[ex[0]].append((ex[2], ex[3]))
    records = []
    for name, pairs in turns.items():
        conv = []
        for j, (q, a) in enumerate(pairs):
            conv += [{"from": "human", "value": ("<image>\n" if j == 0 else "") + q}, {"from": "gpt", "value": a}]
        records.append({"id": os.path.splitext(name)[0], "image": f"{IMAGE_DIR}/{name}", "conversations": conv})
    json_path = os.fspath(json_path)
    _dump(json_path, records)
    return json_path



def word_corpus(pages: int = 256, *, seed: int = 0, kinds=KINDS):
    """Texts of `pages` generated TRINS pages (each page's words, its caption, every question + answer; then the
    prompt words), the corpus of LaRA's word-level tokenizer (`jaxmm.data.tokenizers.train_word_bpe`: every word
    of the generator's vocabulary becomes one token wherever it stands, so copying an answer word out of the OCR
    block is one step per word instead of one per byte)."""
    check_positive("pages", pages)
    rng = np.random.default_rng([seed, 11])
    for _ in range(pages):
        page = make_page(int(rng.integers(2**31)), kinds[int(rng.integers(len(kinds)))])
        cap = caption_page(page)
        yield " ".join(page.words)
        yield cap
        for qa in trins_qa(page, cap, int(rng.integers(2**31))):
            yield qa["question"] + " " + qa["answer"]
    yield "USER: ASSISTANT: SYSTEM: OCR: " + CAPTION_PROMPT
