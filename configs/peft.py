"""PEFT table (PAPERS.md §5, issue 5): full fine-tuning, LoRA, P-Tuning v2 and NTK-Attention on a small ViT and a
small LLM pre-trained on embedded data, through the shared trainer (train/tasks/peft.py).

The whole table (pre-train both backbones, then 4 methods × 3 seeds × 2 models, each a run of the shared loop whose
summary gives the accuracy, the trainable-parameter count and the step time), 40 min wall on 2 CPU cores shared
with other jobs:

    python -m train --config configs/peft.py:table --workdir runs/peft
    # -> runs/peft/results.md (docs/results/peft.md). Accuracy, ViT digits 5–9: full 0.96, LoRA 0.89, P-Tuning v2
    #    0.51, NTK 0.53 (lr 1e-3; 0.71 / 0.77 at lr 1e-2: variant `extra`); LLM sentiment: full 0.92, LoRA 0.79,
    #    P-Tuning v2 and NTK 0.54 (= the linear probe)
    python -m train --config configs/peft.py:extra --workdir runs/peft_extra \
        --config.table.pretrained_from=runs/peft          # the controls, reusing the table run's backbones
    python -m train --config configs/peft.py:tiny --workdir /tmp/peft_tiny   # smoke: toy ViT, 2 methods, ~30 s

Single runs (a pre-train variant writes the backbone params file that the adapt variants load; both default to
runs/peft/<arch>/pretrain/backbone.msgpack, relative to the working directory, set with
--config.task_args.save_params / --config.task_args.init_from):

    python -m train --config configs/peft.py:vit_pretrain --workdir runs/peft/vit/pretrain   # ~1–2 min
    python -m train --config configs/peft.py:vit_ntk --workdir runs/peft/vit/ntk_seed0       # ~30 s
  variants: {vit,llm}_pretrain, {vit,llm}_{full,lora,prefix,ntk,head}, table, extra, tiny.

ViT: scikit-learn 8×8 digits, 2×2 patches, width 64, 2 layers, 4 heads; pre-trained on digits 0–4, adapted to
digits 5–9 (unseen classes, fresh head). LLM: byte-level, width 64, 2 layers, 4 heads / 2 kv heads; pre-trained as
a next-byte LM on procedural reviews, adapted to their sentiment (negation and "but" clauses decide).
"""
from __future__ import annotations

import ml_collections

from jaxmm.config_utils import pick_variant

PRETRAINED = "runs/peft/{arch}/pretrain/backbone.msgpack"  # relative: the table command's workdir
METHODS = ("full", "lora", "prefix", "ntk", "head")
VARIANTS = ("table", "extra", "tiny") + tuple(f"{a}_{s}" for a in ("vit", "llm") for s in ("pretrain", *METHODS))
# steps, batch, eval batch for each (arch, stage) at size "default" (the table) and "toy" (the tests)
SIZES = {
    "default": {("vit", "pretrain"): (500, 64, 128), ("vit", "adapt"): (250, 64, 128),
                ("llm", "pretrain"): (800, 32, 128), ("llm", "adapt"): (300, 32, 128)},
    "toy": {("vit", "pretrain"): (3, 8, 16), ("vit", "adapt"): (3, 8, 16),
            ("llm", "pretrain"): (3, 8, 16), ("llm", "adapt"): (3, 8, 16)},
}


def stage_config(arch: str, stage: str, size: str = "default") -> ml_collections.ConfigDict:
    """One trainer run of `peft.<arch>` (what differs from the trainer's and the task's defaults). "pretrain":
    full training of backbone + head (ViT: digits 0–4; LLM: next-byte LM on reviews, data seed 1); "adapt":
    method "full" on ViT digits 5–9 / LLM sentiment (the table sets the method, the backbone file and the
    frozen group per run)."""
    steps, batch, eval_batch = SIZES[size][(arch, stage)]
    c = ml_collections.ConfigDict(dict(
        task=f"peft.{arch}", model=dict(method="full"), data={}, task_args={},
        train=dict(steps=steps, batch_size=batch, eval_batch_size=eval_batch, log_every=max(steps // 10, 1),
                   progress=False, plots=False),
        optim=dict(name="adamw", lr=1e-3, schedule="warmup_cosine", warmup_steps=max(steps // 20, 1),
                   weight_decay=0.0),
        checkpoint=dict(async_save=False)))
    if arch == "vit":
        c.data.classes = (0, 1, 2, 3, 4) if stage == "pretrain" else (5, 6, 7, 8, 9)
    else:
        c.model.objective = "lm" if stage == "pretrain" else "classify"
        c.data.seed = 1 if stage == "pretrain" else 0
    if size == "toy":
        c.model.update(dict(d_model=16, num_heads=2, mlp_dim=32, num_layers=1))
        if arch == "llm":
            c.model.num_kv_heads = 1
            c.data.update(dict(train_examples=32, eval_examples=16, max_len=40))
    return c


def get_config(variant: str | None = None):
    variant = pick_variant(__file__, variant, VARIANTS)
    if variant in ("table", "extra", "tiny"):
        size = "toy" if variant == "tiny" else "default"
        c = ml_collections.ConfigDict()
        c.task = "peft.table"
        c.table = dict(archs=("vit", "llm"), methods=METHODS[:4], seeds=(0, 1, 2), lr=1e-3, lrs={},
                       pretrained_from="")
        if variant == "extra":  # controls: the linear probe, and P-Tuning v2 / NTK-Attention at lr 1e-2
            c.table.update(dict(methods=("head", "prefix", "ntk"), lrs={"prefix": 1e-2, "ntk": 1e-2},
                                pretrained_from="runs/peft"))
        if variant == "tiny":
            c.table.update(dict(archs=("vit",), methods=("full", "ntk"), seeds=(0,)))
        c.table.runs = {a: {s: stage_config(a, s, size) for s in ("pretrain", "adapt")} for a in c.table.archs}
        return c
    arch, _, stage = variant.partition("_")
    c = stage_config(arch, "pretrain" if stage == "pretrain" else "adapt")
    if stage == "pretrain":
        c.task_args.save_params = PRETRAINED.format(arch=arch)
        return c
    c.model.method = stage
    c.task_args.init_from = PRETRAINED.format(arch=arch)
    if stage != "full":
        c.optim.groups = dict(backbone=dict(frozen=True))
    return c
