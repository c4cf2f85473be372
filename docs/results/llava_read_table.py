"""Print the ablation table of docs/results/llava_read.md from the runs' summary.json files (runs/lr_<row>[_rapidocr]_s0,
made by the commands in that file; CPU time from each run's /usr/bin/time log runs/lr_<row>_s0.log when present).

    python docs/results/llava_read_table.py
"""
import json, os, sys
rows = [("low_res", "low-res ViT only (32 px view), no OCR"), ("dual_res", "dual-res: + 128 px ConvNeXt, fusion after blocks 1, 2"),
        ("ocr_plain", "low-res + OCR without layout"), ("ocr_layout", "low-res + OCR with layout"),
        ("full", "full LLaVA-Read: dual-res + OCR with layout")]
print("| row (config variant) | oracle OCR: small | oracle OCR: large | rapidocr at eval: small | rapidocr at eval: large | final train loss | eval answer loss | CPU time |")
print("|---|---|---|---|---|---|---|---|")
def get(v):
    p = f"runs/lr_{v}_s0/summary.json"
    return json.load(open(p)) if os.path.exists(p) else None
def cpu(v):
    try:
        line = [l for l in open(f"runs/lr_{v}_s0.log") if l.startswith("user ")][-1].split()
        return f"{float(line[1]) + float(line[3]):.0f} s"
    except Exception:
        return "—"
def acc(s, k):
    return "not run" if s is None else (f"{s[k]:.3f}" if k in s else "—")
for v, name in rows:
    s, r = get(v), get(v + "_rapidocr")
    if v in ("low_res", "dual_res"):
        r = s  # no OCR in these rows: the eval engine does not enter
    print(f"| {name} (`{v}`) | {acc(s, 'eval_accuracy/small')} | {acc(s, 'eval_accuracy/large')} | "
          f"{acc(r, 'eval_accuracy/small')} | {acc(r, 'eval_accuracy/large')} | "
          f"{'—' if s is None else format(s['final_loss'], '.3f')} | "
          f"{'—' if s is None else format(s['eval_loss'], '.3f')} | {cpu(v)} |")
