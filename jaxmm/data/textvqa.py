"""Text-rich image QA, procedural and seeded (no downloads): PIL-rendered words in several fonts, sizes and
colours on procedural backgrounds, with questions about the text.

Each example is a deterministic function of (seed, split, index):
  image         uint8 [size, size, 3]
  conversations [("user", "<image>\\n" + question), ("assistant", answer)]
  question, answer, kind   str; kind in {"read", "red", "top", "count", "color"}
  words         list[str]  the rendered words, top to bottom
  colors        list[str]  their colour names
  boxes         int32 [max_words, 4] ink boxes (x0, y0, x1, y1) in pixels, x1/y1 exclusive, rows past
                num_words are -1 (the words' order matches `words`)
  num_words     int32 scalar
  font          str  the font's name

Layout: the image is cut into `num_words` horizontal bands and each word is drawn inside its own band at a
random x, so boxes never overlap and "the word at the top" is the first word. Backgrounds are light
(every channel >= 140: a base colour, a gradient, pale shapes, faint noise); text colours are dark or
saturated (some channel <= 60), so a word's colour never appears in the background.

Questions and answers:
  read   one word:            "What word is written in the image?"        -> the word
  red    2+ words, one red:   "Which word is red?"                        -> that word
  top    2+ words:            "What is written at the top?"               -> the first word
  count  1..max_words words:  "How many words are there?"                  -> "1".."9"
  color  1+ words:            "What colour is the word <w>?"               -> its colour name

Fonts: Pillow's built-in scalable font (always present, Pillow >= 10.1 with FreeType) plus the DejaVu
fonts of Debian's `fonts-dejavu-core` when they exist on the machine (they do on our image); `fonts=` picks
explicitly. Which fonts exist changes the pixels, not the metadata contract.
"""
from __future__ import annotations

import functools
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jaxmm.checks import check_positive, fail

DEFAULT_WORDS = ("cat", "dog", "sun", "map", "key", "cup", "hat", "pen", "bus", "egg", "fox", "owl")
COLORS = {
    "red": (215, 25, 25),
    "blue": (25, 45, 205),
    "green": (15, 130, 35),
    "black": (10, 10, 10),
    "purple": (125, 20, 145),
}
KINDS = ("read", "red", "top", "count", "color")
QUESTIONS = {
    "read": ("What word is written in the image?", "Read the word in the image."),
    "red": ("Which word is red?", "What does the red word say?"),
    "top": ("What is written at the top?", "Which word is at the top?"),
    "count": ("How many words are there?", "How many words are in the image?"),
    "color": ("What colour is the word {w}?", "Which colour is the word {w} written in?"),
}
_DEJAVU_DIR = "/usr/share/fonts/truetype/dejavu"
_DEJAVU = ("DejaVuSans-Bold.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSans.ttf")
_SPLITS = {"train": 0, "eval": 1, "test": 2}


def available_fonts() -> tuple[str, ...]:
    """"builtin" plus the DejaVu files present on this machine."""
    found = tuple(os.path.join(_DEJAVU_DIR, f) for f in _DEJAVU if os.path.isfile(os.path.join(_DEJAVU_DIR, f)))
    return ("builtin",) + found


