"""Peak host memory of DP NTK regression at n = 10⁴, m = 256 (the issue's "runs within 4 GB" claim).

    JAX_PLATFORMS=cpu .venv/bin/python bench/dp_ntk_memory.py [--n 10000] [--d 512] [--m 256] [--stages ...]

Each stage runs in a fresh subprocess and reports its peak resident set size (ru_maxrss) and wall time:
- baseline:       import jax + make the data (the floor every stage pays);
- kernel_blocked: quadratic_ntk(X, W) [n, n], blocked (ours);
- kernel_dense:   the same kernel as one unblocked expression ((XWᵀ)(XWᵀ)ᵀ/m) ∘ (XXᵀ) (the peer);
- private:        fit_predict at ε = 10^1.5, assumptions="paper" (k = 8 with the true n, factor sampler,
                  Woodbury solve; the assumption check, an O(n³) measurement, is skipped) and n
                  test points (the [n_test, n] query kernel included);
- nonprivate:     fit_predict without noise (the [n, n] kernel + its Cholesky solve).
The m×n×n tensor of the naive definition would need m·n²·4 bytes (102 GB at n = 10⁴) and is not run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

STAGES = ("baseline", "kernel_blocked", "kernel_dense", "private", "nonprivate")


def _child(stage: str, n: int, d: int, m: int) -> dict:
    import resource

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxmm.privacy import dp_ntk, ntk_regression as nr

    rng = np.random.default_rng(0)
    X = rng.uniform(size=(n, d)).astype(np.float32)
    y = rng.integers(0, 2, n)
    t0 = time.time()
    if stage == "kernel_blocked":
        Xn = nr.l2_normalize(X)
        W = jax.random.normal(jax.random.key(0), (m, d))
        nr.quadratic_ntk(Xn, W).block_until_ready()
    elif stage == "kernel_dense":
        Xn = nr.l2_normalize(X)
        W = jax.random.normal(jax.random.key(0), (m, d))
        A = Xn @ W.T
        jax.jit(lambda A, Xn: ((A @ A.T) / m) * (Xn @ Xn.T))(A, Xn).block_until_ready()
    elif stage in ("private", "nonprivate"):
        eps = 10**1.5 if stage == "private" else None
        pred, rep = dp_ntk.fit_predict(jax.random.key(0), X, y, X, num_classes=2, m=m, epsilon=eps,
                                       assumptions="paper", check_assumptions=False)
        assert pred is not None and pred.shape == (n,)
    jnp.zeros(()).block_until_ready()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"stage": stage, "n": n, "d": d, "m": m, "peak_rss_gb": peak / 2**30, "seconds": time.time() - t0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--m", type=int, default=256)
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--child", choices=STAGES)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.n, args.d, args.m)))
        return
    rows = []
    for stage in args.stages:
        out = subprocess.run([sys.executable, __file__, "--child", stage, "--n", str(args.n), "--d", str(args.d),
                              "--m", str(args.m)], capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"stage {stage} failed")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{r['stage']:>15}: peak RSS {r['peak_rss_gb']:.2f} GB, {r['seconds']:.1f} s  "
              f"(n={r['n']} d={r['d']} m={r['m']})", flush=True)
    by = {r["stage"]: r for r in rows}
    if "kernel_blocked" in by and "kernel_dense" in by:
        print(f"blocked / dense peak RSS: {by['kernel_blocked']['peak_rss_gb'] / by['kernel_dense']['peak_rss_gb']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
