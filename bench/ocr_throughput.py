"""rapidocr (PP-OCR on onnxruntime) through jaxmm.ocr on jaxmm.data.textrich pages (issue 16; docs/results/ocr.md):
word recall and precision by font size and page rotation, the disk cache on a 1024 px page, and read_many's
throughput at 1 and 2 worker processes (wall and CPU time, with the load average beside them).

    python bench/ocr_throughput.py --out runs/ocr_bench        # everything (about 8 CPU-minutes)
    python bench/ocr_throughput.py --small                     # seconds: 24 px, 0 and 5 degrees, 2 small pages

Pages: for every requested text size and rotation, the same page seeds (1000 + k, kind KINDS[k % 6]) drawn with
`make_page(seed, kind, text_size=size, rotation=+-angle)` (sign alternating, so each kind is seen turned both
ways with 12 pages), so cells differ only in size and angle. Rows bin each word by its own drawn size (`Page.sizes`: an element
can shrink below the requested size to fit its width).

Matching rule (one-to-one, position-aware): a read word matches a ground-truth word when their lower-cased texts
are equal and the read word's box centre lies inside the truth word's quadrilateral grown by half its height on
every side; candidate pairs are taken greedily by centre distance, each word used once. Recall = matched truth
words / truth words; precision = matched read words / read words, a read word counted in the cell of the truth
word it matched or, unmatched, of the nearest truth word (by box centre). Truth words not wholly inside the image
(corners turned out of the frame) are left out, with the read words nearest to them."""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from jaxmm import ocr  # noqa: E402
from jaxmm.data.textrich import KINDS, make_page  # noqa: E402

SIZES = (6, 8, 10, 12, 16, 20, 24, 32, 40)
ROTATIONS = (0, 5, 15)
ROWS = ((6, 7), (8, 9), (10, 11), (12, 15), (16, 19), (20, 23), (24, 31), (32, 40))   # word size bins, inclusive


def _frame(quads: np.ndarray):
    """Per quad [N, 4, 2] (TL, TR, BR, BL of a rotated rectangle): origin, unit axes, width and height."""
    e1, e2 = quads[:, 1] - quads[:, 0], quads[:, 3] - quads[:, 0]
    w, h = np.linalg.norm(e1, axis=-1), np.linalg.norm(e2, axis=-1)
    return quads[:, 0], e1 / np.maximum(w, 1e-9)[:, None], e2 / np.maximum(h, 1e-9)[:, None], w, h


def match_words(truth_words, truth_quads, read_words, read_quads):
    """The matching rule of the module docstring -> (truth_matched bool [N], read_matched bool [M],
    nearest int [M]: each read word's matched truth word, else the truth word with the nearest centre)."""
    n, m = len(truth_words), len(read_words)
    truth_matched, read_matched = np.zeros(n, bool), np.zeros(m, bool)
    nearest = np.zeros(m, np.int64)
    if n == 0 or m == 0:
        return truth_matched, read_matched, nearest
    tq, rq = np.asarray(truth_quads, np.float64), np.asarray(read_quads, np.float64)
    rc, tc = rq.mean(1), tq.mean(1)
    dist = np.linalg.norm(rc[:, None] - tc[None], axis=-1)                      # [M, N]
    nearest[:] = dist.argmin(1)
    origin, u, v, w, h = _frame(tq)
    d = rc[:, None] - origin[None]                                               # [M, N, 2]
    pu, pv = (d * u[None]).sum(-1), (d * v[None]).sum(-1)
    g = h[None] / 2
    inside = (pu >= -g) & (pu <= w[None] + g) & (pv >= -g) & (pv <= h[None] + g)
    same = np.array([[a.lower() == b.lower() for b in truth_words] for a in read_words])
    cand = np.argwhere(inside & same)
    for j, i in sorted(cand.tolist(), key=lambda ji: dist[ji[0], ji[1]]):
        if not read_matched[j] and not truth_matched[i]:
            read_matched[j] = truth_matched[i] = True
            nearest[j] = i
    return truth_matched, read_matched, nearest


def _row(size: int) -> str:
    return next(f"{a}-{b}" for a, b in ROWS if a <= size <= b)


def _cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime


