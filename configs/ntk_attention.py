"""NTK-Attention (arXiv 2406.14036), Sec. 4.4: per-head (Z, k) trained to reproduce explicit prefix attention;
relative error vs prefix length m.

Command (regenerates results.md, results.json, ntk_attention_sec44.png, metrics.jsonl in the workdir):

    python -m train --config configs/ntk_attention.py:sec44 --workdir /tmp/ntk_sec44    # 27 min measured, see below
    python -m train --config configs/ntk_attention.py:tiny  --workdir /tmp/ntk_tiny     # smoke test, ~30 s

Expected (measured, docs/results/ntk_attention.md): held-out relative error of NTK-Attention 0.044 at m = 2,
rising to 0.29 at m = 256 (while the prefix is a perturbation of the L = 128 real keys) and then falling with m
to 0.16 at m = 16384; dropping the prefix instead gives 0.08 → 1.14. Run time: 27 min wall on a shared 2-core
machine under load ~13 (1264 s in the training loops); less on an idle machine. Each m is one run of the shared
loop (task `ntk_attention.prefix_fit`) in <workdir>/m<m>.

Variants:
- sec44: the paper's d = 64, L = 128 with m = 2, 4, …, 2^14 (the paper goes to 2^18), one head, frozen random
  projections, Adam lr 1e-3 on (Z, k)/m [reconstruction of everything else: N(0, I) inputs and prefix
  tokens, N(0, 1/d) projections, MSE loss, Z = k = 0 init, 1500 steps of batch 32 on a fixed pool of 512
  inputs, error on 128 held-out inputs — sized for minutes on 2 CPU cores].
- tiny: d = 16, L = 32, m = 2 and 64, 60 steps (the config path's smoke test).
"""
from __future__ import annotations

import ml_collections

from jaxmm.config_utils import pick_variant

VARIANTS = ("sec44", "tiny")


def get_config(variant: str | None = None):
    variant = pick_variant(__file__, variant, VARIANTS, default="sec44")
    c = ml_collections.ConfigDict()
    c.task = "ntk_attention.sec44"
    c.variant = variant
    c.seed = 0
    e = c.experiment = ml_collections.ConfigDict()
    e.head_dim = 64
    e.length = 128
    e.heads = 1
    e.is_causal = False
    e.prefix_lengths = tuple(2 ** i for i in range(1, 15))      # 2 … 16384
    e.n_train = 512
    e.n_test = 128
    e.steps = 1500
    e.batch_size = 32
    e.learning_rate = 1e-3
    e.init = "zeros"
    e.param_scale = "m"      # Adam trains (Z, k)/m; "1": (Z, k) directly (train/tasks/ntk_attention.py docstring)
    e.log_every = 250
    e.chunk = 16             # inputs per prefix-attention call when computing targets (memory: chunk·L·m floats)
    if variant == "tiny":
        e.head_dim, e.length = 16, 32
        e.prefix_lengths = (2, 64)
        e.n_train, e.n_test, e.steps, e.batch_size, e.log_every = 64, 16, 60, 8, 30
    return c
