"""Print the ablation table of docs/results/llava_read.md (round 2 and its seeds) from the runs' summary.json
files and their `/usr/bin/time -v` logs (CPU time = user + sys):

    runs/lr_<row>_s<seed>/summary.json, runs/lr_<row>_s<seed>.log                    the trained rows (oracle OCR)
    runs/lr_<row>_rapidocr_s<seed>/summary.json, runs/lr_<row>_rapidocr_s<seed>.log  eval only, rapidocr at eval

Seed 0 of round 2 (lread2, runs deleted since) is taken from the table it committed (ROUND2_S0 below) unless its
run directory exists. Cells: mean ± sample sd (n seeds) of the seeds that ran; one seed: the value alone. The
accuracy cells end with the pooled hits over those seeds, "hits/questions" (each seed draws its own 96 eval pages,
so the small/large split differs by seed: counted here from jaxmm.data.llava_read.LlavaReadSource).

    python docs/results/llava_read_table.py [--plot]     # --plot: also docs/results/llava_read_ablation.png
"""
import json
import os
import sys

from _runs import cpu_seconds, mean_sd

ROWS = [("low_res", "low-res ViT only (32 px view), no OCR"),
        ("dual_res", "dual-res: + 128 px ConvNeXt, fusion after blocks 1, 2"),
        ("ocr_plain", "low-res + OCR without layout"), ("ocr_layout", "low-res + OCR with layout"),
        ("full", "full LLaVA-Read: dual-res + OCR with layout")]
SEEDS = (0, 1, 2)
# round 2, seed 0, as committed in docs/results/llava_read.md by lread2 (commit ce7a141's table; 67 small /
# 29 large eval questions): hits 3, 5, 4 of 67 small, 0 of 29 large; CPU-s of `/usr/bin/time -v`
ROUND2_S0 = {"low_res": {"eval_accuracy/small": 3 / 67, "eval_accuracy/large": 0.0, "final_loss": 2.571,
                         "eval_loss": 2.831, "cpu_s": 331},
             "ocr_plain": {"eval_accuracy/small": 5 / 67, "eval_accuracy/large": 0.0, "final_loss": 2.381,
                           "eval_loss": 2.651, "cpu_s": 355},
             "ocr_layout": {"eval_accuracy/small": 4 / 67, "eval_accuracy/large": 0.0, "final_loss": 2.489,
                            "eval_loss": 2.670, "cpu_s": 370}}


def runs(v):
    """[(seed, summary with "cpu_s")] of variant `v`."""
    out = []
    for s in SEEDS:
        p = f"runs/lr_{v}_s{s}"
        if os.path.exists(p + "/summary.json"):
            out.append((s, {**json.load(open(p + "/summary.json")), "cpu_s": cpu_seconds(p + ".log")}))
        elif s == 0 and v in ROUND2_S0:
            out.append((s, ROUND2_S0[v]))
    return out


_KINDS = {}


def questions(seed, kind):
    """How many of seed's 96 eval questions are `kind` ("small" / "large")."""
    if seed not in _KINDS:
        from jaxmm.data.llava_read import LlavaReadSource
        src = LlavaReadSource(96, seed=seed, split="eval", ocr="none")
        _KINDS[seed] = [src[i]["kind"] for i in range(len(src))]
    return _KINDS[seed].count(kind)


def cell(rs, key, fmt=".3f"):
    vals = [r[key] for _, r in rs if r.get(key) is not None]
    if not vals:
        return "not run"
    out = mean_sd(vals, fmt, n=True)
    if key.startswith("eval_accuracy/"):
        n = [questions(sd, key.split("/")[1]) for sd, r in rs if r.get(key) is not None]
        hits = sum(round(v * k) for v, k in zip(vals, n))
        out += f"; {hits}/{sum(n)}"
    return out


print("| row (config variant) | oracle OCR: small | oracle OCR: large | rapidocr at eval: small | "
      "rapidocr at eval: large | final train loss | eval answer loss | seeds | CPU s per run (+ rapidocr eval) |")
