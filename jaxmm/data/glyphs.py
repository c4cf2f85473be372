"""Glyph images and text-rendering scenes for ARTIST (arXiv 2406.12044, PAPERS.md §6), small and procedural.

    from jaxmm.data import glyphs
    g = glyphs.single_word(seed=0)            # one word, random font / size / position
    g = glyphs.layout_words(seed=0)           # 1..max_words words cut from a text-rich page layout
    g.glyph   # uint8 [H, W]: white text (255) on black (0), antialiased
    g.words   # list[str]; g.boxes float32 [N, 4] (x0, y0, x1, y1) ink boxes in pixels; g.fonts; g.sizes
    s = glyphs.scene(seed=0)                  # the visual task: prompt -> coloured image with the same text
    s["image"] uint8 [H, W, 3]; s["glyph"] uint8 [H, W]; s["mask"] uint8 [H, W] (1 inside a word box);
    s["prompt"] 'a blue poster with white text saying "tiger river"'
    glyphs.render_in_boxes(words, boxes, (H, W))   # a glyph image from planned boxes (each word fitted to its box)

Words are lower-case letters and digits (CHARSET): the textrich pages' words are lower-cased and stripped of other
characters, so that a character-level encoder and an OCR engine agree on what a word is.
Multi-word glyphs (the paper's second pre-training stage renders words "from real layouts"): a page of
`jaxmm.data.textrich.layout_page` is drawn at random, one to two consecutive reading-order lines of it are cut out
(up to `max_words` words), and their upright boxes are scaled together, keeping the page's relative positions,
fonts and sizes, to fill the canvas. **[reconstruction]** The paper renders MARIO-10M's layouts at 512 px; the
cut-and-scale to a 32x64 canvas is ours, to make the task CPU-sized.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from jaxmm.checks import fail
from jaxmm.data import textrich

CHARSET = "abcdefghijklmnopqrstuvwxyz0123456789"
HEIGHT, WIDTH = 32, 64
BACKGROUNDS = {"red": (200, 40, 40), "blue": (40, 70, 200), "green": (30, 140, 60), "orange": (235, 140, 30),
               "purple": (130, 50, 170), "gray": (120, 120, 120)}
FOREGROUNDS = {"white": (250, 250, 250), "black": (15, 15, 15)}
SHORT_WORDS = tuple(w for w in textrich.WORDS if len(w) <= 6)


def clean_word(text: str) -> str:
    """Lower-case `text` and keep only CHARSET characters ('Invoice:' -> 'invoice', '12.50' -> '1250')."""
    return re.sub(f"[^{CHARSET}]", "", text.lower())


@dataclasses.dataclass
class Glyphs:
    glyph: np.ndarray        # uint8 [H, W], white text on black
    words: list              # [N] str
    boxes: np.ndarray        # float32 [N, 4] (x0, y0, x1, y1) ink boxes, pixels
    fonts: list              # [N] .ttf paths
    sizes: list              # [N] font sizes (px)


def _canvas(height: int, width: int):
    for name, v in (("height", height), ("width", width)):
        if not (isinstance(v, (int, np.integer)) and v >= 8):
            fail(name, "an int >= 8 (pixels)", v)
    return Image.new("L", (int(width), int(height)), 0)


def _draw(words, xs, baselines, fonts, sizes, height, width) -> Glyphs:
    """Draws words at pen positions (x, baseline, anchor 'ls') and returns them with their ink boxes."""
    img = _canvas(height, width)
    draw = ImageDraw.Draw(img)
    boxes = []
    for w, x, y, f, s in zip(words, xs, baselines, fonts, sizes):
        font = textrich._font(f, int(s))
        draw.text((x, y), w, font=font, fill=255, anchor="ls")
        x0, y0, x1, y1 = font.getbbox(w, anchor="ls")
        boxes.append((x + x0, y + y0, x + x1, y + y1))
    boxes = np.clip(np.array(boxes, np.float32).reshape(-1, 4), 0, [width, height, width, height])
    return Glyphs(np.asarray(img, np.uint8), list(words), boxes, list(fonts), [int(s) for s in sizes])


def single_word(seed: int, *, height: int = HEIGHT, width: int = WIDTH, vocabulary: Sequence[str] = SHORT_WORDS,
                fonts: Sequence[str] | None = None, size_range: tuple[int, int] = (10, 18)) -> Glyphs:
    """One word of `vocabulary` in a random font and size (shrunk until it fits), at a random position fully inside
    the canvas. Deterministic in its arguments."""
    fonts = tuple(fonts) if fonts is not None else textrich.available_fonts()
    if not vocabulary or not all(isinstance(w, str) and w and clean_word(w) == w for w in vocabulary):
        fail("vocabulary", f"non-empty words of the characters {CHARSET!r}", list(vocabulary)[:5])
    lo, hi = size_range
    if not 6 <= lo <= hi:
        fail("size_range", "(lo, hi) with 6 <= lo <= hi", size_range)
    rng = np.random.default_rng([int(seed), 20_1])
    word = vocabulary[int(rng.integers(len(vocabulary)))]
    font = fonts[int(rng.integers(len(fonts)))]
    size = int(rng.integers(lo, hi + 1))
    while True:
        x0, y0, x1, y1 = textrich._font(font, size).getbbox(word, anchor="ls")
        if (x1 - x0 <= width - 2 and y1 - y0 <= height - 2) or size <= 6:
            break
        size -= 1
    x = rng.uniform(1 - x0, max(1 - x0, width - 1 - x1))
    y = rng.uniform(1 - y0, max(1 - y0, height - 1 - y1))
    return _draw([word], [x], [y], [font], [size], height, width)


def layout_words(seed: int, *, height: int = HEIGHT, width: int = WIDTH, max_words: int = 3,
                 fonts: Sequence[str] | None = None, margin: int = 1, min_size: int = 6) -> Glyphs:
    """1..max_words words of a text-rich page layout (see the module docstring), scaled to the canvas; a cut whose
    smallest word would be under `min_size` px is redrawn."""
    if not (isinstance(max_words, int) and max_words >= 1):
        fail("max_words", "an int >= 1", max_words)
    rng = np.random.default_rng([int(seed), 20_2])
    for attempt in range(50):
        layout = textrich.layout_page(int(rng.integers(1 << 30)), fonts=fonts, max_rotation=0)
        kept = [w for w in layout.words if clean_word(w.text)]
        if not kept:
            continue
        lines = sorted({w.line for w in kept})
        first = lines[int(rng.integers(len(lines)))]
        span = [w for w in kept if first <= w.line <= first + int(rng.integers(0, 2))]
        start = int(rng.integers(len(span)))
        span = span[start:start + int(rng.integers(1, max_words + 1))]
        texts = [clean_word(w.text) for w in span]
        ink = np.array([textrich._upright_box(textrich.Word(t, w.x, w.baseline, w.font, w.size, "", (), 0))
                        for t, w in zip(texts, span)], np.float32)
        rx0, ry0 = ink[:, 0].min(), ink[:, 1].min()
        rw, rh = ink[:, 2].max() - rx0, ink[:, 3].max() - ry0
        scale = min((width - 2 * margin) / rw, (height - 2 * margin) / rh)
        sizes = [int(w.size * scale) for w in span]
        if min(sizes) < min_size:
            continue
        ox = margin + (width - 2 * margin - rw * scale) * rng.uniform()
        oy = margin + (height - 2 * margin - rh * scale) * rng.uniform()
        xs = [ox + (w.x - rx0) * scale for w in span]
        ys = [oy + (w.baseline - ry0) * scale for w in span]
        return _draw(texts, xs, ys, [w.font for w in span], sizes, height, width)
    fail("layout_words", f"a layout cut that fits at >= {min_size} px", f"none in 50 pages (seed {seed})")


def render_in_boxes(words: Sequence[str], boxes, shape: tuple[int, int] = (HEIGHT, WIDTH),
                    font: str | None = None) -> np.ndarray:
    """A glyph image uint8 [H, W] with each word drawn in `font` (default: the first available) at the largest size
    whose ink fits its box (x0, y0, x1, y1), centred in it: how a planned layout becomes glyphs."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if len(boxes) != len(words):
        fail("boxes", f"one (x0, y0, x1, y1) box per word ({len(words)})", f"shape {boxes.shape}")
    font = font or textrich.available_fonts()[0]
    xs, ys, sizes = [], [], []
    for w, (bx0, by0, bx1, by1) in zip(words, boxes):
        size = 6
        for s in range(6, 41):
            x0, y0, x1, y1 = textrich._font(font, s).getbbox(w, anchor="ls")
            if x1 - x0 > bx1 - bx0 or y1 - y0 > by1 - by0:
                break
            size = s
        x0, y0, x1, y1 = textrich._font(font, size).getbbox(w, anchor="ls")
        xs.append((bx0 + bx1) / 2 - (x0 + x1) / 2)
        ys.append((by0 + by1) / 2 - (y0 + y1) / 2)
        sizes.append(size)
    return _draw(list(words), xs, ys, [font] * len(words), sizes, *shape).glyph


