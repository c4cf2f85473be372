"""PEFT table (PAPERS.md §5, issue 5): full fine-tuning, LoRA, P-Tuning v2 and NTK-Attention on a small ViT and a
small LLM pre-trained on embedded data, through the shared trainer (train/tasks/peft.py).

The whole table (pre-train both backbones, 4 methods × 3 seeds × 2 models, then step timing of every method back
to back in one process), 35 min wall on 2 CPU cores shared with other jobs:

    python -m train --config configs/peft.py:table --workdir /tmp/peft
    # -> /tmp/peft/table.md (docs/results/peft.md). Accuracy, ViT digits 5–9: full 0.96, LoRA 0.89, P-Tuning v2
    #    0.51, NTK 0.52 (lr 1e-3; 0.72 / 0.77 at lr 1e-2: variant `extra`); LLM sentiment: full 0.92, LoRA 0.79,
    #    P-Tuning v2 and NTK 0.54 (= the linear probe)

Single runs (a pre-train variant writes the backbone params file that the adapt variants load):

    python -m train --config configs/peft.py:vit_pretrain --workdir /tmp/peft/vit/pretrain   # ~1–2 min
    python -m train --config configs/peft.py:vit_ntk --workdir /tmp/peft/vit/ntk_seed0       # ~30 s
    python -m train --config configs/peft.py:llm_pretrain --workdir /tmp/peft/llm/pretrain   # ~2–4 min
    python -m train --config configs/peft.py:llm_lora --workdir /tmp/peft/llm/lora_seed0
  variants: {vit,llm}_pretrain, {vit,llm}_{full,lora,prefix,ntk,head}, table, extra (after table: the
  linear-probe control and P-Tuning v2 / NTK-Attention at lr 1e-2, reusing /tmp/peft's backbones); the adapt variants read the params
  file from /tmp/peft/<arch>/pretrain/backbone.msgpack (edit `PRETRAINED` to move it).

ViT: scikit-learn 8×8 digits, 2×2 patches, width 64, 2 layers, 4 heads; pre-trained on digits 0–4, adapted to
digits 5–9 (unseen classes, fresh head). LLM: byte-level, width 64, 2 layers, 4 heads / 2 kv heads; pre-trained as
a next-byte LM on procedural reviews, adapted to their sentiment (negation and "but" clauses decide).
"""
from train.tasks import peft

PRETRAINED = "/tmp/peft/{arch}/pretrain/backbone.msgpack"


def get_config(variant: str = "table"):
    if variant == "table":
        import ml_collections

        c = ml_collections.ConfigDict()
        c.task = "peft.table"
        c.table = dict(archs=("vit", "llm"), methods=peft.METHODS, seeds=(0, 1, 2), size="default",
                       timing_rounds=5, timing_steps=10, lr=1e-3, lrs={}, pretrained_from="")
        return c
    if variant == "extra":  # controls: the linear probe, and P-Tuning v2 / NTK-Attention at lr 1e-2
        c = get_config("table")
        c.table.update(methods=("head", "prefix", "ntk"), lrs={"prefix": 1e-2, "ntk": 1e-2},
                       pretrained_from="/tmp/peft")
        return c
    arch, _, stage = variant.partition("_")
    if stage == "pretrain":
        return peft.make_config(arch, "pretrain", save_params=PRETRAINED.format(arch=arch))
    return peft.make_config(arch, "adapt", stage, init_from=PRETRAINED.format(arch=arch))