print("|---|---|---|---|---|---|---|---|---|")
for v, name in ROWS:
    s = runs(v)
    r = s if v in ("low_res", "dual_res") else runs(v + "_rapidocr")  # no OCR: the eval engine does not enter
    seeds = ",".join(str(x) for x, _ in s) or "—"
    if r is not s and r:
        seeds += f" (rapidocr: {','.join(str(x) for x, _ in r)})"
    times = cell(s, "cpu_s", ".0f") + ("" if r is s or not r else f" (+ {cell(r, 'cpu_s', '.0f')})")
    print(f"| {name} (`{v}`) | {cell(s, 'eval_accuracy/small')} | {cell(s, 'eval_accuracy/large')} | "
          f"{cell(r, 'eval_accuracy/small')} | {cell(r, 'eval_accuracy/large')} | {cell(s, 'final_loss')} | "
          f"{cell(s, 'eval_loss')} | {seeds} | {times.replace('not run', '—')} |")

# per seed: hits small / hits large, eval answer loss (oracle OCR; the OCR rows' rapidocr eval in its own columns)
cols = [v for v, _ in ROWS] + [v + "_rapidocr" for v in ("ocr_plain", "ocr_layout", "full")]
per_col = {v: dict(runs(v)) for v in cols}   # each run's summary read once
print()
print("| seed | " + " | ".join(f"`{v}`" for v in cols) + " |")
print("|---" * (len(cols) + 1) + "|")
for sd in SEEDS:
    out = []
    for v in cols:
        r = per_col[v].get(sd)
        if r is None:
            out.append("not run")
            continue
        ns, nl = questions(sd, "small"), questions(sd, "large")
        out.append(f"{round(r['eval_accuracy/small'] * ns)}/{ns}, {round(r['eval_accuracy/large'] * nl)}/{nl}, "
                   f"{r['eval_loss']:.3f}")
    print(f"| {sd} | " + " | ".join(out) + " |")


def plot(path="docs/results/llava_read_ablation.png"):
    """The table as a figure: per row, each seed's small- and large-text exact match (oracle OCR; dots, the bar the
    mean), its held-out answer loss (one line per seed across the rows: the paired comparison), and the training
    loss curves (metrics.jsonl, mean over the seeds whose run directory exists)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    names = [v for v, _ in ROWS]
    colours = {0: "tab:blue", 1: "tab:orange", 2: "tab:green"}
    per = {v: dict(runs(v)) for v in names}
    for ax, key, title in ((axes[0], "eval_accuracy/small", "small-text exact match"),
                           (axes[1], "eval_accuracy/large", "large-text exact match"),
                           (axes[2], "eval_loss", "held-out answer loss (nats / token)")):
        for i, v in enumerate(names):
            vals = [r[key] for r in per[v].values() if r.get(key) is not None]
            if vals and key != "eval_loss":
                ax.bar(i, sum(vals) / len(vals), color="0.85", width=0.6)
        for s in SEEDS:
            xs = [i for i, v in enumerate(names) if s in per[v]]
            ys = [per[names[i]][s][key] for i in xs]
            ax.plot(xs, ys, "o" + ("-" if key == "eval_loss" else ""), color=colours[s], label=f"seed {s}", ms=5)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    for v in names:
        curves = []
        for s in SEEDS:
            p = f"runs/lr_{v}_s{s}/metrics.jsonl"
            if os.path.exists(p):
                rows = [json.loads(x) for x in open(p)]
                curves.append({r["step"]: r["loss"] for r in rows if "loss" in r})
        if curves:
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            axes[3].plot(steps, [sum(c[t] for c in curves) / len(curves) for t in steps], label=f"{v} ({len(curves)})")
    axes[3].set_title("training loss (mean over seeds)", fontsize=10)
    axes[3].set_xlabel("step")
    axes[3].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__" and "--plot" in sys.argv:
    plot()