def accuracy_table(sizes, rotations, n_pages, cache=False, kinds=KINDS, **settings):
    cells = defaultdict(lambda: dict(words=0, matched=0, read=0, read_matched=0, pages=set(), out_of_frame=0))
    t0 = time.perf_counter()
    for size in sizes:
        for rot in rotations:
            for k in range(n_pages):
                sign = 1 if (k + k // len(kinds)) % 2 == 0 else -1
                page = make_page(1000 + k, kinds[k % len(kinds)], text_size=size, rotation=sign * rot)
                res = ocr.read(page.image, "rapidocr", cache=cache, **settings)
                tm, rm, near = match_words(page.words, page.boxes, res.words, res.boxes)
                h, w = page.image.shape[:2]
                q = page.boxes
                framed = np.all((q[..., 0] >= 0) & (q[..., 0] <= w) & (q[..., 1] >= 0) & (q[..., 1] <= h), 1)
                for i, s in enumerate(page.sizes):
                    c = cells[(_row(int(s)), rot)]
                    if not framed[i]:
                        c["out_of_frame"] += 1
                        continue
                    c["words"] += 1
                    c["matched"] += int(tm[i])
                    c["pages"].add(k)
                for j in range(len(res)):
                    i = int(near[j])
                    if framed[i]:
                        c = cells[(_row(int(page.sizes[i])), rot)]
                        c["read"] += 1
                        c["read_matched"] += int(rm[j])
            print(f"  text_size {size:2d} rotation +-{rot:2d}: {n_pages} pages, {time.perf_counter() - t0:.0f} s",
                  flush=True)
    rows = []
    for (row, rot), c in sorted(cells.items(), key=lambda kv: (int(kv[0][0].split("-")[0]), kv[0][1])):
        rows.append(dict(font_px=row, rotation=rot, words=c["words"], matched=c["matched"], read=c["read"],
                         read_matched=c["read_matched"], pages=len(c["pages"]), out_of_frame=c["out_of_frame"],
                         recall=c["matched"] / c["words"] if c["words"] else None,
                         precision=c["read_matched"] / c["read"] if c["read"] else None))
    return rows


def cache_timing(folder):
    """A 1024 px page (the first document seed whose long side is 1024) read twice through the disk cache."""
    seed = next(s for s in range(100) if max(make_page(s, "document").image.shape[:2]) == 1024)
    page = make_page(seed, "document")
    out = dict(seed=seed, shape=list(page.image.shape[:2]), words=len(page.words))
    results = []
    for call in ("first", "second"):
        (c0, _), t0 = _cpu(), time.perf_counter()
        results.append(ocr.read(page.image, "rapidocr", cache=folder))
        out[f"{call}_s"], out[f"{call}_cpu_s"] = time.perf_counter() - t0, _cpu()[0] - c0
    assert results[0].words == results[1].words and np.array_equal(results[0].boxes, results[1].boxes)
    out["words_read"] = len(results[0])
    print(f"  cache: {out}", flush=True)
    return out


def throughput(pages, workers):
    ocr.read(np.zeros((8, 8, 3), np.uint8), "rapidocr", cache=False)   # load the model in this process first
    out = []
    for n in workers:
        load = os.getloadavg()[0]
        (s0, c0), t0 = _cpu(), time.perf_counter()
        ocr.read_many(pages, "rapidocr", workers=n, cache=False, progress=False)
        dt = time.perf_counter() - t0
        s1, c1 = _cpu()
        out.append(dict(workers=n, images=len(pages), seconds=dt, images_per_s=len(pages) / dt,
                        cpu_s=(s1 - s0) + (c1 - c0), load_before=load, load_after=os.getloadavg()[0]))
        print(f"  workers={n}: {len(pages)} pages in {dt:.1f} s = {len(pages) / dt:.2f} images/s, "
              f"CPU {out[-1]['cpu_s']:.1f} s, load {load:.1f} -> {out[-1]['load_after']:.1f}", flush=True)
    return out


def _f(x):
    return "—" if x is None else f"{x:.2f}"


def markdown(res):
    lines = []
    if "throughput" in res:
        lines += [f"Throughput ({res['page']}; read_many wall time with worker start-up and model load included; "
                  "CPU time of this process and its workers):", "",
                  "| workers | images | wall s | images/s | CPU s | load avg before / after |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['workers']} | {r['images']} | {r['seconds']:.1f} | {r['images_per_s']:.2f} | {r['cpu_s']:.1f} "
                  f"| {r['load_before']:.1f} / {r['load_after']:.1f} |" for r in res["throughput"]]
    c = res.get("cache")
    lines += [] if c is None else ["", f"Cache: a {c['shape'][0]} x {c['shape'][1]} px document page (seed {c['seed']}, {c['words']} "
              f"words, {c['words_read']} read): first read {c['first_s']:.2f} s wall / {c['first_cpu_s']:.2f} s CPU, "
              f"second (cache hit) {c['second_s'] * 1000:.1f} ms wall / {c['second_cpu_s'] * 1000:.1f} ms CPU."]
    if "accuracy" not in res:
        return "\n".join(lines)
    rots = sorted({r["rotation"] for r in res["accuracy"]})
    lines += ["", "Word recall / precision (words in the cell) by the word's font size (rows, px) and the page's "
              "rotation (columns, degrees, either sign):", "",
              "| font px | " + " | ".join(f"{'±' if a else ''}{a}°" for a in rots) + " |", "|---" * (len(rots) + 1) + "|"]
    for row in [f"{a}-{b}" for a, b in ROWS]:
        cells = {r["rotation"]: r for r in res["accuracy"] if r["font_px"] == row}
        if not any(c["words"] for c in cells.values()):
            continue
        lines.append(f"| {row} | " + " | ".join(
            f"{_f(cells[a]['recall'])} / {_f(cells[a]['precision'])} ({cells[a]['words']})" if a in cells else "—"
            for a in rots) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="a quick run: 24 px x 2 rotations, a sign and a receipt "
                   "page, no cache timing")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--pages", type=int, default=12, help="pages per (text size, rotation) cell")
    p.add_argument("--throughput-pages", type=int, default=24)
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="text sizes of the accuracy table")
    p.add_argument("--rotations", type=int, nargs="+", default=list(ROTATIONS), help="its rotations (degrees)")
    p.add_argument("--use-cls", choices=["true", "false"], default=None,
                   help="rapidocr's 180-degree line classifier for the accuracy table (default: the engine's)")
    p.add_argument("--cache", default=None, help="OCR cache folder for the accuracy table (reruns are free)")
    p.add_argument("--parts", nargs="+", default=["throughput", "cache", "accuracy"],
                   choices=["throughput", "cache", "accuracy"], help="what to measure (default: all)")
    p.add_argument("--out", default=None, help="folder for ocr_bench.json and ocr_bench.md")
    a = p.parse_args(argv)
    settings = {}
    if a.small:
        sizes, rotations, n_pages, n_tp, kinds = [24], [0, 5], 2, 2, ("sign", "receipt")
    else:
        sizes, rotations, n_pages, n_tp, kinds = a.sizes, a.rotations, a.pages, a.throughput_pages, KINDS
    settings = {} if a.use_cls is None else {"use_cls": a.use_cls == "true"}
    pages = [make_page(3000 + k, kinds[k % len(kinds)]).image for k in range(n_tp)]
    page = f"{n_tp} textrich pages, seeds 3000-{3000 + n_tp - 1}, kinds {', '.join(kinds)}, " \
           f"{sum(x.shape[0] * x.shape[1] for x in pages) / n_tp / 1e3:.0f} kpx on average"
    res = dict(command="python bench/ocr_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]), page=page,
               cpus=os.cpu_count(), versions=_versions())
    if "throughput" in a.parts:
        print("throughput:", page)
        res["throughput"] = throughput(pages, a.workers)
    if "cache" in a.parts and not a.small:
        with tempfile.TemporaryDirectory() as folder:
            res["cache"] = cache_timing(folder)
    if "accuracy" in a.parts:
        print("accuracy:")
        res["accuracy"] = accuracy_table(sizes, rotations, n_pages, cache=a.cache or False, kinds=kinds, **settings)
        res["accuracy_settings"] = settings
    md = markdown(res)
    print(md)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "ocr_bench.json"), "w") as f:
            json.dump(res, f, indent=1)
        with open(os.path.join(a.out, "ocr_bench.md"), "w") as f:
            f.write(md + "\n")
    return res


def _versions():
    from importlib.metadata import version
    return {n: version(n) for n in ("rapidocr", "onnxruntime")}


if __name__ == "__main__":
    main()
