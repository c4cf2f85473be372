"""DP cross-attention (arXiv 2407.14717): error vs n / ε / degree against the theorem's rates, query time and
memory, an empirical privacy audit, an adaptive attacker, and a small model with a private context.

    .venv/bin/python -m train --config configs/dp_cross_attention.py --workdir runs/dp_xattn            # all
    .venv/bin/python -m train --config configs/dp_cross_attention.py:tiny --workdir /tmp/dp_xattn_tiny  # smoke
    .venv/bin/python -m train --config configs/dp_cross_attention.py --workdir runs/dp_xattn_audit \
        --config.experiments='("audit",)'                                                              # one part

Expected (measured on the shared 2-core CPU, docs/results/dp_cross_attention.md): the DP part of the error
falls like 1/n (fitted log-log slope ≈ −1 for the one-shot release, a little shallower for the tree whose
depth grows with n) and like 1/ε; at ε = ∞ the error vs exact attention is the polynomial error, inside the
2ε_s·R_w/(1 − ε_s) bound; query time flat in n; every correct mechanism passes the audit (95% CP lower bound
on ε ≤ ε) while the two broken ones (Δ/8, denominator un-noised) fail it; the adaptive attacker recovers the
private row from exact attention (error 1e-7) but its error against the once-released DP state stays frozen
however many adaptive queries it asks; the private-context model's accuracy rises with ε and with the context
length (64 tokens: 0.62 at ε = 1, 0.98 at ε = 10; 1024 tokens: 0.99 at ε = 1). The full default run took ~20
min on that machine at load 15-20 (the summary line prints the seconds); `tiny` (every part at toy size, the
smoke test) ~30 s.

The tree (DPTreeSoftmax) and the one-shot release of the feature sums share (ε, δ); details that the paper does
not pin down are [reconstruction]s (see jaxmm/privacy/dp_tree.py and dp_cross_attention.py).
"""
from __future__ import annotations

import math

import ml_collections

from jaxmm.config_utils import pick_variant

VARIANTS = ("default", "tiny")


def get_config(variant: str | None = None):
    variant = pick_variant(__file__, variant, VARIANTS, default="default")
    tiny = variant == "tiny"
    c = ml_collections.ConfigDict()
    c.task = "dp_cross_attention.experiments"
    c.variant = variant
    c.experiments = ("error_vs_n", "error_vs_eps", "error_vs_degree", "query_time", "memory", "audit", "adaptive",
                     "model")
    c.methods = ("release", "tree")
    # problem: K, Q ∈ [−R, R]^d, V ∈ [−R_w, R_w]^{d_v}, s = 1/d, Taylor degree g
    c.d, c.d_v, c.degree = 2, 2, 2
    c.bound_qk, c.bound_v = 1.0, 1.0
    c.delta = 1e-5
    c.repeats = 2 if tiny else 16
    # error vs n / ε / degree
    c.epsilon = 1.0
    c.ns = (64, 256) if tiny else (256, 1024, 4096, 16384, 65536)
    c.n = 256 if tiny else 16384
    c.eps_grid = (1.0, 10.0) if tiny else (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, math.inf)
    c.degrees = (2,) if tiny else (1, 2, 3, 4, 5)
    # query time and memory
    c.time_ns = (256,) if tiny else (256, 1024, 4096, 16384, 65536)
    c.n_queries = 64 if tiny else 1024
    c.mem_ns = (256,) if tiny else (256, 1024, 4096, 16384)
    c.mem_ds = (2,) if tiny else (2, 4)
    c.mem_degrees = (2,) if tiny else (2, 3)
    # audit
    c.audit_n, c.audit_degree = 4, 2
    c.audit_eps = (1.0,) if tiny else (0.5, 1.0, 2.0)
    c.audit_samples = 500 if tiny else 40000
    # adaptive attacker
    c.attack_n, c.attack_degree = 4, 6
    c.attack_eps = (1.0,) if tiny else (1.0, 30.0, 300.0)  # TLap bound overflows for ε ≳ 709
    c.attack_rounds = (6,) if tiny else (6, 12, 24, 48, 96, 192)
    c.attack_trials = 1 if tiny else 8
    # private-context model
    c.model_head_dim, c.model_degree, c.model_scale = 4, 2, 1.0
    c.model_steps = 5 if tiny else 400
    c.model_lr = 1e-2
    c.model_train_n = 64
    c.model_eval_ns = (64,) if tiny else (64, 1024)
    c.model_eps = (1.0,) if tiny else (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, math.inf)
    c.model_eval_contexts = 4 if tiny else 200
    return c
