"""Rows of docs/results/lara.md from runs/lara/<variant>_s<seed>/metrics.jsonl and the runs/<variant>_s<seed>.log of
`/usr/bin/time -v` (CPU s).   python docs/results/lara_table.py <variant> "<row name>" 0,1,2"""
import json
import sys

from _runs import cpu_seconds, mean_sd

MAIN = ["eval_trins_vqa_exact", "eval_trins_vqa_contains", "eval_visual_exact", "eval_visual_contains",
        "eval_trins_cap_BLEU-4", "eval_trins_cap_METEOR", "eval_trins_cap_ROUGE-L", "eval_trins_cap_CIDEr", "eval_loss"]
KINDS = ["eval_trins_vqa_exact/" + k for k in ("first_line", "price", "key_value", "read_at", "above", "count_color")] + \
        ["eval_visual_exact/" + k for k in ("background", "count_shapes", "page_kind", "shape_color")]

def load(variant, seed):
    d = f"runs/lara/{variant}_s{seed}"
    last = [json.loads(l) for l in open(f"{d}/metrics.jsonl") if "eval_loss" in l][-1]
    last["cpu"] = round(cpu_seconds(f"runs/{variant}_s{seed}.log"))
    return last

def fmt(vals, nd):
    return mean_sd(vals, f".{nd}f")

def rows(name, runs):
    seeds = ",".join(str(s) for s, _ in runs)
    m = [fmt([r[k] for _, r in runs], 3) for k in MAIN]
    k = [fmt([r[k] for _, r in runs], 2) for k in KINDS]
    cpu = ", ".join(str(r.get("cpu", "?")) for _, r in runs)
    print(f"| {name} | {seeds} | " + " | ".join(m) + f" | {cpu} |")
    print(f"| {name} | {seeds} | " + " | ".join(k) + " |")

if __name__ == "__main__":
    variant, name = sys.argv[1], sys.argv[2]
    seeds = [int(s) for s in sys.argv[3].split(",")]
    rows(name, [(s, load(variant, s)) for s in seeds])