@functools.lru_cache(maxsize=256)
def _font(name: str, size: int):
    if name == "builtin":
        return ImageFont.load_default(size=size)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"font file not found: {name}")
    return ImageFont.truetype(name, size=size)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.integers(185, 256, size=3).astype(np.float32)
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    gx, gy = rng.uniform(-20, 20, size=(2, 3)).astype(np.float32)
    img = base + ramp[None, :, None] * gx + ramp[:, None, None] * gy
    canvas = Image.fromarray(np.clip(img, 150, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 4))):
        x0, y0 = rng.integers(0, size, size=2)
        w, h = rng.integers(size // 8, size // 2, size=2)
        fill = tuple(int(c) for c in rng.integers(165, 256, size=3))
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        shape([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=fill)
    img = np.asarray(canvas, np.float32) + rng.normal(0.0, 3.0, size=(size, size, 3))
    return np.clip(img, 140, 255)


class TextVQA:
    """Random-access source of text-rich image QA examples (see the module docstring).

    Args:
      num_examples: length of the source.
      seed: dataset seed; `split` ("train"/"eval"/"test") selects an independent stream.
      image_size: square image side in pixels.
      words: the vocabulary of rendered words (distinct, short).
      max_words: most words per image (<= 9, and each word needs a band of >= 12 px).
      kinds: question kinds to draw from (uniformly).
      font_sizes: (min, max) font size in pixels (the max is capped to fit a band).
      fonts: font names ("builtin" or .ttf paths); default `available_fonts()`.
    """

    def __init__(self, num_examples: int = 10_000, *, seed: int = 0, split: str = "train",
                 image_size: int = 64, words: Sequence[str] = DEFAULT_WORDS, max_words: int = 3,
                 kinds: Sequence[str] = ("read", "red", "top", "count"), font_sizes: tuple[int, int] = (12, 18),
                 fonts: Sequence[str] | None = None):
        check_positive("num_examples", num_examples)
        check_positive("image_size", image_size)
        if split not in _SPLITS:
            fail("split", f"one of {tuple(_SPLITS)}", repr(split))
        words = tuple(words)
        if len(set(words)) != len(words) or len(words) < 2:
            fail("words", "at least 2 distinct words", words)
        if not 1 <= max_words <= min(9, len(words)):
            fail("max_words", f"1..{min(9, len(words))}", max_words)
        if image_size // max_words < 12:
            fail("image_size", f">= {12 * max_words} for max_words={max_words}", image_size)
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            fail("kinds", f"a non-empty subset of {KINDS}", tuple(kinds))
        if max_words < 2 and any(k in ("red", "top") for k in kinds):
            fail("max_words", ">= 2 for the 'red'/'top' questions", max_words)
        lo, hi = font_sizes
        if not 6 <= lo <= hi:
            fail("font_sizes", "(min, max) with 6 <= min <= max", font_sizes)
        self.num_examples = int(num_examples)
        self.seed, self.split = int(seed), split
        self.image_size, self.words, self.max_words = int(image_size), words, int(max_words)
        self.kinds, self.font_sizes = tuple(kinds), (int(lo), int(hi))
        self.fonts = tuple(fonts) if fonts is not None else available_fonts()
        for f in self.fonts:
            _font(f, lo)  # fail early on a missing font file

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range [0, {self.num_examples})")
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], index])
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        if kind == "read":
            n = 1
        elif kind in ("red", "top"):
            n = int(rng.integers(2, self.max_words + 1))
        else:
            n = int(rng.integers(1, self.max_words + 1))
        words = [self.words[i] for i in rng.choice(len(self.words), size=n, replace=False)]
        names = list(COLORS)
        if kind == "red":
            others = [c for c in names if c != "red"]
            colors = [others[int(rng.integers(len(others)))] for _ in range(n)]
            colors[int(rng.integers(n))] = "red"
        else:
            colors = [names[int(rng.integers(len(names)))] for _ in range(n)]
        font = self.fonts[int(rng.integers(len(self.fonts)))]
        image, boxes = self._render(rng, words, colors, font)

        template = QUESTIONS[kind][int(rng.integers(2))]
        if kind == "read" or kind == "top":
            question, answer = template, words[0]
        elif kind == "red":
            question, answer = template, words[colors.index("red")]
        elif kind == "count":
            question, answer = template, str(n)
        else:
            j = int(rng.integers(n))
            question, answer = template.format(w=words[j]), colors[j]
        padded = np.full((self.max_words, 4), -1, np.int32)
        padded[:n] = boxes
        return {
            "image": image,
            "conversations": [("user", "<image>\n" + question), ("assistant", answer)],
            "question": question, "answer": answer, "kind": kind,
            "words": words, "colors": colors, "boxes": padded, "num_words": np.int32(n),
            "font": os.path.basename(font),
        }

    def _render(self, rng, words, colors, font_name):
        size, n = self.image_size, len(words)
        img = _background(rng, size)
        band = size // n
        boxes = np.zeros((n, 4), np.int32)
        for i, (word, color) in enumerate(zip(words, colors)):
            font_size = int(rng.integers(self.font_sizes[0], self.font_sizes[1] + 1))
            while True:  # shrink until the word fits its band and the image width
                font = _font(font_name, font_size)
                x0, y0, x1, y1 = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), word, font=font)
                w, h = x1 - x0, y1 - y0
                if (h <= band - 2 and w <= size - 4) or font_size <= 6:
                    break
                font_size -= 1
            x = int(rng.integers(2, max(3, size - w - 1))) - x0
            y = i * band + int(rng.integers(1, max(2, band - h))) - y0
            mask = Image.new("L", (size, size), 0)
            ImageDraw.Draw(mask).text((x, y), word, font=font, fill=255)
            bbox = mask.getbbox()
            if bbox is None:
                fail("font_sizes", "sizes at which every word leaves ink", self.font_sizes)
            boxes[i] = bbox
            alpha = np.asarray(mask, np.float32)[..., None] / 255.0
            img = img * (1.0 - alpha) + np.asarray(COLORS[color], np.float32) * alpha
        return np.clip(np.rint(img), 0, 255).astype(np.uint8), boxes


def textvqa_dataset(num_examples: int = 10_000, **kwargs):
    """`TextVQA(...)` as a `grain.MapDataset`."""
    import grain

    return grain.MapDataset.source(TextVQA(num_examples, **kwargs))
