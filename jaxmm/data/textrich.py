"""Text-rich pages, procedural and seeded: posters, documents, receipts, signs, charts and tables with exact
words, word quadrilaterals and reading order, and questions that do or do not need reading (issue 16.3).

    from jaxmm.data.textrich import make_page, page_questions
    page = make_page(seed=3, kind="receipt")
    page.image            # uint8 [H, W, 3], H and W in 224..1024
    page.words            # list[str], in reading order (line by line, left to right)
    page.boxes            # float32 [N, 4, 2]: each word's ink quadrilateral (x, y) in pixels, corners
                          # top-left, top-right, bottom-right, bottom-left of the upright word, rotated with the page
    page.lines            # int32 [N]: the reading-order line of each word
    page_questions(page, seed=0)   # [QA(question, answer, kind, needs_reading), ...]

A page is a deterministic function of (seed, kind, fonts). It is laid out upright (`layout_page` -> `Layout`:
elements with positions, fonts, sizes, colours), drawn (`render_layout`), then the whole page is rotated by
`rotation` degrees (0 or up to +-`max_rotation`) about its centre; each word's box is the ink box of the upright
word (PIL's text bbox, 1 px margin) with its corners rotated the same way. Text is 6..40 px (the font size, i.e.
the em height; x-height is about half of it).

Kinds:
  document  title, "Key: value" fields, paragraphs                  fields: key -> value
  receipt   shop name, item lines with right-aligned prices, TOTAL  fields: item -> price, "TOTAL" -> total
  poster    headline, sub-line, date line, coloured shapes in a strip at the bottom
  sign      1-3 big words on a coloured plate (shape "plate"), a small line under it
  chart     title, a value line, coloured bars, a label line        fields: label -> value
  table     header row + rows of numbers in a grid                  fields: "row|column" -> value

Question kinds (`page_questions`):
  reading   read_at (the word at a point given in % of width/height), key_value, price, above (the word
            directly above another), count_color (how many words are in a colour)
  no text   background (its colour), count_shapes (circles, squares, triangles or bars), shape_color
Every answer is computed from the page's ground truth (words, boxes, colours, fields, shapes), never from pixels.
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import math
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jaxmm.checks import fail

KINDS = ("document", "receipt", "poster", "sign", "chart", "table")
READING_QUESTIONS = ("read_at", "key_value", "price", "above", "count_color")
VISUAL_QUESTIONS = ("background", "count_shapes", "shape_color")
QUESTION_KINDS = READING_QUESTIONS + VISUAL_QUESTIONS
MIN_TEXT, MAX_TEXT = 6, 40
MIN_SIDE, MAX_SIDE = 224, 1024

TEXT_COLORS = {"black": (20, 20, 20), "red": (200, 20, 20), "blue": (20, 40, 190), "green": (10, 120, 30),
               "purple": (120, 20, 140), "brown": (110, 60, 10)}
BACKGROUNDS = {"white": (252, 252, 252), "cream": (250, 240, 210), "gray": (215, 215, 215),
               "light blue": (205, 225, 250), "light yellow": (252, 250, 190), "pink": (250, 215, 225)}
SHAPE_COLORS = {"red": (230, 60, 50), "blue": (50, 110, 230), "green": (60, 180, 80), "orange": (245, 150, 30),
                "purple": (150, 70, 200)}
SHAPES = ("circle", "square", "triangle")

WORDS = tuple("""
apple river stone cloud maple orange window garden silver market planet forest island summer winter autumn
bridge candle dragon engine falcon guitar harbor jacket kettle lemon meadow needle ocean pepper quartz rocket
saddle tiger violet walnut yellow zebra anchor basket castle desert eagle feather glacier hammer igloo jungle
kitten ladder mirror nectar orchid parrot quiver rabbit sunset timber umbrella valley wagon yogurt canyon
copper dinner echo fabric galaxy honey indigo jewel lantern marble noodle oyster pillow radar shadow thunder
velvet willow amber breeze cotton dune ember frost harvest ivory lotus mosaic nova pearl quest ripple spruce
""".split())
ITEMS = ("coffee", "tea", "bagel", "muffin", "salad", "soup", "juice", "pasta", "pizza", "cookie", "bread",
         "cheese", "milk", "rice", "donut", "wrap")
SHOPS = ("corner cafe", "blue bakery", "city deli", "sunny market", "harbor grill", "maple diner")
FIELD_KEYS = ("Invoice", "Date", "Account", "Order", "Phone", "Ref", "Client", "Room")
HEADERS = ("north", "south", "east", "west", "q1", "q2", "q3", "q4")
_DEFAULT_DIRS = ("/usr/share/fonts",)


def available_fonts() -> tuple[str, ...]:
    """TrueType fonts to draw with: every .ttf under /usr/share/fonts (Debian font packages; DejaVu here) whose
    name has no 'Math'/'ExtraLight', else matplotlib's bundled DejaVu Sans / Serif / Mono."""
    found = sorted(p for d in _DEFAULT_DIRS for p in glob.glob(os.path.join(d, "**", "*.ttf"), recursive=True)
                   if "Math" not in p and "ExtraLight" not in p)
    if found:
        return tuple(found)
    import matplotlib
    ttf = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
    return tuple(os.path.join(ttf, f) for f in ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf"))


@functools.lru_cache(maxsize=512)
def _font(path: str, size: int):
    return ImageFont.truetype(path, size=size)


# ------------------------------------------------------------------------------------------------ layout
@dataclasses.dataclass
class Word:
    text: str
    x: float             # left of the pen position
    baseline: float      # y of the baseline (PIL anchor "ls")
    font: str
    size: int
    color: str           # a TEXT_COLORS name, or a SHAPE_COLORS / plate colour name for text on plates
    rgb: tuple
    line: int


@dataclasses.dataclass
class Layout:
    """An upright page: everything `render_layout` draws, in drawing order (fills first, words last)."""
    kind: str
    width: int
    height: int
    background: str
    fills: list          # [(primitive "rect"|"ellipse"|"polygon"|"line", coords, rgb)]
    words: list          # [Word] in reading order
    shapes: list         # [{"shape", "color"}] the countable shapes among the fills
    fields: dict         # key -> value text
    rotation: float      # degrees, counter-clockwise


class _Builder:
    def __init__(self, rng, kind, width, height, fonts, text_size=None):
        self.rng, self.kind, self.w, self.h, self.fonts = rng, kind, width, height, fonts
        self.text_size = text_size
        self.words, self.fills, self.shapes, self.fields, self.line = [], [], [], {}, 0
        self.font = fonts[int(rng.integers(len(fonts)))]
        self.title_font = fonts[int(rng.integers(len(fonts)))]

    def pick(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def size(self, lo, hi):
        drawn = int(self.rng.integers(max(MIN_TEXT, lo), min(MAX_TEXT, hi) + 1))   # drawn either way: same stream
        return drawn if self.text_size is None else self.text_size

    def width_of(self, text, font, size):
        return _font(font, size).getlength(text)

    def put(self, texts, x, baseline, *, size, font=None, color="black", rgb=None, align="left", right=None):
        """One reading-order line of words starting at x (align="left"), centred on x ("center") or ending at
        `right` ("right"). Returns the line's advance width."""
        font = font or self.font
        space = self.width_of(" ", font, size)
        total = sum(self.width_of(t, font, size) for t in texts) + space * (len(texts) - 1)
        if align == "center":
            x = x - total / 2
        elif align == "right":
            x = right - total
        for t in texts:
            self.words.append(Word(t, float(x), float(baseline), font, int(size), color,
                                   tuple(rgb or TEXT_COLORS[color]), self.line))
            x += self.width_of(t, font, size) + space
        self.line += 1
        return total

    def fits(self, texts, size, font=None, room=None):
        font = font or self.font
        w = sum(self.width_of(t, font, size) for t in texts) + self.width_of(" ", font, size) * (len(texts) - 1)
        return w <= (room if room is not None else self.w - 16)

    def text_color(self, p_color=0.3):
        return self.pick(list(TEXT_COLORS)[1:]) if self.rng.random() < p_color else "black"


def _document(b: _Builder):
    m = int(b.w * 0.06) + 4
    s_title = b.size(18, 40)
    words = [b.pick(WORDS).capitalize() for _ in range(int(b.rng.integers(1, 4)))]
    while not b.fits(words, s_title, b.title_font, b.w - 2 * m) and s_title > 12:
        s_title -= 2
    y = m + s_title
    b.put(words, m, y, size=s_title, font=b.title_font, color=b.text_color(0.5))
    body = b.size(6, 16)
    y += int(body * 2.2)
    for key in b.rng.choice(FIELD_KEYS, size=int(b.rng.integers(2, 5)), replace=False):
        value = str(int(b.rng.integers(100, 99999)))
        b.put([f"{key}:", value], m, y, size=body, color="black")
        b.fields[str(key)] = value
        y += int(body * 1.6)
    y += body
    while y + body < b.h - m and len(b.words) < 400:
        line = []
        while True:
            word = b.pick(WORDS)
            if not b.fits(line + [word], body, room=b.w - 2 * m):
                break
            line.append(word)
        color = b.text_color(0.15)
        b.put(line, m, y, size=body, color=color)
        y += int(body * 1.5) + 1


def _receipt(b: _Builder):
    m = int(b.w * 0.06) + 4
    s = b.size(8, 16)
    shop = b.pick(SHOPS).upper().split()
    s_shop = min(MAX_TEXT, int(s * 1.4))      # the cap matters only with a forced text_size (s <= 16 otherwise)
    b.put(shop, b.w / 2, m + s_shop, size=s_shop, align="center", font=b.title_font)
    y, total = m + s_shop + 2 * s, 0
    for item in b.rng.choice(ITEMS, size=int(b.rng.integers(3, 8)), replace=False):
        cents = int(b.rng.integers(50, 2000))
        price = f"{cents // 100}.{cents % 100:02d}"
        total += cents
        b.put([str(item)], m, y, size=s)
        b.line -= 1                           # the price belongs to the item's line
        b.put([price], 0, y, size=s, align="right", right=b.w - m)
        b.fields[str(item)] = price
        y += int(s * 1.6)
        if y > b.h - m - 3 * s:
            break
    total_text = f"{total // 100}.{total % 100:02d}"
    y += s
    b.put(["TOTAL"], m, y, size=s, color="black")
    b.line -= 1
    b.put([total_text], 0, y, size=s, align="right", right=b.w - m)
    b.fields["TOTAL"] = total_text


def _shape_strip(b: _Builder, top: float, bottom: float):
    n = int(b.rng.integers(1, 6))
    cell = b.w / n
    r = max(4.0, min(cell * 0.35, (bottom - top) * 0.4))
    for i in range(n):
        shape, color = b.pick(SHAPES), b.pick(list(SHAPE_COLORS))
        cx, cy = cell * (i + 0.5), (top + bottom) / 2
        if shape == "circle":
            b.fills.append(("ellipse", [cx - r, cy - r, cx + r, cy + r], SHAPE_COLORS[color]))
        elif shape == "square":
            b.fills.append(("rect", [cx - r, cy - r, cx + r, cy + r], SHAPE_COLORS[color]))
        else:
            b.fills.append(("polygon", [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], SHAPE_COLORS[color]))
        b.shapes.append({"shape": shape, "color": color})


def _poster(b: _Builder):
    m = int(b.w * 0.06) + 4
    head = [b.pick(WORDS).upper() for _ in range(int(b.rng.integers(1, 3)))]
    s = b.size(24, 40)
    while not b.fits(head, s, b.title_font, b.w - 2 * m) and s > 12:
        s -= 2
    y = m + s
    b.put(head, b.w / 2, y, size=s, font=b.title_font, color=b.text_color(0.7), align="center")
    sub = [b.pick(WORDS) for _ in range(int(b.rng.integers(2, 6)))]
    s2 = b.size(10, 20)
    while not b.fits(sub, s2, room=b.w - 2 * m) and s2 > 6:
        s2 -= 1
    y += int(s2 * 2.5)
    b.put(sub, b.w / 2, y, size=s2, color=b.text_color(0.3), align="center")
    s3 = b.size(6, 14)
    y += int(s3 * 2.5)
    day = f"{int(b.rng.integers(1, 29))}/{int(b.rng.integers(1, 13))}"
    b.put(["on", day, "at", b.pick(WORDS)], b.w / 2, y, size=s3, align="center")
    _shape_strip(b, y + s3 * 2, b.h - m)


def _sign(b: _Builder):
    plate_color = b.pick(list(SHAPE_COLORS))
    m = int(min(b.w, b.h) * 0.08)
    b.fills.append(("rect", [m, m, b.w - m, b.h - m], SHAPE_COLORS[plate_color]))
    b.shapes.append({"shape": "plate", "color": plate_color})
    words = [b.pick(WORDS).upper() for _ in range(int(b.rng.integers(1, 4)))]
    s = b.size(20, 40)
    while not b.fits(words, s, b.title_font, b.w - 2 * m - 16) and s > 8:
        s -= 2
    b.put(words, b.w / 2, b.h / 2, size=s, font=b.title_font, color="white", rgb=(255, 255, 255), align="center")
    small = b.size(6, 10)
    b.put([b.pick(WORDS), str(int(b.rng.integers(1, 100)))], b.w / 2, b.h / 2 + s + small, size=small,
          color="white", rgb=(255, 255, 255), align="center")


def _chart(b: _Builder):
    m = int(b.w * 0.06) + 4
    s_title = b.size(12, 24)
    title = [b.pick(WORDS).capitalize() for _ in range(int(b.rng.integers(1, 3)))]
    b.put(title, b.w / 2, m + s_title, size=s_title, font=b.title_font, align="center")
    n = int(b.rng.integers(3, 7))
    labels = [str(w) for w in b.rng.choice(WORDS, size=n, replace=False)]
    s = b.size(6, 14)
    while not all(b.fits([t], s, room=(b.w - 2 * m) / n - 4) for t in labels) and s > 6:
        s -= 1
    values = [int(v) for v in b.rng.integers(1, 100, size=n)]
    cell = (b.w - 2 * m) / n
    top, bottom = m + s_title + 3 * s, b.h - m - 2 * s
    for i, v in enumerate(values):       # the value line, above the plot area
        b.put([str(v)], m + cell * (i + 0.5), top - s // 2, size=s, align="center")
        b.line -= 1
    b.line += 1
    for i, v in enumerate(values):
        color = b.pick(list(SHAPE_COLORS))
        x0 = m + cell * i + cell * 0.2
        b.fills.append(("rect", [x0, bottom - (bottom - top - s) * v / 100, x0 + cell * 0.6, bottom],
                        SHAPE_COLORS[color]))
        b.shapes.append({"shape": "bar", "color": color})
        b.fields[labels[i]] = str(v)
    for i, t in enumerate(labels):       # the label line
        b.put([t], m + cell * (i + 0.5), bottom + int(s * 1.3), size=s, align="center")
        b.line -= 1
    b.line += 1


def _table(b: _Builder):
    m = int(b.w * 0.05) + 4
    cols = [str(c) for c in b.rng.choice(HEADERS, size=int(b.rng.integers(2, 5)), replace=False)]
    rows = [str(r) for r in b.rng.choice(WORDS, size=int(b.rng.integers(3, 7)), replace=False)]
    ncol = len(cols) + 1
    cw = (b.w - 2 * m) / ncol
    s = b.size(6, 18)
    while not all(b.fits([t], s, room=cw - 6) for t in rows + cols + ["9999"]) and s > 6:
        s -= 1
    rh = max(int(s * 1.8), (b.h - 2 * m) // (len(rows) + 2))
    rh = min(rh, int(s * 3))
    for r in range(len(rows) + 2):       # grid lines
        b.fills.append(("line", [m, m + r * rh, m + ncol * cw, m + r * rh], (90, 90, 90)))
    for c in range(ncol + 1):
        b.fills.append(("line", [m + c * cw, m, m + c * cw, m + (len(rows) + 1) * rh], (90, 90, 90)))
    base = lambda r: m + r * rh + (rh + s * 0.7) / 2          # noqa: E731  (baseline of row r)
    for c, name in enumerate(cols):
        b.put([name], m + (c + 1) * cw + 4, base(0), size=s, color="blue")
        b.line -= 1
    b.line += 1
    for r, row in enumerate(rows, 1):
        b.put([row], m + 4, base(r), size=s)
        b.line -= 1
        for c, name in enumerate(cols):
            value = str(int(b.rng.integers(0, 10000)))
            b.put([value], m + (c + 1) * cw + 4, base(r), size=s)
            b.line -= 1
            b.fields[f"{row}|{name}"] = value
        b.line += 1


_BUILD = {"document": _document, "receipt": _receipt, "poster": _poster, "sign": _sign, "chart": _chart,
          "table": _table}
_SIZES = {"document": ((400, 1024), (1.2, 1.42)), "receipt": ((224, 400), (1.6, 2.6)),
          "poster": ((300, 1024), (1.0, 1.4)), "sign": ((224, 512), (0.5, 0.8)),
          "chart": ((320, 800), (0.6, 0.9)), "table": ((300, 1024), (0.5, 1.0))}


def layout_page(seed: int, kind: str | None = None, *, fonts: Sequence[str] | None = None,
                max_rotation: float = 4.0, text_size: int | None = None, rotation: float | None = None) -> Layout:
    """The upright layout of page `seed` (kind drawn from KINDS when None). Deterministic in its arguments.

    For measurements per font size / rotation (docs/results/ocr.md): `text_size` (px, MIN_TEXT..MAX_TEXT) sets the
    size every text element would draw at random; an element that must fit a width still shrinks to fit, and
    a receipt's shop name stays 1.4x the item text (up to MAX_TEXT), so read `Page.sizes` for the size of each word. `rotation`
    (degrees in [-30, 30]) replaces the random rotation and changes nothing else on the page. `text_size` keeps
    what is drawn before the text (kind, page size, background, fonts); the words can differ, since a line at
    another size holds another number of them. The page is rotated within its frame (no expansion), so at large
    angles words near the corners can leave it: their boxes then lie partly outside the image."""
    if kind is not None and kind not in KINDS:
        fail("kind", f"one of {KINDS} or None", repr(kind))
    if not 0 <= max_rotation <= 30:
        fail("max_rotation", "degrees in [0, 30]", max_rotation)
    if text_size is not None and (isinstance(text_size, bool) or not isinstance(text_size, (int, np.integer))
                                  or not MIN_TEXT <= text_size <= MAX_TEXT):
        fail("text_size", f"None or an integer font size in px in [{MIN_TEXT}, {MAX_TEXT}]", repr(text_size))
    if rotation is not None and not (isinstance(rotation, (int, float, np.number)) and -30 <= rotation <= 30):
        fail("rotation", "None or degrees in [-30, 30]", repr(rotation))
    fonts = tuple(fonts) if fonts is not None else available_fonts()
    if not fonts:
        fail("fonts", "at least one .ttf path", fonts)
    for f in fonts:
        if not os.path.isfile(f):
            fail("fonts", "paths of existing .ttf files", f)
    rng = np.random.default_rng([int(seed), 16_3])
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    (lo, hi), (alo, ahi) = _SIZES[kind]
    width = int(rng.integers(lo, hi + 1))
    height = int(np.clip(round(width * rng.uniform(alo, ahi)), MIN_SIDE, MAX_SIDE))
    b = _Builder(rng, kind, width, height, fonts, None if text_size is None else int(text_size))
    background = b.pick(list(BACKGROUNDS))
    _BUILD[kind](b)
    drawn = 0.0 if rng.random() < 0.5 or max_rotation == 0 else float(rng.uniform(-max_rotation, max_rotation))
    rotation = drawn if rotation is None else float(rotation)
    return Layout(kind, width, height, background, b.fills, b.words, b.shapes, b.fields, round(rotation, 3))


# ------------------------------------------------------------------------------------------------ drawing
def _upright_box(word: Word) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = _font(word.font, word.size).getbbox(word.text, anchor="ls")
    return word.x + x0 - 1, word.baseline + y0 - 1, word.x + x1 + 1, word.baseline + y1 + 1


def _rotate_points(points: np.ndarray, angle: float, width: int, height: int) -> np.ndarray:
    """Where PIL's `Image.rotate(angle)` (counter-clockwise, about the centre, same size) moves points (x, y)."""
    a = math.radians(angle)
    cx, cy = width / 2, height / 2
    dx, dy = points[..., 0] - cx, points[..., 1] - cy
    return np.stack([cx + dx * math.cos(a) + dy * math.sin(a), cy - dx * math.sin(a) + dy * math.cos(a)], -1)


def render_layout(layout: Layout, omit: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draws `layout`, leaving out the words whose indices are in `omit` (tests isolate a word's ink this way).
    Returns (image uint8 [H, W, 3], boxes float32 [N, 4, 2] rotated quadrilaterals, upright float32 [N, 4])."""
    omit = set(int(i) for i in omit)
    bg = BACKGROUNDS[layout.background]
    img = Image.new("RGB", (layout.width, layout.height), bg)
    draw = ImageDraw.Draw(img)
    for prim, coords, rgb in layout.fills:
        if prim == "rect":
            draw.rectangle(coords, fill=rgb)
        elif prim == "ellipse":
            draw.ellipse(coords, fill=rgb)
        elif prim == "polygon":
            draw.polygon(coords, fill=rgb)
        else:
            draw.line(coords, fill=rgb, width=1)
    for i, w in enumerate(layout.words):
        if i not in omit:
            draw.text((w.x, w.baseline), w.text, font=_font(w.font, w.size), fill=w.rgb, anchor="ls")
    upright = np.array([_upright_box(w) for w in layout.words], np.float32).reshape(-1, 4)
    x0, y0, x1, y1 = upright.T
    quads = np.stack([np.stack([x0, y0], -1), np.stack([x1, y0], -1), np.stack([x1, y1], -1),
                      np.stack([x0, y1], -1)], 1) if len(upright) else np.zeros((0, 4, 2), np.float32)
    if layout.rotation:
        img = img.rotate(layout.rotation, resample=Image.BICUBIC, fillcolor=bg)
        quads = _rotate_points(quads, layout.rotation, layout.width, layout.height)
    return np.asarray(img, np.uint8), quads.astype(np.float32), upright


# ------------------------------------------------------------------------------------------------ pages
@dataclasses.dataclass
class Page:
    image: np.ndarray        # uint8 [H, W, 3]
    kind: str
    words: list              # [N] str, reading order
    boxes: np.ndarray        # float32 [N, 4, 2] quadrilaterals (x, y), rotated with the page
    lines: np.ndarray        # int32 [N] reading-order line index
    colors: list             # [N] colour names of the words
    sizes: np.ndarray        # int32 [N] font sizes in pixels
    fonts: list              # [N] font file names
    fields: dict             # key -> value (see the module docstring per kind)
    shapes: list             # [{"shape", "color"}]
    background: str
    rotation: float          # degrees, counter-clockwise
    upright_boxes: np.ndarray  # float32 [N, 4] (x0, y0, x1, y1) before rotation

    @property
    def order(self) -> np.ndarray:
        """Reading order: index i is the i-th word read (the words are stored in it)."""
        return np.arange(len(self.words), dtype=np.int32)


def page_from_layout(layout: Layout) -> Page:
    image, boxes, upright = render_layout(layout)
    ws = layout.words
    return Page(image, layout.kind, [w.text for w in ws], boxes, np.array([w.line for w in ws], np.int32),
                [w.color for w in ws], np.array([w.size for w in ws], np.int32),
                [os.path.basename(w.font) for w in ws], dict(layout.fields), list(layout.shapes), layout.background,
                layout.rotation, upright)


def make_page(seed: int, kind: str | None = None, *, fonts: Sequence[str] | None = None,
              max_rotation: float = 4.0, text_size: int | None = None, rotation: float | None = None) -> Page:
    """Page `seed` (see the module docstring and `layout_page` for text_size / rotation); the same arguments give
    the same page, pixel for pixel."""
    return page_from_layout(layout_page(seed, kind, fonts=fonts, max_rotation=max_rotation, text_size=text_size,
                                        rotation=rotation))


# ------------------------------------------------------------------------------------------------ questions
@dataclasses.dataclass(frozen=True)
class QA:
    question: str
    answer: str
    kind: str
    needs_reading: bool


def _unique(words: list) -> set:
    counts = {}
    for w in words:
        counts[w.lower()] = counts.get(w.lower(), 0) + 1
    return {w for w, c in counts.items() if c == 1}


def _read_at(page: Page, rng):
    """A word whose box centre is >= 1.5 box heights from every other word's centre, asked by its centre."""
    if not page.words:
        return None
    centres = page.boxes.mean(1)
    heights = page.upright_boxes[:, 3] - page.upright_boxes[:, 1]
    for i in rng.permutation(len(page.words)):
        d = np.linalg.norm(centres - centres[i], axis=1)
        d[i] = np.inf
        if d.min() >= 1.5 * heights[i]:
            h, w = page.image.shape[:2]
            fx, fy = 100 * centres[i, 0] / w, 100 * centres[i, 1] / h
            return QA(f"What word is written at {fx:.0f}% from the left and {fy:.0f}% from the top?",
                      page.words[i], "read_at", True)
    return None


def _key_value(page: Page, rng):
    keys = [k for k in page.fields if page.kind in ("document", "table")]
    if not keys:
        return None
    key = keys[int(rng.integers(len(keys)))]
    if page.kind == "table":
        row, col = key.split("|")
        return QA(f"In the table, what is the {col} value of {row}?", page.fields[key], "key_value", True)
    return QA(f"What is the {key}?", page.fields[key], "key_value", True)


def _price(page: Page, rng):
    if page.kind == "chart":
        label = list(page.fields)[int(rng.integers(len(page.fields)))]
        return QA(f"What is the value of the bar labelled {label}?", page.fields[label], "price", True)
    if page.kind != "receipt":
        return None
    items = list(page.fields)
    item = items[int(rng.integers(len(items)))]
    q = "What is the total?" if item == "TOTAL" else f"What is the price of {item}?"
    return QA(q, page.fields[item], "price", True)


def _above(page: Page, rng):
    """'Which word is directly above w?': among words overlapping w horizontally and wholly above it (upright
    boxes), the nearest; asked only when both words are unique on the page and the nearest is unambiguous."""
    ub, unique = page.upright_boxes, _unique(page.words)
    for i in rng.permutation(len(page.words)):
        if page.words[i].lower() not in unique:
            continue
        overlap = (np.minimum(ub[:, 2], ub[i, 2]) - np.maximum(ub[:, 0], ub[i, 0])) > 0
        above = overlap & (ub[:, 3] <= ub[i, 1])
        above[i] = False
        if not above.any():
            continue
        gap = np.where(above, ub[i, 1] - ub[:, 3], np.inf)
        j = int(np.argmin(gap))
        if (np.abs(gap - gap[j]) < 2).sum() == 1 and page.words[j].lower() in unique:
            return QA(f"Which word is directly above '{page.words[i]}'?", page.words[j], "above", True)
    return None


def _count_color(page: Page, rng):
    present = sorted(set(page.colors) & set(TEXT_COLORS))
    if not present:
        return None
    color = present[int(rng.integers(len(present)))]
    return QA(f"How many words are written in {color}?", str(page.colors.count(color)), "count_color", True)


def _background(page: Page, rng):
    return QA("What colour is the background of the page?", page.background, "background", False)


def _count_shapes(page: Page, rng):
    shapes = [s for s in page.shapes if s["shape"] != "plate"]
    if not shapes:
        return None
    shape = shapes[int(rng.integers(len(shapes)))]["shape"]
    n = sum(s["shape"] == shape for s in page.shapes)
    return QA(f"How many {shape}s are there?", str(n), "count_shapes", False)


def _shape_color(page: Page, rng):
    kinds = [s["shape"] for s in page.shapes]
    single = [k for k in kinds if kinds.count(k) == 1 and k != "bar"]
    if not single:
        return None
    shape = single[int(rng.integers(len(single)))]
    return QA(f"What colour is the {shape}?", page.shapes[kinds.index(shape)]["color"], "shape_color", False)


_QUESTIONS = {"read_at": _read_at, "key_value": _key_value, "price": _price, "above": _above,
              "count_color": _count_color, "background": _background, "count_shapes": _count_shapes,
              "shape_color": _shape_color}


def page_questions(page: Page, seed: int = 0, kinds: Sequence[str] = QUESTION_KINDS) -> list[QA]:
    """At most one question per kind in `kinds` that this page supports, deterministic in (page, seed)."""
    bad = [k for k in kinds if k not in _QUESTIONS]
    if bad:
        fail("kinds", f"names from {QUESTION_KINDS}", bad)
    rng = np.random.default_rng(int(seed))
    return [qa for qa in (_QUESTIONS[k](page, rng) for k in kinds) if qa is not None]


# ------------------------------------------------------------------------------------------------ a QA source
_SPLITS = {"train": 0, "eval": 1, "test": 2}


def square_view(image: np.ndarray, size: int, fill=(122, 116, 104)) -> np.ndarray:
    """The page padded to a square (LLaVA-1.5's fill colour) and resized to `size` (bicubic): what a
    fixed-resolution encoder sees."""
    h, w = image.shape[:2]
    side = max(h, w)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(Image.fromarray(image), ((side - w) // 2, (side - h) // 2))
    return np.asarray(canvas.resize((size, size), Image.BICUBIC), np.uint8)


class TextRichQA:
    """Random-access source: example i is page (seed, split, i) with one question of a kind drawn from `kinds`
    (pages that cannot ask it fall back to another kind in `kinds`). Examples: {"image" uint8 [image_size,
    image_size, 3] (the page padded to a square and resized), "page_image" (full resolution, with
    keep_page=True), "conversations", "question", "answer", "kind", "needs_reading", "page_kind", "words"}."""

    def __init__(self, num_examples: int = 10_000, *, seed: int = 0, split: str = "train", image_size: int = 224,
                 kinds: Sequence[str] = QUESTION_KINDS, page_kinds: Sequence[str] = KINDS,
                 keep_page: bool = False):
        if num_examples < 1:
            fail("num_examples", "a positive integer", num_examples)
        if split not in _SPLITS:
            fail("split", f"one of {tuple(_SPLITS)}", repr(split))
        if image_size < 8:
            fail("image_size", ">= 8", image_size)
        bad = [k for k in kinds if k not in QUESTION_KINDS]
        if bad or not kinds:
            fail("kinds", f"a non-empty subset of {QUESTION_KINDS}", tuple(kinds))
        bad = [k for k in page_kinds if k not in KINDS]
        if bad or not page_kinds:
            fail("page_kinds", f"a non-empty subset of {KINDS}", tuple(page_kinds))
        self.num_examples, self.seed, self.split = int(num_examples), int(seed), split
        self.image_size, self.kinds, self.page_kinds = int(image_size), tuple(kinds), tuple(page_kinds)
        self.keep_page = keep_page

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range [0, {self.num_examples})")
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], index])
        page = make_page(int(rng.integers(2**31)), self.page_kinds[int(rng.integers(len(self.page_kinds)))])
        order = [self.kinds[int(i)] for i in rng.permutation(len(self.kinds))]
        qa = page_questions(page, int(rng.integers(2**31)), order)
        if not qa:   # "background" is always askable; without it, take any question the page has
            qa = page_questions(page, index)
        qa = qa[0]
        out = {"image": square_view(page.image, self.image_size),
               "conversations": [("user", "<image>\n" + qa.question), ("assistant", qa.answer)],
               "question": qa.question, "answer": qa.answer, "kind": qa.kind,
               "needs_reading": np.int32(qa.needs_reading), "page_kind": page.kind, "words": page.words}
        if self.keep_page:
            out["page_image"] = page.image
        return out
