"""PEFT table (PAPERS.md §5, issue 5): full fine-tuning, LoRA, P-Tuning v2 and NTK-Attention on a small ViT and a
small LLM pre-trained on embedded data, through the shared trainer (train/tasks/peft.py).

The whole table (pre-train both backbones, 4 methods × 3 seeds × 2 models, then step timing of every method back
to back in one process), 35 min wall on 2 CPU cores shared with other jobs:

    python -m train --config configs/peft.py:table --workdir runs/peft
    # -> runs/peft/table.md (docs/results/peft.md). Accuracy, ViT digits 5–9: full 0.96, LoRA 0.89, P-Tuning v2
    #    0.51, NTK 0.52 (lr 1e-3; 0.72 / 0.77 at lr 1e-2: variant `extra`); LLM sentiment: full 0.92, LoRA 0.79,
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


def get_config(variant: str | None = None):
    variant = pick_variant(__file__, variant, VARIANTS)
    if variant in ("table", "extra", "tiny"):
        c = ml_collections.ConfigDict()
        c.task = "peft.table"
        c.table = dict(archs=("vit", "llm"), methods=METHODS[:4], seeds=(0, 1, 2), size="default",
                       timing_rounds=5, timing_steps=10, lr=1e-3, lrs={}, pretrained_from="")
        if variant == "extra":  # controls: the linear probe, and P-Tuning v2 / NTK-Attention at lr 1e-2
            c.table.update(methods=("head", "prefix", "ntk"), lrs={"prefix": 1e-2, "ntk": 1e-2},
                           pretrained_from="runs/peft")
        if variant == "tiny":
            c.table.update(archs=("vit",), methods=("full", "ntk"), seeds=(0,), size="toy", timing_rounds=1,
                           timing_steps=1)
        return c
    # One trainer run: its config is built by the task module (the trainer's defaults + the PEFT task's schema).
    # [left for the trainer's owner: a data-only form needs the loop to fill trainer defaults itself]
    from train.tasks import peft

    arch, _, stage = variant.partition("_")
    if stage == "pretrain":
        return peft.make_config(arch, "pretrain", save_params=PRETRAINED.format(arch=arch))
    return peft.make_config(arch, "adapt", stage, init_from=PRETRAINED.format(arch=arch))
