"""Procedural captioned shapes for text-to-image (issue 17): coloured circles / squares / triangles, counted and
placed, with the caption that describes them and the labels that score a generated image.

    ds = Shapes(1000, seed=0, split="train")        # ds[i]: image uint8 [32, 32, 3], input_ids, attention_mask,
                                                    #        halves int32 [2, 3] (count, colour, shape per side), multi
    ids, mask = encode("two red circles left of a blue square")

The image is split into a left and a right half; a half holds nothing or one *group*: `count` objects of one
colour and shape stacked top to bottom (jittered position and size). Captions:
  single-object: "{a|two|three} {colour} {shape}[s] on the {left|right}"       (one group, the other half empty)
  multi-object:  "{group A} {left|right} of {group B}"                           (A on that side, B on the other)
Each caption is a deterministic function of the scene, so the scene's labels are what a generated image for that
caption should show; `attribute_hits` compares them with what a classifier (jaxmm.data.shapes_scorer) reads.
Black background, pure colours; every example is a pure function of (seed, split, index).
"""
from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from jaxmm.checks import fail

COLORS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (235, 215, 40)}
SHAPES = ("circle", "square", "triangle")
SIDES = ("left", "right")
NUMBERS = ("a", "two", "three")
VOCAB = ("<pad>", "<bos>", "<eos>", *NUMBERS, *COLORS, *SHAPES, *(s + "s" for s in SHAPES), "on", "the", "of",
         *SIDES)
PAD, BOS, EOS = 0, 1, 2
MAX_LEN = 12   # <bos> + the longest caption (8 words) + <eos>, padded


@dataclasses.dataclass(frozen=True)
class Group:
    count: int    # 1..max_count
    color: int    # index into COLORS
    shape: int    # index into SHAPES


def group_text(g: Group) -> str:
    return f"{NUMBERS[g.count - 1]} {list(COLORS)[g.color]} {SHAPES[g.shape]}{'s' if g.count > 1 else ''}"


def caption(halves: tuple, first: int = 0) -> str:
    """The caption of a scene `halves` = (left group or None, right group or None). With two groups, `first` (0/1)
    is the side named first ("A left of B" names the left group first)."""
    present = [i for i, g in enumerate(halves) if g is not None]
    if len(present) == 1:
        side = present[0]
        return f"{group_text(halves[side])} on the {SIDES[side]}"
    if len(present) != 2:
        fail("halves", "one or two groups", halves)
    return f"{group_text(halves[first])} {SIDES[first]} of {group_text(halves[1 - first])}"


def encode(text: str, max_len: int = MAX_LEN):
    """Word-level ids [max_len] int32 (<bos> words <eos> <pad>...) and attention_mask [max_len] (1 = real)."""
    words = text.split()
    unknown = [w for w in words if w not in VOCAB]
    if unknown:
        fail("text", f"words from the shapes vocabulary {VOCAB[3:]}", f"{text!r} (unknown {unknown})")
    if len(words) + 2 > max_len:
        fail("text", f"at most {max_len - 2} words", f"{len(words)} in {text!r}")
    ids = np.zeros(max_len, np.int32)
    ids[:len(words) + 2] = [BOS, *(VOCAB.index(w) for w in words), EOS]
    return ids, (ids != PAD).astype(np.int32)


def parse(text: str) -> np.ndarray:
    """The inverse of `caption`: halves labels int32 [2, 3] (count, colour, shape per side; -1 colour/shape and
    count 0 for an empty half). Used to score prompts typed by a user."""
    w = text.split()

    def group(ws):
        if len(ws) != 3 or ws[0] not in NUMBERS or ws[1] not in COLORS or ws[2].rstrip("s") not in SHAPES:
            fail("text", "'<a|two|three> <colour> <shape>[s]' groups as in jaxmm.data.shapes.caption", repr(text))
        return [NUMBERS.index(ws[0]) + 1, list(COLORS).index(ws[1]), SHAPES.index(ws[2].rstrip("s"))]

    out = np.array([[0, -1, -1], [0, -1, -1]], np.int32)
    if len(w) == 6 and w[3:5] == ["on", "the"] and w[5] in SIDES:
        out[SIDES.index(w[5])] = group(w[:3])
    elif len(w) == 8 and w[3] in SIDES and w[4] == "of":
        side = SIDES.index(w[3])
        out[side], out[1 - side] = group(w[:3]), group(w[5:])
    else:
        fail("text", "'G on the <left|right>' or 'G <left|right> of G' (G = '<a|two|three> <colour> <shape>[s]')",
             repr(text))
    return out


def _mask(shape: int, yy, xx, cy: float, cx: float, r: float):
    if shape == 0:   # circle
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if shape == 1:   # square of the circle's area
        s = r * 0.886
        return (np.abs(yy - cy) <= s) & (np.abs(xx - cx) <= s)
    top, bottom = cy - r, cy + 0.8 * r   # upward triangle
    half_width = (yy - top) / (bottom - top) * r
    return (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half_width)


