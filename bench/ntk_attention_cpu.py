"""NTK-Attention on CPU: against explicit prefix attention with m = 1024 prefix tokens at L = 512 (expected
speed-up near (m + L) / L = 3), and the blocked XLA fast path against the dense XLA reference. Forward and
forward+backward (gradients of q, k, v and of the trainable part: Z, k for NTK; the prefix keys and values for
prefix attention), float32, all timed in the same run (min of --reps after a warm-up call).

    JAX_PLATFORMS=cpu .venv/bin/python bench/ntk_attention_cpu.py [--small] [--batch 2 --length 512
        --prefix 1024 --heads 8 --head-dim 64 --reps 5] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxmm.attention import ntk_attention
from jaxmm.ops.attention import prefix_attention  # noqa: E402
from jaxmm.timing import time_calls  # noqa: E402


def _timed_round_robin(fns, reps):
    """min over `reps` rounds; each round times every case once, so load from other processes hits all alike."""
    return {n: t.min for n, t in time_calls(fns, reps=reps).items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="tiny shapes: checks the script's logic only")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--prefix", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--block-k", type=int, default=512)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.small:
        a.batch, a.length, a.prefix, a.heads, a.head_dim, a.block_k, a.reps = 1, 32, 64, 2, 16, 16, 2
    b, l, m, h, d = a.batch, a.length, a.prefix, a.heads, a.head_dim
    ks = jax.random.split(jax.random.key(0), 7)
    q, k, v = (jax.random.normal(kk, (b, l, h, d)) for kk in ks[:3])
    kp, vp = (jax.random.normal(kk, (1, m, h, d)) for kk in ks[3:5])
    z, kvec = jax.random.normal(ks[5], (h, d, d)) * 0.1, jax.random.normal(ks[6], (h, d))
    causal = a.causal

    def ntk(impl):
        return lambda q, k, v, z, kvec: ntk_attention(q, k, v, z, kvec, is_causal=causal, implementation=impl,
                                                      block_k=a.block_k)

    pre = lambda q, k, v, kp, vp: prefix_attention(q, k, v, kp, vp, is_causal=causal)
    plain = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal)
    grad = lambda f, n: jax.jit(jax.grad(lambda *x: jnp.sum(f(*x)), argnums=tuple(range(n))))
    cases = {
        "prefix attention (m prefix keys, dense XLA)": (pre, (q, k, v, kp, vp)),
        "NTK-Attention, dense XLA reference": (ntk("reference"), (q, k, v, z, kvec)),
        "NTK-Attention, blocked XLA fast path": (ntk("xla"), (q, k, v, z, kvec)),
        "plain attention, no prefix (floor)": (plain, (q, k, v)),
    }
    fns = {}
    for name, (f, args) in cases.items():
        fns[(name, "fwd")] = (jax.jit(f), args)
        fns[(name, "fwd+bwd")] = (grad(f, len(args)), args)
    best = _timed_round_robin(fns, a.reps)
    rows = {name: (best[(name, "fwd")], best[(name, "fwd+bwd")]) for name in cases}
    pre_t = rows["prefix attention (m prefix keys, dense XLA)"]
    ref_t = rows["NTK-Attention, dense XLA reference"]
    print(f"\nCPU ({jax.devices()[0].device_kind}, {os.cpu_count()} cores), float32, B={b} L={l} m={m} H={h} "
          f"d={d} causal={causal}; (m+L)/L = {(m + l) / l:.2f}")
    print(f"| case | fwd ms | fwd+bwd ms | prefix / case fwd | prefix / case fwd+bwd |")
    print("|---|---|---|---|---|")
    for name, (tf, tg) in rows.items():
        print(f"| {name} | {tf * 1e3:.2f} | {tg * 1e3:.2f} | {pre_t[0] / tf:.2f}x | {pre_t[1] / tg:.2f}x |")
    fast = rows["NTK-Attention, blocked XLA fast path"]
    print(f"fast path vs dense reference: fwd {ref_t[0] / fast[0]:.2f}x, fwd+bwd {ref_t[1] / fast[1]:.2f}x "
          f"(>1 = fast path quicker)")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump({"shape": dict(batch=b, length=l, prefix=m, heads=h, head_dim=d, causal=causal),
                       "seconds": {n: {"fwd": t[0], "fwd_bwd": t[1]} for n, t in rows.items()}}, fh, indent=2)


if __name__ == "__main__":
    main()
