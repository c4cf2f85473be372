"""NTK-Attention on an NVIDIA GPU: forward and forward+backward time against cuDNN plain attention at B=4,
S=8192, H=16, d=128, bf16, causal and not (target: NTK within 1.15x of cuDNN), after a correctness check of every
implementation against the float32 dense reference. Prints the card; every ratio is measured in this run.

    python bench/ntk_attention_gpu.py [--out ntk_gpu.json] [--reps 10] [--pallas-block 64] [--with-xla]
    JAX_PLATFORMS=cpu .venv/bin/python bench/ntk_attention_gpu.py --small    # CPU: checks the script's logic

Implementations timed (jaxmm.ops.ntk_attention / jaxmm.kernels.ntk_attention):
  cudnn+cudnn-bwd   cuDNN flash forward with lse + exact combine; cuDNN flash backward fed (NTK output, lse')
                    through jax's private cuDNN VJP rule — the op's GPU default;
  cudnn+pallas-bwd  same forward, Pallas (Triton) flash backward;
  pallas            the Pallas kernel (prefix merged in the kernel's epilogue) + Pallas backward (Triton);
  xla               the blocked XLA path (only with --with-xla).
With --small (CPU) the cuDNN baseline becomes XLA attention and only xla / pallas (interpret mode) run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxmm.kernels.ntk_attention import ntk_attention_cudnn, ntk_attention_pallas  # noqa: E402
from jaxmm.attention import ntk_attention
from jaxmm.ops.ntk import ntk_attention_reference  # noqa: E402
from jaxmm.timing import time_call  # noqa: E402


def _bench(fn, *args, reps):
    return time_call(fn, *args, reps=reps, warmup=2).median


def _inputs(b, s, h, d, dtype, seed=0):
    ks = jax.random.split(jax.random.key(seed), 5)
    q, k, v = (jax.random.normal(kk, (b, s, h, d), dtype) for kk in ks[:3])
    return q, k, v, jax.random.normal(ks[3], (h, d, d)) * 0.3, jax.random.normal(ks[4], (h, d))


def _rel(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--pallas-block", type=int, default=64)
    ap.add_argument("--with-xla", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    on_gpu = jax.default_backend() == "gpu"
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}", flush=True)
    if not on_gpu and not a.small:
        sys.exit("no GPU: run with --small to check the logic on CPU")
    dtype = jnp.bfloat16 if on_gpu else jnp.float32
    pb = a.pallas_block if on_gpu else 16
    if a.small:
        a.batch, a.seq, a.heads, a.head_dim, a.reps = 1, 64, 2, 16, 2

    impls = {}
    if on_gpu:
        impls["cudnn+cudnn-bwd"] = lambda c: lambda *x: ntk_attention_cudnn(*x, is_causal=c, backward="cudnn")
        impls["cudnn+pallas-bwd"] = lambda c: lambda *x: ntk_attention_cudnn(*x, is_causal=c, backward="pallas")
    impls["pallas"] = lambda c: lambda *x: ntk_attention_pallas(*x, is_causal=c, block_q=pb, block_k=pb)
    if a.with_xla or not on_gpu:
        impls["xla"] = lambda c: lambda *x: ntk_attention(*x, is_causal=c, implementation="xla")
    base_impl = "cudnn" if on_gpu else None
    baseline = lambda c: lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=c, implementation=base_impl)
    grad_of = lambda f, n: jax.jit(jax.grad(lambda *x: jnp.sum(f(*x).astype(jnp.float32)), argnums=tuple(range(n))))

    # 1. correctness (a smaller shape) against the float32 dense reference on the same (bf16-cast) inputs
    cs = (2, 1024, 4, a.head_dim) if on_gpu else (1, 40, 2, a.head_dim)
    q, k, v, z, kvec = _inputs(*cs, dtype, seed=3)
    ct = jax.random.normal(jax.random.key(9), q.shape, jnp.float32)
    f32 = lambda x: x.astype(jnp.float32)
    ok, report = {}, {"device": dev.device_kind, "correctness": {}, "timing": {}}
    for causal in (False, True):
        ref = lambda *x: ntk_attention_reference(f32(x[0]), f32(x[1]), f32(x[2]), x[3], x[4], is_causal=causal)
        want = jax.jit(ref)(q, k, v, z, kvec)
        want_g = jax.jit(jax.grad(lambda *x: jnp.sum(ref(*x) * ct), argnums=(0, 1, 2, 3, 4)))(q, k, v, z, kvec)
        for name, make in impls.items():
            try:
                fn = make(causal)
                got = jax.jit(fn)(q, k, v, z, kvec)
                g = jax.jit(jax.grad(lambda *x: jnp.sum(f32(fn(*x)) * ct), argnums=(0, 1, 2, 3, 4)))(q, k, v, z, kvec)
                errs = [_rel(got, want)] + [_rel(x, y) for x, y in zip(g, want_g)]
                tol = 2e-2 if dtype == jnp.bfloat16 else 1e-4
                good = all(e <= tol for e in errs) and all(np.isfinite(errs))
                ok[(name, causal)] = good
                print(f"check {name:17s} causal={causal!s:5s} rel err out {errs[0]:.1e} grads q,k,v,z,kvec "
                      + " ".join(f"{e:.1e}" for e in errs[1:]) + ("" if good else f"  FAILED (tol {tol})"),
                      flush=True)
                report["correctness"][f"{name} causal={causal}"] = errs
            except Exception as e:  # report and go on: one failing implementation must not hide the others
                ok[(name, causal)] = False
                print(f"check {name} causal={causal}: ERROR {type(e).__name__}: {str(e)[:300]}", flush=True)
                traceback.print_exc(limit=2)

    # 2. timing at the benchmark shape
    b, s, h, d = a.batch, a.seq, a.heads, a.head_dim
    q, k, v, z, kvec = _inputs(b, s, h, d, dtype, seed=1)
    print(f"\n{dev.device_kind}: B={b} S={s} H={h} d={d} {jnp.dtype(dtype).name}, median of {a.reps}", flush=True)
    print("| causal | implementation | fwd ms | fwd+bwd ms | fwd / cuDNN | fwd+bwd / cuDNN | TFLOP/s-equiv fwd+bwd |")
    print("|---|---|---|---|---|---|---|")
    for causal in (False, True):
        flops = 4 * b * h * s * s * d * (0.5 if causal else 1.0)
        rows = {}
        base = baseline(causal)
        rows["cuDNN plain attention" if on_gpu else "XLA plain attention"] = (
            _bench(jax.jit(base), q, k, v, reps=a.reps), _bench(grad_of(base, 3), q, k, v, reps=a.reps))
        for name, make in impls.items():
            if not ok.get((name, causal)):
                continue
            fn = make(causal)
            try:
                rows[f"NTK {name}"] = (_bench(jax.jit(fn), q, k, v, z, kvec, reps=a.reps),
                                       _bench(grad_of(fn, 5), q, k, v, z, kvec, reps=a.reps))
            except Exception as e:
                print(f"time {name} causal={causal}: ERROR {type(e).__name__}: {str(e)[:300]}", flush=True)
        t0 = next(iter(rows.values()))
        for name, (tf, tg) in rows.items():
            print(f"| {causal} | {name} | {tf * 1e3:.3f} | {tg * 1e3:.3f} | {tf / t0[0]:.3f} | {tg / t0[1]:.3f} | "
                  f"{flops * 3.5 / tg / 1e12:.1f} |", flush=True)
            report["timing"][f"{name} causal={causal}"] = {"fwd_s": tf, "fwd_bwd_s": tg}
        best = min((tg for n, (tf, tg) in rows.items() if n.startswith("NTK")), default=None)
        if best is not None:
            verdict = "meets" if best / t0[1] <= 1.15 else "misses"
            print(f"causal={causal}: best NTK fwd+bwd = {best / t0[1]:.3f}x the baseline ({verdict} the 1.15x target)")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
