"""Is the text of jaxmm.data.textrich pages legible in a low-resolution view? PP-OCR (rapidocr) word recall on
the full page against views whose long side is 336 / 224 px (a CLIP-L/14 low-res encoder's input: 24 / 16
patches of 14 px per side), each view upsampled back to the page size (bicubic) before OCR so that the detector
sees the same geometry. A ground-truth word counts as read when an OCR line whose box holds the word's centre
contains the word (lower-cased). Recall is reported by the word's *effective* size (font size x view scale, in
view pixels), and, on the full page, by font size and rotation. "answer words" are the words answering the
reading questions (read_at, key_value, price): their share read per view is the share of those questions an
OCR-based reader could answer at all. Results: docs/results/textrich.md.

    .venv/bin/python bench/textrich_legibility.py [--pages 18] [--out runs/textrich_legibility.json]
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time
from collections import defaultdict

import numpy as np
from PIL import Image

EFF_BINS = ((0, 4), (4, 6), (6, 8), (8, 12), (12, 20), (20, 99))
FONT_BINS = ((6, 9), (10, 13), (14, 19), (20, 40))


def view(image: np.ndarray, long_side: int | None) -> tuple[np.ndarray, float]:
    if long_side is None:
        return image, 1.0
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    small = Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
    return np.asarray(small.resize((w, h), Image.BICUBIC)), scale


def read_mask(engine, image, page) -> np.ndarray:
    """[N] bool: word i was read (an OCR line over its centre contains it)."""
    out = engine(image)
    read = np.zeros(len(page.words), bool)
    if out.txts is None:
        return read
    centres = page.boxes.mean(1)
    for text, box in zip(out.txts, out.boxes):
        tokens = {t.lower() for t in text.split()}
        box = np.asarray(box)
        lo, hi = box.min(0) - 2, box.max(0) + 2
        inside = np.all((centres >= lo) & (centres <= hi), axis=1)
        read |= inside & np.array([w.lower() in tokens for w in page.words])
    return read


def _bin(value, bins):
    return next(f"{a}-{b}" for a, b in bins if a <= value < b + (1 if bins is FONT_BINS else 0))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=18)
    parser.add_argument("--out", default="runs/textrich_legibility.json")
    args = parser.parse_args()
    from rapidocr import RapidOCR

    from jaxmm.data.textrich import KINDS, make_page, page_questions

    engine = RapidOCR()
    views = {"full": None, "336": 336, "224": 224}
    eff = {v: defaultdict(lambda: [0, 0]) for v in views}        # view -> bin -> [read, total]
    by_font = defaultdict(lambda: [0, 0])                          # (font bin, rotated) -> [read, total], full
    answers = {v: [0, 0] for v in views}
    t0 = time.time()
    for s in range(args.pages):
        page = make_page(2000 + s, KINDS[s % len(KINDS)])
        qs = [q for q in page_questions(page, s) if q.kind in ("read_at", "key_value", "price")]
        targets = [page.words.index(q.answer) for q in qs if q.answer in page.words]
        for name, side in views.items():
            image, scale = view(page.image, side)
            read = read_mask(engine, image, page)
            for i, size in enumerate(page.sizes):
                cell = eff[name][_bin(size * scale, EFF_BINS)]
                cell[0] += int(read[i])
                cell[1] += 1
                if name == "full":
                    cell = by_font[(_bin(size, FONT_BINS), page.rotation != 0)]
                    cell[0] += int(read[i])
                    cell[1] += 1
            answers[name][0] += int(sum(read[i] for i in targets))
            answers[name][1] += len(targets)
        print(f"page {s + 1}/{args.pages} ({page.kind}, {page.image.shape[1]}x{page.image.shape[0]}, "
              f"rotation {page.rotation}) {time.time() - t0:.0f}s", flush=True)
    result = {
        "pages": args.pages,
        "recall_by_effective_size": {v: {b: {"recall": r / n, "words": n} for b, (r, n) in sorted(
            eff[v].items(), key=lambda kv: float(kv[0].split("-")[0]))} for v in views},
        "full_page_recall_by_font_size_and_rotation": {f"{b} {'rotated' if rot else 'upright'}":
                                                       {"recall": r / n, "words": n}
                                                       for (b, rot), (r, n) in sorted(by_font.items())},
        "answer_words_read": {v: {"read": r, "of": n} for v, (r, n) in answers.items()},
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(result, indent=1))
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
