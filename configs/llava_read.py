"""LLaVA-Read (arXiv 2407.19185; PAPERS.md §2) at CPU scale: dual-resolution encoder (low-res ViT + high-res
ConvNeXt, LLaVA-HR fusion), OCR text with layout recovery between the image and the instruction, layout-aware
pre-training then instruction tuning, on the procedural text-rich pages (train/tasks/llava_read.py).

    python -m train --config configs/llava_read.py:pretrain --workdir runs/llava_read_pretrain    # 4 pre-training tasks
    python -m train --config configs/llava_read.py:finetune --workdir runs/llava_read_finetune    # from pretrain's checkpoint
    python -m train --config configs/llava_read.py:tiny --workdir /tmp/llava_read_tiny            # smoke: rapidocr at eval
    # the ablation table (docs/results/llava_read.md), one run per row and seed; rapidocr at eval with the suffix:
    python -m train --config configs/llava_read.py:low_res --workdir runs/lr_low_res --config.seed=0
    python -m train --config configs/llava_read.py:dual_res --workdir runs/lr_dual_res
    python -m train --config configs/llava_read.py:ocr_plain --workdir runs/lr_ocr_plain
    python -m train --config configs/llava_read.py:ocr_layout --workdir runs/lr_ocr_layout
    python -m train --config configs/llava_read.py:full --workdir runs/lr_full
    # rapidocr at eval without retraining: the row's checkpoint evaluated (train.steps=0; same seed = same eval pages)
    python -m train --config configs/llava_read.py:full_rapidocr --workdir runs/lr_full_rapidocr \
        --config.model.init.from_workdir=runs/lr_full:encoder,projector,llm

Ablation rows (fine-tuned on the reading questions, same LLM and steps; from scratch by default, or from a
pre-training run with --config.model.init.from_workdir=<workdir>:encoder,projector,llm -- the table's rows are:
the low-res rows from `pretrain` with model.dual_res.low_res_only=True, dual_res and full from `pretrain` with the
dual-res encoder, both with data.llava_read.ocr=plain; commands and 3-seed table in docs/results/llava_read.md):
  low_res     the ViT alone on a 32 px view, no OCR          dual_res    + the 128 px ConvNeXt fused after blocks 1, 2
  ocr_plain   low_res + OCR words in reading order           ocr_layout  low_res + OCR with layout recovery
  full        dual_res + OCR with layout recovery (LLaVA-Read)
  <row>_rapidocr: eval only (train.steps=0) of the trained row `runs/lr_<row>` (model.init.from_workdir, every
              param group) with the eval set's OCR read by rapidocr from the page; the row's training OCR was the
              oracle, so this is the row's own model, not a retrained one. Pass the row's --config.seed: the eval
              pages are drawn from it. rapidocr's reads are cached in data.llava_read.ocr_cache.
Scale: LLM 2 layers d 64 with the page-trained word BPE configs/llava_read_bpe (vocab 1024; a word is the same
1-3 tokens in the OCR block and in the answer; built by jaxmm.data.llava_read.page_corpus + tokenizers.train_word_bpe),
ViT 2 layers d 64, ConvNeXt 2 stages (16, 32); LLaVA-Read's fusion after blocks 1, 4, 7 needs >= 7 ViT blocks (the
default of model.dual_res), here blocks 1 and 2 of 2. OCR budget 96 BPE tokens (head rule; covers the whole
32-column canvas of almost every page: the runs of spaces merge), 4000 training pages, 1000 steps of batch 16,
96 eval questions. Expected: ~400 CPU seconds per row (user+sys; ~7 min wall on a quiet 2-core machine). The
byte-level, 320-page, 200-step version of this table answered 0 of 48 in every row; what these sizes give and
the probes that chose them: docs/results/llava_read.md. `tiny` (bytes; rapidocr at eval, 2 steps): ~35 CPU seconds.
"""
from __future__ import annotations

import os

import ml_collections

from jaxmm.config_utils import pick_variant

BPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llava_read_bpe")  # jaxmm.data.llava_read.page_corpus
ROWS = ("low_res", "dual_res", "ocr_plain", "ocr_layout", "full")
VARIANTS = ("pretrain", "finetune", "tiny") + ROWS + tuple(f"{r}_rapidocr" for r in ROWS)


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    variant = pick_variant(__file__, variant, VARIANTS)
    row = variant.removesuffix("_rapidocr")
    c = ml_collections.ConfigDict()
    c.task = "llava_read"
    c.model = dict(encoder="dual_res", dual_res=dict(
        image_size=128, low_res=32, fuse_after=(1, 2), low_res_only=row in ("low_res", "ocr_plain", "ocr_layout"),
        vit=dict(patch_size=8, d_model=64, num_layers=2, num_heads=4, mlp_dim=128, feature_layer=-1),
        convnext=dict(patch_size=4, hidden_sizes=(16, 32), depths=(1, 1), feature_stage=-1)))
    ocr = {"ocr_plain": "plain", "low_res": "none", "dual_res": "none"}.get(row, "layout")
    c.data = dict(source="llava_read", tokenizer=BPE, train_examples=4000, eval_examples=96, max_len=160,
                  max_prompt_len=150, max_answer_len=8,
                  llava_read=dict(stage="pretrain" if variant == "pretrain" else "finetune", ocr=ocr, width=32,
                                  budget=96, engine="oracle",
                                  eval_engine="rapidocr" if variant.endswith("_rapidocr") else "",
                                  ocr_cache="runs/llava_read_ocr_cache"))
    c.train = dict(steps=1000, batch_size=16, log_every=100, eval_every=0, eval_batch_size=48, plots=True)
    c.optim = dict(name="adamw", lr=2e-3, schedule="warmup_cosine", warmup_steps=30, weight_decay=0.0)
    if variant == "pretrain":
        c.data.update(max_answer_len=24)
    if variant == "finetune":
        c.model.init = dict(from_workdir="runs/llava_read_pretrain:encoder,projector,llm")
    if variant.endswith("_rapidocr"):  # eval only: the trained row's weights (all its groups), no step taken
        c.train.steps = 0
        c.model.init = dict(from_workdir=f"runs/lr_{row}:encoder,projector,llm")
    if variant == "tiny":   # end to end in seconds of compute: rapidocr reads the eval pages
        c.model.dual_res.update(image_size=64, low_res=16, fuse_after=(1,), low_res_only=False)
        c.model.dual_res.vit.update(patch_size=4, d_model=16, num_layers=1, num_heads=2, mlp_dim=32)
        c.model.dual_res.convnext.update(hidden_sizes=(8,), depths=(1,))
        c.model.llm = dict(num_layers=1, d_model=32, num_heads=2, num_kv_heads=1, mlp_dim=64)
        c.data.update(tokenizer="", train_examples=8, eval_examples=2, max_len=128, max_prompt_len=120)
        c.data.llava_read.update(budget=32, eval_engine="rapidocr", ocr_cache="", page_kinds=("sign", "poster"))
        c.train.update(steps=2, batch_size=4, log_every=1, eval_batch_size=2, plots=False, progress=False)
    return c
