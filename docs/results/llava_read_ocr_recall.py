"""Answer recall of the OCR block (docs/results/llava_read.md): for the ablation's eval questions (configs/llava_read.py
rows: 48 questions, seed 0, split "eval"), the fraction whose answer appears as a word of the OCR text the model is
given (after the 96-token budget), by engine (oracle, rapidocr) x OCR mode (plain, layout) x text size. An upper
bound on what copying from the OCR block can answer.

    python docs/results/llava_read_ocr_recall.py      # rapidocr results cached in runs/llava_read_ocr_cache
"""
import collections

from jaxmm.data.llava_read import LlavaReadSource

N, SEED = 48, 0
hits = collections.Counter()
count = collections.Counter()
for engine in ("oracle", "rapidocr"):
    for mode in ("plain", "layout"):
        src = LlavaReadSource(N, seed=SEED, split="eval", image_size=32, ocr=mode, engine=engine, width=32, budget=96,
                              ocr_cache="runs/llava_read_ocr_cache")
        for i in range(N):
            ex = src[i]
            words = ex["ocr_text"].split()
            key = (engine, mode, ex["kind"])
            count[key] += 1
            hits[key] += all(w in words for w in ex["answer"].split())
print("| OCR block | small text | large text |")
print("|---|---|---|")
for engine in ("oracle", "rapidocr"):
    for mode in ("plain", "layout"):
        cells = [f"{hits[(engine, mode, k)] / count[(engine, mode, k)]:.2f} ({count[(engine, mode, k)]})"
                 for k in ("small", "large")]
        print(f"| {engine}, {mode} | " + " | ".join(cells) + " |")
