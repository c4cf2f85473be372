"""rapidocr (PP-OCR on onnxruntime) through jaxmm.ocr: throughput in images/s at 1 and 2 worker processes, and
word recall / precision on PIL-rendered words by font size and rotation (issue 16; docs/results/ocr.md).

    python bench/ocr_throughput.py                 # full table (a few minutes on 2 cores)
    python bench/ocr_throughput.py --small         # seconds: 24 px at 0 and 5 degrees, 1 page per worker count

Pages are rendered here with matplotlib's DejaVu fonts (the textrich page generator may replace this later).
Matching is the TextDiffuser protocol: lower-cased words, multiset intersection; recall = matched / rendered,
precision = matched / read. Words come from a fixed list plus prices and numbers; a seeded RNG picks them."""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from jaxmm import ocr  # noqa: E402

FONTS = [os.path.join(matplotlib.get_data_path(), "fonts", "ttf", f)
         for f in ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")]
VOCAB = ("open hours coffee menu price total receipt street market garden station north south river bridge "
         "library museum theatre bakery pizza pasta salad water juice ticket platform exit entrance monday "
         "friday sunday morning evening school office hotel airport parking free sale discount order table "
         "chair window paper letter number account balance amount invoice customer service delivery city "
         "village mountain forest ocean island yellow purple orange silver golden winter summer autumn spring "
         "Welcome Closed Special Today Fresh Local Daily Grand Central Public").split()


def random_words(rng, n):
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.15:
            out.append(f"${rng.integers(1, 100)}.{rng.integers(0, 100):02d}")
        elif r < 0.25:
            out.append(str(rng.integers(1, 10000)))
        else:
            out.append(str(rng.choice(VOCAB)))
    return out


def render_page(words, font_px, rotation=0.0, width=800, font=FONTS[0]):
    """Words laid out left to right in lines on a white page (black text), then the page rotated by `rotation`
    degrees (expand, white fill). Returns a PIL image."""
    f = ImageFont.truetype(font, font_px)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    margin, gap, line_h = font_px, probe.textlength("  ", font=f), int(font_px * 1.6)
    rows, row, x = [], [], margin
    for w in words:
        wl = probe.textlength(w, font=f)
        if row and x + wl > width - margin:
            rows.append(row)
            row, x = [], margin
        row.append((w, x))
        x += wl + gap
    rows.append(row)
    img = Image.new("RGB", (width, 2 * margin + line_h * len(rows)), "white")
    draw = ImageDraw.Draw(img)
    for i, r in enumerate(rows):
        for w, x in r:
            draw.text((x, margin + i * line_h), w, fill="black", font=f)
    if rotation:
        img = img.rotate(rotation, expand=True, fillcolor="white", resample=Image.BICUBIC)
    return img


def recall_precision(true_words, read_words):
    """Multiset match of lower-cased words -> (matched, n_true, n_read)."""
    t = collections.Counter(w.lower() for w in true_words)
    r = collections.Counter(w.lower() for w in read_words)
    return sum((t & r).values()), sum(t.values()), sum(r.values())


def accuracy_table(sizes, rotations, n_words, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for size in sizes:
        for rot in rotations:
            words = random_words(rng, n_words)
            res = ocr.read(render_page(words, size, rot), "rapidocr", cache=False)
            m, nt, nr = recall_precision(words, res.words)
            rows.append(dict(font_px=size, rotation=rot, words=nt, read=nr, matched=m,
                             recall=m / nt, precision=m / nr if nr else 0.0))
            print(f"  {size:3d} px {rot:+4.0f} deg: recall {m / nt:.3f} precision {rows[-1]['precision']:.3f}",
                  flush=True)
    return rows


def throughput(pages, workers):
    ocr.read(np.zeros((8, 8, 3), np.uint8), "rapidocr", cache=False)   # load the model in this process first
    out = []
    for n in workers:
        t0 = time.perf_counter()
        ocr.read_many(pages, "rapidocr", workers=n, cache=False, progress=False)
        dt = time.perf_counter() - t0
        out.append(dict(workers=n, images=len(pages), seconds=dt, images_per_s=len(pages) / dt))
        print(f"  workers={n}: {len(pages)} pages in {dt:.1f} s = {len(pages) / dt:.2f} images/s", flush=True)
    return out


def markdown(res):
    lines = [f"Throughput ({res['page']}; wall time of read_many, worker start-up and model load included):", "",
             "| workers | images | seconds | images/s |", "|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['images']} | {r['seconds']:.1f} | {r['images_per_s']:.2f} |"
              for r in res["throughput"]]
    rots = sorted({r["rotation"] for r in res["accuracy"]}, key=lambda a: (abs(a), a))
    lines += ["", "Word recall / precision (rows: font px; columns: rotation in degrees):", "",
              "| px | " + " | ".join(f"{a:+g}°" for a in rots) + " |", "|---" * (len(rots) + 1) + "|"]
    for size in sorted({r["font_px"] for r in res["accuracy"]}):
        cells = {r["rotation"]: r for r in res["accuracy"] if r["font_px"] == size}
        lines.append(f"| {size} | " + " | ".join(
            f"{cells[a]['recall']:.2f} / {cells[a]['precision']:.2f}" for a in rots) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="a quick run: 1 size x 2 rotations, 1 page")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default=None, help="folder for ocr_bench.json and ocr_bench.md")
    a = p.parse_args(argv)
    if a.small:
        sizes, rotations, n_words, n_pages, page_words = [24], [0, 5], 10, 1, 20
    else:
        sizes, rotations, n_words, n_pages, page_words = [6, 8, 10, 12, 16, 20, 24, 32, 40], [0, -5, 5, -15, 15], \
            40, 8, 120
    rng = np.random.default_rng(1)
    pages = [render_page(random_words(rng, page_words), int(rng.choice([12, 16, 20])), width=800)
             for _ in range(n_pages)]
    page = f"{n_pages} pages of 800 x {pages[0].size[1]} px, {page_words} words at 12-20 px"
    print("throughput:", page)
    res = dict(command="python bench/ocr_throughput.py" + (" --small" if a.small else ""), page=page,
               cpus=os.cpu_count(), throughput=throughput(pages, a.workers))
    print("accuracy:")
    res["accuracy"] = accuracy_table(sizes, rotations, n_words)
    md = markdown(res)
    print(md)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "ocr_bench.json"), "w") as f:
            json.dump(res, f, indent=1)
        with open(os.path.join(a.out, "ocr_bench.md"), "w") as f:
            f.write(md + "\n")
    return res


if __name__ == "__main__":
    main()
