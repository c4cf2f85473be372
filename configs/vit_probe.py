"""ViT probe (docs/results/trainer.md, "why the demo does not read"): the demo's ViT (width 64, 2 layers) trained
alone to classify the single word (12 classes) or its colour (5) of "read the word" images of the embedded
TextVQA set, linear head on pooled patch features, in the shared trainer (train/tasks/vit_probe.py).
`--config.data.target=word+color` trains both heads at once (summed cross-entropies; configs/demo.py's stage 1).

    python -m train --config configs/vit_probe.py --workdir /tmp/vit_probe                # 32 px / patch 4, word
    python -m train --config configs/vit_probe.py:color --workdir /tmp/vit_probe_color     # colour, 250 steps
    python -m train --config configs/vit_probe.py --workdir /tmp/vit_probe_48_16 \\
        --config.model.image_size=48 --config.model.patch_size=16                          # a row of the table
    python -m train --config configs/vit_probe.py --workdir /tmp/vit_probe_wc --config.data.target=word+color
    python -m train --config configs/vit_probe.py:tiny --workdir /tmp/vit_probe_tiny      # smoke, seconds

Expected (docs/results/trainer.md, held-out accuracy after 1000 steps of batch 32 at lr 1e-3): 32 px / patch 4
word ≈ 0.58 (chance 0.083), 48 / 16 ≈ 0.10; colour at 32 / 4 after 250 steps ≈ 0.98. A few minutes on 2 CPU
cores. `--config.task_args.save_encoder=FILE` writes the ViT params (the MLLM's `encoder` subtree).
"""
from __future__ import annotations

import ml_collections

from jaxmm.config_utils import pick_variant

VARIANTS = ("word", "color", "tiny")


def get_config(variant: str | None = None):
    variant = pick_variant(__file__, variant, VARIANTS)
    c = ml_collections.ConfigDict()
    c.task = "vit_probe"
    c.model = dict(image_size=32, patch_size=4, d_model=64, num_layers=2, num_heads=4, mlp_dim=128, pool="mean")
    c.data = dict(target="color" if variant == "color" else "word", font_sizes=(10, 14), train_examples=4000,
                  eval_examples=500)
    c.train = dict(steps=250 if variant == "color" else 1000, batch_size=32, grad_clip=0.0, log_every=50,
                   eval_every=250, eval_batch_size=100, plots=True)
    c.optim = dict(name="adamw", lr=1e-3, schedule="constant", weight_decay=0.0)
    if variant == "tiny":
        c.model.update(dict(image_size=16, d_model=16, num_layers=1, mlp_dim=32))
        c.data.update(dict(train_examples=64, eval_examples=32))
        c.train.update(dict(steps=4, batch_size=8, eval_every=0, eval_batch_size=16, plots=False))
    return c
