"""Text-to-image diffusion (issue 17) on the procedural captioned shapes (jaxmm.data.shapes: "two red circles
left of a blue square"), 16x16 pixels, a small CLIP-style text tower trained from scratch with a tiny UNet,
v-prediction (`--config.task_args.prediction_type=epsilon|sample`), the pixel's x, y and 8 caption maps as extra
UNet inputs (model.coord_channels / text_channels), 10% condition dropout, sampled with guidance 1 (3 measured
worse), EMA 0.995, DDIM 25 steps, 3000 steps, evaluated at 1500 and 3000 (train/tasks/diffusion.py).

    python -m train --config configs/diffusion.py:demo --workdir runs/t2i          # the acceptance run
    python -m train --config configs/diffusion.py:tiny --workdir /tmp/t2i_tiny     # smoke of every code path
    python -m train.sample --workdir runs/t2i --prompt "a red circle on the left" \\
        --prompt "two blue squares right of a green triangle" --out grid.png --sampler dpmpp_2m --guidance 1

Reports (docs/results/diffusion.md): attribute accuracy of the EMA model's samples, scored by a CNN trained on
real images, on 64 held-out single-object and 64 multi-object captions, and FID in that CNN's feature space
(self-trained features, not Inception). Target (issue 17): >= 0.8 on single-object captions within 15 minutes
on a quiet 2-core machine (~1400 s CPU). MET in CPU time (2026-11-30, seed 0): this demo, 1137 s CPU, single-object
0.852 (position 0.97, colour 0.98, count 0.95, shape 0.50), multi-object 0.773, FID 250 (floor 213); 49 min wall
on the shared machine at load 10-17; on the quiet machine 9 min 39 s wall, 1021 s CPU, same numbers. Earlier, without the input maps:
  - 32 px (the earlier default) costs 1.56 s CPU per step: 3000 steps would be ~4700 s CPU; hence 16 px
    (0.27 s CPU per step; the scorer reads 16-px real scenes at 0.994 attribute accuracy).
  - this demo with ε-prediction (`--config.task_args.prediction_type=epsilon`): 686 s CPU, single-object 0.34,
    multi-object 0.42, FID 5758 (real-vs-real floor 213): samples leave the data manifold at high noise.
  - v-prediction, 600 steps, EMA 0.99: 416 s CPU, single 0.25, multi 0.39, FID 650 (scenes on black, but the
    caption not yet followed).
  - v-prediction, 1500 steps, EMA 0.995, guidance 3 (the demo until then): 677 s CPU, 7 min 01 s wall at load 2-3;
    single-object 0.26, multi-object 0.43, FID 566 (floor 213): scenes, but the caption is not followed (the
    UNet ignored "left"/"right"; with guidance 1: 0.34).
`:tiny` is a smoke (2 steps), ~150 s CPU under the test suite's 8 host devices (compilation). CLIP text tower from
a folder instead: `--config.model.text_init=DIR` (a CLIPTextModel folder; its tokenizer, or
`--config.model.text_tokenizer=words` for the shapes word ids; the UNet's cross-attention width follows the tower's).
"""
from __future__ import annotations

import ml_collections

from jaxmm.config_utils import pick_variant

VARIANTS = ("demo", "tiny")


def get_config(variant: str | None = None):
    variant = pick_variant(__file__, variant, VARIANTS)
    c = ml_collections.ConfigDict()
    c.task = "diffusion.t2i"
    c.model = dict(image_size=16, channels=(16, 32, 64), attention_levels=(1, 2), layers_per_block=1, heads=4,
                   groups=8, text_width=32, text_layers=2, text_heads=4, coord_channels=True, text_channels=8)
    c.data = dict(train_examples=20000, eval_examples=512, multi_fraction=0.5, max_count=2)
    c.task_args = dict(prediction_type="v_prediction", p_uncond=0.1, ema_decay=0.995, sample_every=1500,
                       sampler="ddim", sample_steps=25, guidance=1.0, eval_prompts=64, scorer_steps=600)
    c.train = dict(steps=3000, batch_size=32, grad_clip=1.0, log_every=50, eval_every=1500, eval_batch_size=64,
                   eval_samples=0, plots=True)
    c.optim = dict(name="adamw", lr=2e-3, schedule="warmup_cosine", warmup_steps=100, weight_decay=0.0,
                   min_lr_ratio=0.1)
    c.checkpoint = dict(every=1500)
    if variant == "tiny":   # a smoke of every code path (tests/train/test_t2i.py), not a model
        c.model.update(dict(image_size=16, channels=(8, 16), attention_levels=(1,), heads=2, groups=4, text_width=8,
                            text_layers=1, text_heads=2))
        c.data.update(dict(train_examples=16, eval_examples=16))
        c.task_args.update(dict(sample_every=2, sample_steps=2, eval_prompts=4, sample_batch=8, scorer_steps=2,
                                scorer_images=16, scorer_channels=(4, 4), scorer_width=8, ema_decay=0.5))
        c.train.update(dict(steps=2, batch_size=8, log_every=1, plots=False))
        c.checkpoint = dict(every=0)
    return c