def render(halves: tuple, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """uint8 [size, size, 3] of a scene (see the module docstring): each group stacked in its half."""
    img = np.zeros((size, size, 3), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    hw = size / 2
    for side, g in enumerate(halves):
        if g is None:
            continue
        slot = size / g.count
        r = rng.uniform(0.11, 0.15) * size
        r = min(r, slot / 2 - 1)
        for k in range(g.count):
            jy = max(slot / 2 - r - 1, 0.0)
            cy = slot * (k + 0.5) + rng.uniform(-jy, jy)
            jx = max(hw / 2 - r - 1, 0.0)
            cx = side * hw + hw / 2 + rng.uniform(-jx, jx)
            img[_mask(g.shape, yy, xx, cy, cx, r)] = list(COLORS.values())[g.color]
    return img


def random_scene(rng: np.random.Generator, multi: bool, max_count: int = 2):
    """(halves, first side named): one group on a random side, or two groups (one per half)."""
    def group():
        return Group(int(rng.integers(1, max_count + 1)), int(rng.integers(len(COLORS))), int(rng.integers(len(SHAPES))))
    if multi:
        return (group(), group()), int(rng.integers(2))
    side = int(rng.integers(2))
    return ((group(), None) if side == 0 else (None, group())), side


def labels(halves: tuple) -> np.ndarray:
    """int32 [2, 3]: (count, colour, shape) per side; (0, -1, -1) for an empty half."""
    return np.array([[0, -1, -1] if g is None else [g.count, g.color, g.shape] for g in halves], np.int32)


class Shapes:
    """`n` captioned scenes (a `__len__`/`__getitem__` source for grain). `multi_fraction` of them have two
    groups; `max_count` objects per group at most (1..3). Each example: image uint8 [size, size, 3], input_ids /
    attention_mask int32 [MAX_LEN], halves int32 [2, 3] (`labels`), multi int32 (0/1)."""

    def __init__(self, n: int, seed: int = 0, split: str = "train", size: int = 32, multi_fraction: float = 0.5,
                 max_count: int = 2):
        if not 1 <= max_count <= 3:
            fail("max_count", "1, 2 or 3", max_count)
        if size < 16 or size % 2:
            fail("size", "an even size >= 16", size)
        if not 0.0 <= multi_fraction <= 1.0:
            fail("multi_fraction", "a fraction in [0, 1]", multi_fraction)
        self.n, self.size, self.multi_fraction, self.max_count = int(n), size, multi_fraction, max_count
        self.base = zlib.crc32(f"shapes/{seed}/{split}".encode())

    def __len__(self):
        return self.n

    def scene(self, i: int):
        rng = np.random.default_rng([self.base, i])
        halves, first = random_scene(rng, bool(rng.random() < self.multi_fraction), self.max_count)
        return halves, first, rng

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(i)
        halves, first, rng = self.scene(i)
        ids, mask = encode(caption(halves, first))
        return {"image": render(halves, rng, self.size), "input_ids": ids, "attention_mask": mask,
                "halves": labels(halves), "multi": np.int32(sum(g is not None for g in halves) == 2)}

    def text(self, i: int) -> str:
        halves, first, _ = self.scene(i)
        return caption(halves, first)


def split_halves(images) -> np.ndarray:
    """[N, H, W, C] -> [2N, H, W/2, C]: every image's left half, then its right half (rows 2i, 2i + 1)."""
    x = np.asarray(images)
    w = x.shape[2] // 2
    return np.stack([x[:, :, :w], x[:, :, w:]], axis=1).reshape(-1, x.shape[1], w, x.shape[3])


def attribute_hits(pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image 0/1 hits of predicted halves labels `pred` [N, 2, 3] against the caption's `truth` [N, 2, 3].

    For each image and each side holding a group: `count`, `color`, `shape` of that side; for single-object
    images `position` too (the named side holds something, the other side nothing). An image contributes NaN to
    an attribute it does not have; `attribute_accuracy` averages with nanmean."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape or pred.ndim != 3 or pred.shape[1:] != (2, 3):
        fail("pred", f"int [N, 2, 3] like truth {truth.shape}", pred.shape)
    present = truth[..., 0] > 0                                           # [N, 2]
    out = {}
    for j, name in enumerate(("count", "color", "shape")):
        hit = (pred[..., j] == truth[..., j]).astype(np.float64)
        out[name] = np.where(present, hit, np.nan)                        # [N, 2]
    single = present.sum(1) == 1
    pos = np.all((pred[..., 0] > 0) == present, axis=1).astype(np.float64)
    out["position"] = np.where(single, pos, np.nan)[:, None]
    return out


def attribute_accuracy(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Mean hit rate per attribute and overall ("attribute_accuracy": every attribute of every image counted
    once), see `attribute_hits`. An attribute no image has (position, for multi-object captions only) is left
    out rather than reported as NaN."""
    hits = attribute_hits(pred, truth)
    out = {k: float(np.nanmean(v)) for k, v in hits.items() if np.isfinite(v).any()}
    allv = np.concatenate([v.reshape(-1) for v in hits.values()])
    out["attribute_accuracy"] = float(np.nanmean(allv))
    return out
