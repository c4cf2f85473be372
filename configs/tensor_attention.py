"""Tensor attention (arXiv 2405.16411): error of the polynomial method, n³ vs n·r scaling, and the Match3 task.

Commands (each writes results.md, results.json and PNG plots into the workdir, match3 also one trainer run per
model and seed in <workdir>/<model>_seed<seed>; docs/results/tensor_attention.md holds the measured tables):

    python -m train --config configs/tensor_attention.py:poly_error --workdir /tmp/ta_poly_error  # ~1.5 min, 2 cores
    python -m train --config configs/tensor_attention.py:scaling    --workdir /tmp/ta_scaling     # ~4 min, 2 cores
    python -m train --config configs/tensor_attention.py:match3     --workdir /tmp/ta_match3      # ~25 min, 2 busy cores
    python -m train --config configs/tensor_attention.py:tiny       --workdir /tmp/ta_tiny        # smoke, seconds
    (also `scaling_tiny`, `match3_tiny`: each experiment at smoke-test size, seconds)

Expected (measured, docs/results/tensor_attention.md):
- poly_error: entries uniform in [−B, B], s = 1/d, so |S| ≤ B³. At every degree g the relative error of the
  poly output is at float32 round-off (≤ 1e-6) while B³ ≪ g, rises steeply with B and saturates at ~1 (output
  unrelated to the truth) once B³ ≫ g: the phase transition of the paper's hardness result. Same for ∇_X.
- scaling: exact forward+backward slope 3.1 in log-log (n³), poly 0.9–1.0 (n·r); poly faster from n = 64 (g = 2)
  / 128 (g = 3); exact memory constant (tiles), poly memory linear.
- match3 (n = 6, M = 15): one-layer tensor attention 99.98–100% per-token accuracy over 3 seeds; one-layer
  standard attention of the same width 59–61%; poly tensor attention (g = 3) 53–58%.

Variants:
- poly_error: n = 64, d = 4, degrees 1…8, B ∈ {0.25 … 3}, 3 seeds (max error over seeds); plus ∇_X of the
  Definition 3.8 objective (fast vs exact) on a smaller grid.
- scaling:    d = 16, one head; exact n ≤ 1024, poly (g = 2, 3) n ≤ 16384; time (best of reps) and XLA temp memory.
- match3:     Sanford et al.'s Match3: token i is positive if x_i + x_j + x_k ≡ 0 mod M for pairwise distinct
              positions i, j, k [reconstruction of the convention; `distinct=False` allows j = k and i ∈ {j, k}];
              n = 6, M picked for ~50% positives (15); models: embed → pre-norm residual attention (4 heads × 8)
              → MLP → logit; 3 seeds each; tensor attention with scale 1/√d.
- tiny (= poly_error_tiny), scaling_tiny, match3_tiny: the three at smoke-test size (tests/train/test_configs_tiny.py).
"""
from __future__ import annotations

import ml_collections

from jaxmm.config_utils import pick_variant

VARIANTS = ("poly_error", "scaling", "match3", "tiny", "scaling_tiny", "match3_tiny")


def get_config(variant: str | None = None):
    name = pick_variant(__file__, variant, VARIANTS)
    tiny = name.endswith("tiny")
    variant = "poly_error" if name == "tiny" else name.removesuffix("_tiny")
    c = ml_collections.ConfigDict()
    c.task = f"tensor_attention.{variant}"
    c.variant = name
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
        if tiny:
            c.n, c.degrees, c.bounds, c.seeds = 16, (1, 2), (0.5, 2.0), 1
            c.grad_n, c.grad_degrees, c.grad_bounds = 8, (2,), (0.5,)
    elif variant == "scaling":
        c.d = 16
        c.exact_ns = (64, 128, 256, 512, 1024)
        c.poly_ns = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
        c.degrees = (2, 3)
        c.entry_std = 0.6
        c.reps = 2
        if tiny:
            c.exact_ns, c.poly_ns, c.reps = (16, 32), (16, 32), 1
    else:  # match3
        c.seq_len = 6
        c.modulus = 0  # 0: pick M so that about half of the tokens are positive
        c.distinct = True  # i, j, k pairwise distinct (False: j = k and i ∈ {j, k} allowed)
        c.tensor_scale = 8 ** -0.5  # 1/√head_dim (2-simplicial convention); None: 1/d (the paper)
        c.models = ("softmax", "tensor", "tensor_poly")
        c.seeds = (0, 1, 2)
        c.width = 32
        c.heads = 4  # head_dim 8: poly rank C(8+3, 3) = 165
        c.mlp_dim = 64
        c.poly_degree = 3
        c.steps = 2000
        c.batch_size = 128
        c.learning_rate = 1e-2
        c.warmup = 100
        c.eval_sequences = 4096
        c.log_every = 250
        if tiny:
            c.models, c.seeds, c.steps, c.eval_sequences, c.log_every = ("softmax", "tensor"), (0,), 10, 64, 10
    return c
