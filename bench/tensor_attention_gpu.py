"""Exact tensor attention on one GPU: the Pallas kernel's TFLOP/s (4·n³·d per forward, 3.5× that for forward +
backward as counted for flash attention) against the XLA naive version (the n³ score tensor materialised, as in
shared/gpu/gpu_baseline.py), jaxmm's pure-JAX tiled path, the poly path, and the bf16 matmul ceiling measured in
the same run.

    python3 bench/tensor_attention_gpu.py            # on the GPU machine (writes $OUT/tensor_attention_gpu.json)
    JAX_PLATFORMS=cpu .venv/bin/python bench/tensor_attention_gpu.py --small   # CPU logic check, kernel interpreted

Rows record failures (e.g. a Triton lowering error, out of memory) and the run goes on.
"""
from __future__ import annotations

import json
import os
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxmm.kernels.tensor_attention import tensor_attention_pallas  # noqa: E402
from jaxmm.attention import tensor_attention
from jaxmm.ops.tensor import tensor_attention_reference  # noqa: E402
from jaxmm.timing import time_call  # noqa: E402

SMALL = "--small" in sys.argv
INTERPRET = jax.default_backend() == "cpu"
results = {"jax": jax.__version__, "devices": [str(d) for d in jax.devices()], "small": SMALL, "rows": []}
print(results["jax"], results["devices"], flush=True)


def bench(fn, *args, iters=10, warmup=2):
    t = time_call(fn, *args, reps=iters, warmup=warmup)
    return t.median, t.value


def row(name, flops, fn, *args, ref=None, **kw):
    try:
        t, out = bench(fn, *args, **kw)
        err = None
        if ref is not None:
            o = jax.tree.leaves(out)[0].astype(jnp.float32)
            err = float(jnp.linalg.norm(o - ref) / jnp.linalg.norm(ref))
        r = {"name": name, "ms": t * 1e3, "tflops": flops / t / 1e12, "rel_err": err}
    except Exception as e:  # keep going; the row says what failed
        r = {"name": name, "error": f"{type(e).__name__}: {str(e)[:400]}"}
        traceback.print_exc(limit=2)
    results["rows"].append(r)
    print(json.dumps(r), flush=True)
    return r


# 1. the bf16 matmul ceiling of this card, in this run
m = 256 if SMALL else 8192
a = jax.random.normal(jax.random.key(0), (m, m), jnp.bfloat16)
b = jax.random.normal(jax.random.key(1), (m, m), jnp.bfloat16)
row(f"matmul_bf16_{m}", 2 * m**3, jax.jit(lambda x, y: x @ y), a, b)
ceiling = results["rows"][-1].get("tflops")

# 2. tensor attention, layout [B, n, H, d], bf16 in, float32 accumulation
B, H, D = (1, 2, 16) if SMALL else (1, 8, 64)
NS = (32, 64) if SMALL else (512, 1024, 2048)
BLK = dict(block_q=32, block_k=32) if SMALL else dict(block_q=64, block_k=64)
ITERS = dict(iters=1, warmup=1) if SMALL else dict(iters=5, warmup=2)
for n in NS:
    ks = jax.random.split(jax.random.key(n), 6)
    x = [jax.random.normal(k, (B, n, H, D), jnp.bfloat16) * 0.5 for k in ks[:5]]
    w = jax.random.normal(ks[5], (B, n, H, D), jnp.float32)
    fwd_flops = 4 * B * H * n**3 * D
    tag = f"n{n}_B{B}_H{H}_d{D}"

    def loss(fn):
        return lambda *a: jnp.sum(fn(*a).astype(jnp.float32) * w)

    kernel = lambda *a: tensor_attention_pallas(*a, interpret=INTERPRET, **BLK)  # noqa: E731
    xla_tiled = lambda *a: tensor_attention(*a, implementation="xla")  # noqa: E731
    naive = lambda *a: tensor_attention_reference(*a)  # noqa: E731
    poly = lambda *a: tensor_attention(*a, method="poly", degree=2)  # noqa: E731
    # reference: the naive version in float32 (for n ≤ 1024 the n³ tensor fits: B·H·n³·4 bytes)
    ref = None
    if B * H * n**3 * 4 <= 40e9:
        try:
            ref = jax.jit(naive)(*[t.astype(jnp.float32) for t in x]).astype(jnp.float32)
        except Exception as e:  # out of memory: compare against the kernel's own run instead
            print("reference failed:", type(e).__name__, str(e)[:200], flush=True)
    row(f"ta_fwd_pallas_{tag}", fwd_flops, jax.jit(kernel), *x, ref=ref, **ITERS)
    row(f"ta_fwdbwd_pallas_{tag}", 3.5 * fwd_flops, jax.jit(jax.grad(loss(kernel), argnums=range(5))), *x, **ITERS)
    for causal in (True,):
        kc = lambda *a: tensor_attention_pallas(*a, is_causal=causal, interpret=INTERPRET, **BLK)  # noqa: E731
        # causal: query i sees (i+1)² of the n² pairs: Σ_i (i+1)² ≈ n³/3
        row(f"ta_fwd_pallas_causal_{tag}", fwd_flops / 3, jax.jit(kc), *x, **ITERS)
    if B * H * n**3 * 6 <= 40e9:  # naive materialises f32 scores + bf16 probabilities
        row(f"ta_fwd_xla_naive_{tag}", fwd_flops, jax.jit(naive), *x, ref=ref, **ITERS)
        row(f"ta_fwdbwd_xla_naive_{tag}", 3.5 * fwd_flops, jax.jit(jax.grad(loss(naive), argnums=range(5))), *x,
            **ITERS)
    if n <= 1024:
        row(f"ta_fwd_xla_tiled_{tag}", fwd_flops, jax.jit(xla_tiled), *x, ref=ref, **ITERS)
    row(f"ta_fwd_poly_g2_{tag}", fwd_flops, jax.jit(poly), *x, ref=ref, **ITERS)
    row(f"ta_fwdbwd_poly_g2_{tag}", 3.5 * fwd_flops, jax.jit(jax.grad(loss(poly), argnums=range(5))), *x, **ITERS)

out = os.environ.get("OUT")
if out:
    with open(os.path.join(out, "tensor_attention_gpu.json"), "w") as fh:
        json.dump(results, fh, indent=1)
print(f"\nbf16 matmul ceiling: {ceiling} TFLOP/s (rows below: TFLOP/s-equivalent; poly rows count the exact "
      "method's FLOPs, i.e. they are speed-ups in disguise)")
print("%-48s %10s %9s %8s %9s" % ("name", "ms", "TFLOP/s", "% ceil", "rel_err"))
for r in results["rows"]:
    if "error" in r:
        print("%-48s ERROR %s" % (r["name"], r["error"][:150]))
    else:
        pct = "" if not ceiling else "%.1f" % (100 * r["tflops"] / ceiling)
        print("%-48s %10.3f %9.2f %8s %9s" % (r["name"], r["ms"], r["tflops"], pct,
                                             "" if r["rel_err"] is None else "%.1e" % r["rel_err"]))
