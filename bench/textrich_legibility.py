"""Is the text of jaxmm.data.textrich pages legible in a low-resolution view? PP-OCR (rapidocr) word recall on
the full page against views whose long side is 336 / 224 px (a CLIP-L/14 low-res encoder's input: 24 / 16
patches of 14 px), each view upsampled back to the page size (bicubic) before OCR so that the detector sees
the same geometry. Recall is by the word's font size on the full page; "answerable" is the share of reading
questions (read_at, key_value, price) whose answer is among the OCR'd words. Results: docs/results/textrich.md.

    .venv/bin/python bench/textrich_legibility.py [--pages 12] [--out runs/textrich_legibility.json]
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import numpy as np
from PIL import Image

BINS = ((6, 9), (10, 13), (14, 19), (20, 40))


def view(image: np.ndarray, long_side: int | None) -> np.ndarray:
    if long_side is None:
        return image
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    small = Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
    return np.asarray(small.resize((w, h), Image.BICUBIC))


def ocr_words(engine, image) -> list[str]:
    out = engine(image)
    return [w.lower() for line in (out.txts or ()) for w in line.split()]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=12)
    parser.add_argument("--out", default="runs/textrich_legibility.json")
    args = parser.parse_args()
    from rapidocr import RapidOCR

    from jaxmm.data.textrich import KINDS, make_page, page_questions

    engine = RapidOCR()
    views = {"full": None, "336": 336, "224": 224}
    hits = {v: Counter() for v in views}
    totals, answerable, n_questions = Counter(), Counter(), 0
    t0 = time.time()
    for s in range(args.pages):
        page = make_page(1000 + s, KINDS[s % len(KINDS)])
        qs = [q for q in page_questions(page, s) if q.kind in ("read_at", "key_value", "price")]
        n_questions += len(qs)
        for b in BINS:
            totals[b] += int(((page.sizes >= b[0]) & (page.sizes <= b[1])).sum())
        for name, side in views.items():
            found = Counter(ocr_words(engine, view(page.image, side)))
            left = found.copy()
            for word, size in zip(page.words, page.sizes):
                w = word.lower()
                if left[w] > 0:
                    left[w] -= 1
                    hits[name][next(b for b in BINS if b[0] <= size <= b[1])] += 1
            answerable[name] += sum(q.answer.lower() in found for q in qs)
        print(f"page {s + 1}/{args.pages} ({page.kind}, {page.image.shape[1]}x{page.image.shape[0]}) "
              f"{time.time() - t0:.0f}s", flush=True)
    table = {name: {f"{b[0]}-{b[1]}px": hits[name][b] / totals[b] if totals[b] else None for b in BINS}
             for name in views}
    result = {"pages": args.pages, "words_per_bin": {f"{b[0]}-{b[1]}px": totals[b] for b in BINS},
              "recall": table, "reading_questions": n_questions,
              "answerable": {k: answerable[k] / max(1, n_questions) for k in views}}
    print(json.dumps(result, indent=1))
    import pathlib
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