def box_mask(boxes, shape: tuple[int, int] = (HEIGHT, WIDTH)) -> np.ndarray:
    """uint8 [H, W]: 1 at pixels whose centre lies inside any box (x0, y0, x1, y1)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    inside = [(xx >= b[0]) & (xx <= b[2]) & (yy >= b[1]) & (yy <= b[3]) for b in boxes]
    return np.any(inside, axis=0).astype(np.uint8) if inside else np.zeros(shape, np.uint8)


def char_map(words: Sequence[str], boxes, shape: tuple[int, int] = (HEIGHT, WIDTH)) -> np.ndarray:
    """int32 [H, W]: 0 outside every box; inside word i's box (x0, y0, x1, y1), 1 + the CHARSET index of the
    character whose slot holds the pixel centre, the box split into len(word) equal-width slots.

    The textual model's spatial view of a layout (where each letter of the string goes), computed from the planned
    words and boxes alone, with no font. **[reconstruction]** ARTIST's textual model is Stable Diffusion conditioned
    on its prompt; this per-pixel character condition (like TextDiffuser's character-level segmentation mask, but
    with uniform slots instead of a rendered font) is ours: without it the small textual model trained from scratch
    on CPU draws no legible word (docs/results/artist.md)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if len(boxes) != len(words):
        fail("boxes", f"one (x0, y0, x1, y1) box per word ({len(words)})", f"shape {boxes.shape}")
    out = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    for w, (x0, y0, x1, y1) in zip(words, boxes):
        if not w or clean_word(w) != w:
            fail("words", f"non-empty words of the characters {CHARSET!r}", repr(w))
        inside = (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)
        slot = np.clip(np.floor((xx - x0) / max(float(x1 - x0), 1e-6) * len(w)).astype(int), 0, len(w) - 1)
        ids = 1 + np.array([CHARSET.index(ch) for ch in w])[slot]
        out = np.where(inside, ids, out)
    return out


