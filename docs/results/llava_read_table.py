"""Print the ablation table of docs/results/llava_read.md from the runs' summary.json files
(runs/lr_<row>[_rapidocr]_s<seed>, made by the commands in that file) and their `/usr/bin/time -v` logs
(runs/lr_<row>[_rapidocr]_s<seed>.log: CPU time = user + sys). Cells: mean over the seeds that ran, with
(min-max) and the seed count when more than one.

    python docs/results/llava_read_table.py
"""
import json
import os
import re

ROWS = [("low_res", "low-res ViT only (32 px view), no OCR"),
        ("dual_res", "dual-res: + 128 px ConvNeXt, fusion after blocks 1, 2"),
        ("ocr_plain", "low-res + OCR without layout"), ("ocr_layout", "low-res + OCR with layout"),
        ("full", "full LLaVA-Read: dual-res + OCR with layout")]
SEEDS = (0, 1, 2)


def runs(v):
    out = []
    for s in SEEDS:
        p = f"runs/lr_{v}_s{s}/summary.json"
        if os.path.exists(p):
            out.append((s, json.load(open(p)), p[:-len("/summary.json")] + ".log"))
    return out


def cpu(log):
    try:
        text = open(log).read()
        return sum(float(re.search(f"{k} time \\(seconds\\): ([0-9.]+)", text).group(1)) for k in ("User", "System"))
    except (OSError, AttributeError):
        return None


def cell(rs, key, fmt=".3f"):
    vals = [r[key] for _, r, _ in rs if key in r]
    if not vals:
        return "not run"
    m = sum(vals) / len(vals)
    return f"{m:{fmt}}" if len(vals) == 1 else f"{m:{fmt}} ({min(vals):{fmt}}-{max(vals):{fmt}}, n={len(vals)})"


print("| row (config variant) | oracle OCR: small | oracle OCR: large | rapidocr at eval: small | "
      "rapidocr at eval: large | final train loss | eval answer loss | seeds | CPU s per run |")
print("|---|---|---|---|---|---|---|---|---|")
for v, name in ROWS:
    s = runs(v)
    r = s if v in ("low_res", "dual_res") else runs(v + "_rapidocr")  # no OCR: the eval engine does not enter
    times = [t for t in (cpu(log) for _, _, log in s) if t is not None]
    print(f"| {name} (`{v}`) | {cell(s, 'eval_accuracy/small')} | {cell(s, 'eval_accuracy/large')} | "
          f"{cell(r, 'eval_accuracy/small')} | {cell(r, 'eval_accuracy/large')} | {cell(s, 'final_loss')} | "
          f"{cell(s, 'eval_loss')} | {','.join(str(x) for x, _, _ in s) or '—'} | "
          f"{'—' if not times else format(sum(times) / len(times), '.0f')} |")
