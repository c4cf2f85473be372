"""DocSynthv2 (arXiv 2406.08354, PAPERS.md §8): documents as flat token sequences, procedural documents, loaders.

A document is `<sos> c₁ x₁ y₁ w₁ h₁ t₁ … cₙ xₙ yₙ wₙ hₙ tₙ <eos>` (layout-only: no tᵢ):
  c       a category token;
  x y w h geometry tokens, the box (top-left corner, size) quantised to `bins` steps of the page on each axis:
          x, y in 0..bins-1 (floor), w, h in 1..bins (round), with x + w <= bins and y + h <= bins (clipped);
  t       the element's text: one or more word tokens (`<unk>` for a word outside the vocabulary), or `<na>`;
  <na>    a missing attribute (no text, or a geometry value the source does not give).
Geometry values share one set of tokens `0..bins` (their slot says which attribute they are). A text slot ends
where the next category or `<eos>` begins, so no end-of-text token is needed. Element order: reading order
(`reading_order`, a recursive XY-cut), applied by `serialize`.
The paper does not publish its tokenisation (word-level text, shared geometry tokens, the XY-cut order are
**[reconstruction]** choices of ours).

Data: `procedural_document(seed)` (multi-column pages of titles, paragraphs, lists, figures, tables on a
32 x 32 grid whose text length sets the text boxes' heights: `text_height`), `load_coco_layouts` (PubLayNet's
COCO-format layout annotations), `load_crello_json` (Crello-style design JSON). Decoding constraints:
`allowed_tokens(prefix, vocab, ...)`, a pure function of the prefix; the sampler is in
`jaxmm.data.docsynth_decode`. Rendering: `render_layout`.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Sequence

import numpy as np

from jaxmm.checks import check_positive, fail

CATEGORIES = ("title", "text", "list", "table", "figure")  # PubLayNet's five, in our order
TEXT_CATEGORIES = ("title", "text", "list")
SPECIALS = ("<pad>", "<sos>", "<eos>", "<na>", "<unk>")
GRID = 32  # the procedural pages' grid (units per page side)
WORDS = tuple("""
apple river stone cloud maple orange window garden silver market planet forest island summer winter autumn
bridge candle dragon engine falcon guitar harbor jacket kettle lemon meadow needle ocean pepper quartz rocket
saddle tiger violet walnut yellow zebra anchor basket castle desert eagle feather glacier hammer jungle kitten
ladder mirror nectar orchid parrot rabbit sunset timber valley wagon canyon copper dinner echo fabric galaxy
honey indigo jewel lantern marble noodle oyster pillow radar shadow thunder velvet willow amber breeze cotton
dune ember frost harvest ivory lotus mosaic nova pearl quest ripple spruce art map sky sea ink key box fig
""".split())


@dataclasses.dataclass(frozen=True)
class Element:
    """category; box (x, y, w, h) as fractions of the page (top-left corner and size; an entry None = missing);
    text: a string of words or None (missing)."""
    category: str
    box: tuple
    text: str | None = None


@dataclasses.dataclass(frozen=True)
class Layout:
    """Elements of one page; aspect = page height / width (for rendering only)."""
    elements: tuple
    aspect: float = 1.0


class DocVocab:
    """Token ids: the SPECIALS (pad 0, sos 1, eos 2, na 3, unk 4), one per category, geometry values 0..bins,
    then the words."""

    def __init__(self, categories: Sequence[str] = CATEGORIES, bins: int = GRID, words: Sequence[str] = WORDS):
        check_positive("bins", bins)
        if len(set(categories)) != len(categories) or not categories:
            fail("categories", "a non-empty sequence of distinct names", categories)
        self.categories, self.bins, self.words = tuple(categories), int(bins), tuple(words)
        self.pad, self.sos, self.eos, self.na, self.unk = range(5)
        self.cat0 = len(SPECIALS)
        self.geo0 = self.cat0 + len(self.categories)
        self.word0 = self.geo0 + self.bins + 1
        self.size = self.word0 + len(self.words)
        self._word_id = {w: self.word0 + i for i, w in enumerate(self.words)}

    def category_id(self, name: str) -> int:
        if name not in self.categories:
            fail("category", f"one of {self.categories}", repr(name))
        return self.cat0 + self.categories.index(name)

    def word_id(self, word: str) -> int:
        return self._word_id.get(word, self.unk)

    def kind(self, token: int) -> str:
        """'pad' | 'sos' | 'eos' | 'na' | 'unk' | 'category' | 'geometry' | 'word'."""
        if 0 <= token < self.cat0:
            return SPECIALS[token][1:-1]
        if token < self.geo0:
            return "category"
        if token < self.word0:
            return "geometry"
        if token < self.size:
            return "word"
        fail("token", f"an id in [0, {self.size})", token)

    def token_str(self, token: int) -> str:
        k = self.kind(token)
        if k == "category":
            return self.categories[token - self.cat0]
        if k == "geometry":
            return str(token - self.geo0)
        if k == "word":
            return self.words[token - self.word0]
        return SPECIALS[token]


# --------------------------------------------------------------------------------------------- geometry
def quantize_box(box, bins: int) -> tuple:
    """(x, y, w, h) page fractions -> ints: x, y = floor(v·bins) in [0, bins-1]; w, h = round(v·bins) in
    [1, bins - x] (resp. y). None stays None. quantize_box(dequantize_box(q)) == q for every valid q."""
    x, y, w, h = box
    out = []
    for pos, size in ((x, w), (y, h)):
        p = None if pos is None else int(min(max(math.floor(pos * bins + 1e-6), 0), bins - 1))
        s = None if size is None else int(min(max(round(size * bins), 1), bins - (p or 0)))
        out.append((p, s))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def dequantize_box(q, bins: int) -> tuple:
    return tuple(None if v is None else v / bins for v in q)


def quantize_layout(layout: Layout, bins: int) -> Layout:
    """The layout its serialisation stands for: boxes snapped to the bins, text reduced to its words."""
    els = tuple(Element(e.category, dequantize_box(quantize_box(e.box, bins), bins), _norm_text(e.text))
                for e in layout.elements)
    return Layout(els, layout.aspect)


def _norm_text(text):
    if text is None:
        return None
    words = str(text).split()
    return " ".join(words) if words else None


def reading_order(boxes: Sequence[tuple]) -> list[int]:
    """Indices of `boxes` (x, y, w, h) in reading order by recursive XY-cut: at each level split the elements
    at the widest empty gaps between their projections on y (rows) or x (columns; a tie goes to rows), order
    the parts top-to-bottom / left-to-right and recurse; a group with no gap is read by (y, x). Boxes with a
    missing coordinate come last, in their given order. [reconstruction: the paper states no order rule]"""
    known = [i for i, b in enumerate(boxes) if None not in b]
    missing = [i for i, b in enumerate(boxes) if None in b]

    def gaps(idx, axis):  # -> (widest gap, the parts split at every gap that wide) along axis (0: x, 1: y)
        spans = sorted(idx, key=lambda i: boxes[i][axis])
        parts, cuts, end = [[spans[0]]], [], boxes[spans[0]][axis] + boxes[spans[0]][axis + 2]
        for i in spans[1:]:
            start = boxes[i][axis]
            if start >= end - 1e-9:
                cuts.append(start - end)
                parts.append([i])
            else:
                parts[-1].append(i)
            end = max(end, start + boxes[i][axis + 2])
        best = max(cuts, default=-1.0)
        groups = [parts[0]]
        for gap, part in zip(cuts, parts[1:]):
            if gap >= best - 1e-9:
                groups.append(part)
            else:
                groups[-1] = groups[-1] + part
        return best, groups

    def cut(idx):
        if len(idx) <= 1:
            return list(idx)
        gy, rows = gaps(idx, 1)
        gx, cols = gaps(idx, 0)
        if len(rows) > 1 and gy >= gx:
            return [j for g in rows for j in cut(g)]
        if len(cols) > 1:
            return [j for g in cols for j in cut(g)]
        return sorted(idx, key=lambda i: (boxes[i][1], boxes[i][0]))

    return cut(known) + missing


# ------------------------------------------------------------------------------------------ serialisation
def serialize(layout: Layout, vocab: DocVocab, *, with_text: bool = True, order: bool = True) -> list[int]:
    """Layout -> token ids `<sos> (c x y w h [t])* <eos>` (elements in reading order unless order=False)."""
    els = list(layout.elements)
    if order:
        els = [els[i] for i in reading_order([e.box for e in els])]
    ids = [vocab.sos]
    for e in els:
        if len(e.box) != 4:
            fail("box", "(x, y, w, h)", e.box)
        ids.append(vocab.category_id(e.category))
        ids += [vocab.na if v is None else vocab.geo0 + v for v in quantize_box(e.box, vocab.bins)]
        if with_text:
            text = _norm_text(e.text)
            ids += [vocab.na] if text is None else [vocab.word_id(w) for w in text.split()]
    return ids + [vocab.eos]


def parse(ids: Sequence[int], vocab: DocVocab, *, with_text: bool = True, aspect: float = 1.0) -> Layout:
    """Token ids (trailing pads allowed) -> Layout; the inverse of `serialize` on quantised layouts. Raises
    ValueError naming the position of the first token that breaks the grammar or leaves the page."""
    ids = [int(t) for t in ids]
    while ids and ids[-1] == vocab.pad:
        ids.pop()
    if not ids or ids[0] != vocab.sos:
        raise ValueError(f"ids: expected to start with <sos> ({vocab.sos}), got {ids[:1]}")
    if ids[-1] != vocab.eos:
        raise ValueError(f"ids: expected to end with <eos> ({vocab.eos}), got {ids[-1:]}")
    els, i, body = [], 1, ids[:-1]
    while i < len(body):
        c = body[i]
        if vocab.kind(c) != "category":
            raise ValueError(f"ids[{i}]: expected a category, got {vocab.token_str(c)!r}")
        geo = body[i + 1:i + 5]
        if len(geo) < 4 or any(vocab.kind(g) not in ("geometry", "na") for g in geo):
            raise ValueError(f"ids[{i + 1}:{i + 5}]: expected 4 geometry tokens, got "
                             f"{[vocab.token_str(g) for g in geo]}")
        q = [None if g == vocab.na else g - vocab.geo0 for g in geo]
        x, y, w, h = q
        for name, pos, size in (("x/w", x, w), ("y/h", y, h)):
            if (pos is not None and pos >= vocab.bins) or (size is not None and size < 1) or \
                    (pos is not None and size is not None and pos + size > vocab.bins):
                raise ValueError(f"ids[{i + 1}:{i + 5}]: box {q} leaves the page ({name}, bins {vocab.bins})")
        i += 5
        text = None
        if with_text:
            j = i
            while j < len(body) and vocab.kind(body[j]) in ("word", "unk", "na"):
                j += 1
            slot = body[i:j]
            if not slot or (vocab.na in slot and slot != [vocab.na]):
                raise ValueError(f"ids[{i}:{j}]: expected a text slot (<na> or words), got "
                                 f"{[vocab.token_str(t) for t in slot]}")
            text = None if slot == [vocab.na] else " ".join(vocab.token_str(t) for t in slot)
            i = j
        els.append(Element(vocab.categories[c - vocab.cat0], dequantize_box(tuple(q), vocab.bins), text))
    return Layout(tuple(els), aspect)


def allowed_tokens(prefix: Sequence[int], vocab: DocVocab, *, with_text: bool = True, max_length: int = 256,
                   max_words: int = 16, max_elements: int = 32, categories: Sequence[str] | None = None) -> np.ndarray:
    """The constrained-decoding mask: bool [vocab.size], the tokens that may follow `prefix` (a valid prefix
    starting with <sos>; empty: only <sos>). Geometry tokens only in geometry slots and only values that keep the
    box inside the page; words / <na> only in text slots (at most max_words words; <na> alone); a category or
    <eos> where an element may start (<eos> after >= 1 element); room is kept so that the sequence can close with
    <eos> within max_length. `categories`: category-conditioned mode, element i must have categories[i] and
    <eos> comes after exactly len(categories) elements. After <eos>: only <pad>. A pure function of the prefix."""
    v, b = vocab, vocab.bins
    mask = np.zeros(v.size, bool)
    prefix = [int(t) for t in prefix]
    if not prefix:
        mask[v.sos] = True
        return mask
    if v.eos in prefix:
        mask[v.pad] = True
        return mask
    elem = 6 if with_text else 5
    n_forced = None if categories is None else len(categories)
    # walk the prefix: elements started, slot within the current element, its geometry, words in its text
    n, slot, geo, words, na_text = 0, None, [], 0, False
    for t in prefix[1:]:
        if v.kind(t) == "category":
            n, slot, geo, words, na_text = n + 1, 1, [], 0, False
        elif slot is not None and slot <= 4:
            geo.append(None if t == v.na else t - v.geo0)
            slot += 1
        else:
            words += t != v.na
            na_text = na_text or t == v.na
            slot += 1
    length = len(prefix)

    def need_after(started):  # tokens still required after `started` elements: forced elements + <eos>
        return (max(0, n_forced - started) * elem if n_forced is not None else 0) + 1

    def element_start():
        if (n_forced is None and n < max_elements) or (n_forced is not None and n < n_forced):
            if length + elem + need_after(n + 1) <= max_length:
                ids = [v.category_id(categories[n])] if n_forced is not None else range(v.cat0, v.geo0)
                mask[list(ids)] = True
        if n >= 1 and (n_forced is None or n == n_forced):
            mask[v.eos] = True

    if slot is None:  # right after <sos>
        element_start()
    elif slot in (1, 2):  # x, y
        mask[v.geo0:v.geo0 + b] = True
    elif slot in (3, 4):  # w, h: 1 .. bins - position
        pos = geo[slot - 3]
        mask[v.geo0 + 1:v.geo0 + b - (pos or 0) + 1] = True
    elif not with_text:
        element_start()
    elif slot == 5:  # the text slot's first token
        mask[v.na] = True
        mask[v.unk] = True
        mask[v.word0:] = True
    else:
        if not na_text and words < max_words and length + 1 + need_after(n) <= max_length:
            mask[v.unk] = True
            mask[v.word0:] = True
        element_start()
    return mask


# --------------------------------------------------------------------------------------- procedural pages
def chars_per_unit(category: str) -> int:
    """Characters per grid unit of width: 2 for body text, 1 for titles (twice the font size)."""
    return 1 if category == "title" else 2


def wrap_lines(text: str, width_units: int, category: str) -> int:
    """Greedy word wrap of `text` into lines of chars_per_unit·width characters: the number of lines."""
    cap = max(1, chars_per_unit(category) * width_units)
    lines, used = 1, 0
    for w in text.split():
        need = len(w) if used == 0 else used + 1 + len(w)
        if used and need > cap:
            lines, used = lines + 1, len(w)
        else:
            used = need
    return lines


def text_height(category: str, text: str, width_units: int) -> int:
    """The grid height the text needs: title 2 units a line, paragraph 1 a line, list 1 per item (one word
    each). This is the rule by which text determines geometry in the procedural pages."""
    if category == "list":
        return len(text.split())
    return wrap_lines(text, width_units, category) * (2 if category == "title" else 1)


def procedural_document(seed: int, *, max_elements: int = 8, max_words: int = 10, aspect: float = 1.294) -> Layout:
    """A page on the GRID x GRID grid: margin 2; a title (2-5 words) across the top; 1-3 columns (widths 28,
    13, 8 with gaps of 2) filled top-down with paragraphs (3..max_words words), lists (2-5 one-word items),
    figures (no text, 4-9 high) and tables (no text, 3-7 high), 1 unit apart, until the page or max_elements
    is full. Text boxes are exactly as high as their text needs (`text_height`)."""
    rng = np.random.default_rng(seed)
    g, m = GRID, 2
    words = lambda k: " ".join(rng.choice(WORDS, size=k))  # noqa: E731
    els = []
    title = words(int(rng.integers(2, 6)))
    th = text_height("title", title, g - 2 * m)
    els.append(Element("title", (m / g, m / g, (g - 2 * m) / g, th / g), title))
    top = m + th + 2
    ncol = int(rng.integers(1, 4))
    width = {1: 28, 2: 13, 3: 8}[ncol]
    for c in range(ncol):
        y = top
        x = m + c * (width + 2)
        while len(els) < max_elements:
            kind = rng.choice(["text", "list", "figure", "table"], p=[0.5, 0.15, 0.2, 0.15])
            text = None
            if kind == "text":
                text = words(int(rng.integers(3, max_words + 1)))
            elif kind == "list":
                text = words(int(rng.integers(2, 6)))
            h = text_height(kind, text, width) if text else int(rng.integers(4, 10) if kind == "figure"
                                                                 else rng.integers(3, 8))
            if y + h > g - m:
                break
            els.append(Element(str(kind), (x / g, y / g, width / g, h / g), text))
            y += h + 1
    return Layout(tuple(els), aspect)


# ---------------------------------------------------------------------------------------------- loaders
def load_coco_layouts(path: str, *, categories: dict | None = None) -> list[Layout]:
    """COCO-format layout annotations (PubLayNet's train.json / val.json): images (id, width, height),
    annotations (image_id, category_id, bbox [x, y, w, h] in pixels), categories (id, name). One Layout per
    image, boxes as page fractions, text None, elements in reading order. `categories`: {coco name: our name}
    (default: names lower-cased). Images without annotations are skipped."""
    with open(path) as f:
        data = json.load(f)
    for key in ("images", "annotations", "categories"):
        if key not in data:
            fail(path, f"a COCO annotation file with {key!r}", sorted(data))
    names = {c["id"]: c["name"] for c in data["categories"]}
    rename = categories or {n: n.lower() for n in names.values()}
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    out = []
    for im in data["images"]:
        anns = by_image.get(im["id"], [])
        if not anns:
            continue
        W, H = float(im["width"]), float(im["height"])
        els = [Element(rename[names[a["category_id"]]], _clip_box(a["bbox"], W, H), None) for a in anns]
        out.append(Layout(tuple(els[i] for i in reading_order([e.box for e in els])), H / W))
    return out


def load_crello_json(path: str, *, units: str = "pixels", types: dict | None = None) -> list[Layout]:
    """Crello-style design JSON: a list of documents (or {"documents": [...]}), each with canvas_width,
    canvas_height and elements, either a list of records {type, left, top, width, height, text?} or the
    columnar form Crello's Hugging Face release uses ({"type": [...], "left": [...], ...}). units: "pixels"
    (divide by the canvas size) or "normalized" (already page fractions). Text "" or absent -> None (missing).
    `types`: {crello type: our category} (default: the type as it is). Boxes are clipped to the canvas."""
    if units not in ("pixels", "normalized"):
        fail("units", "'pixels' or 'normalized'", repr(units))
    with open(path) as f:
        data = json.load(f)
    docs = data["documents"] if isinstance(data, dict) else data
    out = []
    for k, doc in enumerate(docs):
        els = doc.get("elements")
        if els is None:
            fail(f"{path}: document {k}", "an 'elements' entry", sorted(doc))
        if isinstance(els, dict):  # columnar
            n = len(els["type"])
            els = [{key: col[i] for key, col in els.items()} for i in range(n)]
        W, H = float(doc["canvas_width"]), float(doc["canvas_height"])
        sx, sy = (W, H) if units == "pixels" else (1.0, 1.0)
        rows = []
        for e in els:
            cat = (types or {}).get(e["type"], e["type"])
            box = _clip_box([e["left"], e["top"], e["width"], e["height"]], sx, sy)
            rows.append(Element(cat, box, _norm_text(e.get("text"))))
        out.append(Layout(tuple(rows[i] for i in reading_order([r.box for r in rows])), H / W))
    return out


def _clip_box(bbox, W, H):
    x0, y0 = max(0.0, bbox[0] / W), max(0.0, bbox[1] / H)
    x1, y1 = min(1.0, (bbox[0] + bbox[2]) / W), min(1.0, (bbox[1] + bbox[3]) / H)
    return (x0, y0, max(0.0, x1 - x0), max(0.0, y1 - y0))


# --------------------------------------------------------------------------------------------- rendering
COLORS = {"title": (214, 39, 40), "text": (31, 119, 180), "list": (44, 160, 44), "table": (148, 103, 189),
          "figure": (255, 127, 14)}


def render_layout(layout: Layout, width: int = 160, font_size: int = 7) -> np.ndarray:
    """Draw a layout: each box tinted by category with its outline, its text in black wrapped inside it.
    Returns uint8 [round(width·aspect), width, 3] (write it with PIL or jaxmm.diffusion.grid.save_grid)."""
    from PIL import Image, ImageDraw, ImageFont

    from jaxmm.data.textrich import available_fonts

    height = int(round(width * layout.aspect))
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img, "RGBA")
    font = ImageFont.truetype(available_fonts()[0], font_size)
    for e in layout.elements:
        if None in e.box:
            continue
        x, y, w, h = e.box
        box = (x * width, y * height, (x + w) * width - 1, (y + h) * height - 1)
        col = COLORS.get(e.category, (127, 127, 127))
        draw.rectangle(box, fill=col + (60,), outline=col + (255,))
        if e.text:
            line, ty, cap = "", box[1] + 1, max(1, int((box[2] - box[0]) / (0.55 * font_size)))
            for word in e.text.split() + [None]:
                if word is not None and (not line or len(line) + 1 + len(word) <= cap) and e.category != "list":
                    line = f"{line} {word}".strip()
                    continue
                if line and ty + font_size <= box[3] + 2:
                    draw.text((box[0] + 2, ty), line, fill=(0, 0, 0), font=font)
                    ty += font_size + 1
                line = word or ""
    return np.asarray(img)