def prompt_for(words: Sequence[str], background: str, foreground: str) -> str:
    return f'a {background} poster with {foreground} text saying "{" ".join(words)}"'


def scene(seed: int, *, height: int = HEIGHT, width: int = WIDTH, max_words: int = 2, p_single: float = 0.5,
          fonts: Sequence[str] | None = None, size_range: tuple[int, int] = (10, 18), min_size: int = 6) -> dict:
    """One example of the visual task: a `background`-coloured poster with `foreground` text (a single word or
    words from a layout, chosen with probability p_single / 1 - p_single), and the prompt that describes it.
    Returns {"image" uint8 [H, W, 3], "glyph" uint8 [H, W], "mask" uint8 [H, W], "prompt", "words", "boxes",
    "background", "foreground"}."""
    rng = np.random.default_rng([int(seed), 20_3])
    sub = int(rng.integers(1 << 30))
    g = (single_word(sub, height=height, width=width, fonts=fonts, size_range=size_range) if rng.random() < p_single
         else layout_words(sub, height=height, width=width, max_words=max_words, fonts=fonts, min_size=min_size))
    bg = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    fg = list(FOREGROUNDS)[int(rng.integers(len(FOREGROUNDS)))]
    alpha = g.glyph.astype(np.float32)[..., None] / 255.0
    image = (1 - alpha) * np.array(BACKGROUNDS[bg], np.float32) + alpha * np.array(FOREGROUNDS[fg], np.float32)
    return {"image": np.round(image).astype(np.uint8), "glyph": g.glyph, "mask": box_mask(g.boxes, (height, width)),
            "prompt": prompt_for(g.words, bg, fg), "words": g.words, "boxes": g.boxes, "background": bg,
            "foreground": fg}
