"""The 3-seed table of docs/results/artist.md from one run per seed (each run inside the issue's 45 minutes):

    python -m train --config configs/artist.py --workdir runs/artist_s<k> "--config.seeds=(<k>,)"   # k = 0, 1, 2
    python docs/results/artist_table.py [--grid]    # --grid: also docs/results/artist_seeds_samples.png

reads runs/artist_s<k>/summary.json and the `/usr/bin/time -v` log runs/artist_s<k>.log. Cells: mean ± sample sd
over the seeds that ran, then each seed's value. The grid stacks each seed's sample rows (ground truth,
prompt_only, textdiffuser, artist, artist with the true glyphs when the run has it, the textual model's glyphs;
the first 8 held-out prompts), seed 0 on top.
"""
import json
import os
import sys

from _runs import cpu_seconds, mean_sd

SEEDS = (0, 1, 2)
ROWS = [("ground_truth", "ground truth"), ("prompt_only", "prompt_only"),
        ("textdiffuser", "textdiffuser (PIL glyph + mask channels)"),
        ("artist", "artist (textual-model features, zero convs)"),
        ("artist_with_true_glyphs", "diagnostic: artist with the true glyphs fed to its textual branch"),
        ("textual_model_glyphs", "the textual model's own glyphs")]
METRICS = [("ocr_accuracy", "OCR acc"), ("ocr_precision", "OCR P"), ("ocr_recall", "OCR R"), ("ocr_f", "OCR F"),
           ("fid_self", "FID (self-trained)"), ("clip_score_self", "CLIP-score (self-trained)")]
GRID_ROWS = ("ground_truth", "prompt_only", "textdiffuser", "artist", "artist_with_true_glyphs", "glyphs")


def load():
    out = {}
    for s in SEEDS:
        p = f"runs/artist_s{s}"
        if os.path.exists(p + "/summary.json"):
            out[s] = {**json.load(open(p + "/summary.json")), "cpu_s": cpu_seconds(p + ".log")}
    return out


def cell(vals, fmt):
    if not vals:
        return "–"
    return mean_sd(vals, fmt) + (" (" + ", ".join(f"{v:{fmt}}" for v in vals) + ")" if len(vals) > 1 else "")


def main():
    runs = load()
    if not runs:
        sys.exit("no runs/artist_s<k>/summary.json here: run the commands in this script's docstring first")
    seeds = sorted(runs)
    print(f"seeds {seeds}; CPU s per run: " + ", ".join(f"{runs[s]['cpu_s']:.0f}" if runs[s]["cpu_s"] else "?"
                                                          for s in seeds))
    print("| method | " + " | ".join(name for _, name in METRICS) + " |")
    print("|---" * (len(METRICS) + 1) + "|")
    for key, name in ROWS:
        cells = []
        for m, _ in METRICS:
            # FID of the ground truth against itself is 0 up to float error (-1e-8 would print as -0.000)
            vals = [runs[s][f"{key}/{m}"] for s in seeds if f"{key}/{m}" in runs[s]]
            vals = [0.0 if abs(v) < 1e-6 else v for v in vals]
            cells.append(cell(vals, ".1f" if m == "clip_score_self" else ".3f"))
        print(f"| {name} | " + " | ".join(cells) + " |")
    planner = {k.split("/", 1)[1]: [runs[s][k] for s in seeds] for k in runs[seeds[0]] if k.startswith("planner/")}
    print("\nPlanner: " + ", ".join(f"{k} {cell(v, '.3f')}" for k, v in planner.items()))
    return seeds


def grid(seeds, path="docs/results/artist_seeds_samples.png", gap=8):
    """Each seed's sample rows (GRID_ROWS that the run wrote: the diagnostic row is missing from runs before it)."""
    from PIL import Image
    blocks = [[Image.open(f).convert("RGB") for f in (f"runs/artist_s{s}/samples_{r}_seed{s}.png" for r in GRID_ROWS)
               if os.path.exists(f)] for s in seeds]
    w, h = blocks[0][0].size
    out = Image.new("RGB", (w, sum(len(b) for b in blocks) * h + (len(blocks) - 1) * gap), "white")
    y = 0
    for b in blocks:
        for t in b:
            out.paste(t, (0, y))
            y += h
        y += gap
    out.save(path, optimize=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    done = main()
    if "--grid" in sys.argv:
        grid(done)
