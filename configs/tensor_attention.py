"""Tensor attention (arXiv 2405.16411): error of the polynomial method, n³ vs n·r scaling, and the Match3 task.

Commands (each writes results.md, results.json and PNG plots into the workdir; docs/results/tensor_attention.md
holds the measured tables):

    python -m train --config configs/tensor_attention.py:poly_error --workdir /tmp/ta_poly_error  # ~2 min, 2 cores
    python -m train --config configs/tensor_attention.py:scaling    --workdir /tmp/ta_scaling     # ~10 min, 2 cores
    python -m train --config configs/tensor_attention.py:match3     --workdir /tmp/ta_match3      # ~10 min, 2 cores

Expected (measured, docs/results/tensor_attention.md):
- poly_error: entries uniform in [−B, B], s = 1/d, so |S| ≤ B³. At fixed degree g the relative error of the
  poly output is tiny (≤ 1e-4) while B³ is well below g and explodes (≥ 10⁻¹ … ∞, z crosses 0) once B³ ≫ g:
  the phase transition at B ≈ ∛(log n)-scale entries that the paper's hardness result predicts.
- scaling: exact forward+backward grows as n³, poly as n·r; poly (g = 2, r = 153) is faster from n ≈ 128 on
  and its memory stays linear.
- match3: one-layer tensor attention solves Match3 (≥ 95% per-token accuracy), one-layer standard attention of
  the same width stays well below; the poly variant sits between (its low-degree scores cannot be sharp).

Variants:
- poly_error: n = 64, d = 4, degrees 1…8, B ∈ {0.25 … 3}, 3 seeds (max error over seeds); plus ∇_X of the
  Definition 3.8 objective (fast vs exact) on a smaller grid.
- scaling:    d = 16, one head; exact n ≤ 1024, poly (g = 2, 3) n ≤ 16384; time (best of reps) and XLA temp memory.
- match3:     Sanford et al.'s Match3 (token i is positive if x_i + x_j + x_k ≡ 0 mod M for some positions j, k;
              j = k and j, k = i allowed) [reconstruction of the task's exact convention], n = 10, M chosen for
              ~50% positives; models: embed → pre-norm residual attention → MLP → logit; 3 seeds each.
"""
from __future__ import annotations

import ml_collections

VARIANTS = ("poly_error", "scaling", "match3")


def get_config(variant: str | None = None):
    variant = variant or "poly_error"
    if variant not in VARIANTS:
        raise ValueError(f"configs/tensor_attention.py: variant: expected one of {VARIANTS}, got {variant!r}")
    c = ml_collections.ConfigDict()
    c.task = f"tensor_attention.{variant}"
    c.variant = variant
    c.seed = 0

    if variant == "poly_error":
        c.n = 64
        c.d = 4
        c.degrees = (1, 2, 3, 4, 6, 8)
        c.bounds = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
        c.seeds = 3
        c.grad_n = 32
        c.grad_d = 3
        c.grad_degrees = (2, 4, 6, 8)
        c.grad_bounds = (0.5, 1.0, 1.5, 2.0)
    elif variant == "scaling":
        c.d = 16
        c.exact_ns = (64, 128, 256, 512, 1024)
        c.poly_ns = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
        c.degrees = (2, 3)
        c.entry_std = 0.6
        c.reps = 2
    else:  # match3
        c.seq_len = 10
        c.modulus = 0  # 0: pick M so that about half of the tokens are positive
        c.models = ("softmax", "tensor", "tensor_poly")
        c.seeds = (0, 1, 2)
        c.width = 32
        c.heads = 4  # head_dim 8: poly rank C(8+3, 3) = 165
        c.mlp_dim = 64
        c.poly_degree = 3
        c.steps = 3000
        c.batch_size = 128
        c.learning_rate = 3e-3
        c.warmup = 100
        c.eval_sequences = 4096
        c.log_every = 250
    return c
