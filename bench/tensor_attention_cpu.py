"""Tensor attention on CPU: poly vs exact forward+backward at n = 1024 (with the poly error), and the exact path
at n = 4096, d = 16 within 2 GB peak memory (the naive n³ score tensor would be 275 GB).

    JAX_PLATFORMS=cpu .venv/bin/python bench/tensor_attention_cpu.py [--n 1024] [--big-n 4096] [--skip-big]
        [--big-backward] [--out results.json]

Memory: each case runs in a fresh subprocess and reports its peak resident set size (getrusage ru_maxrss, the
whole process: Python + JAX runtime + buffers) and the baseline RSS of the same process after JAX start-up and
input creation, plus XLA's compiled temp-buffer size (`compiled.memory_analysis()`).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _timed(fn, *args, reps=3):
    from jaxmm.timing import time_call

    t = time_call(fn, *args, reps=reps)  # compile + warm, then the best of `reps`
    return t.min, t.value


def _inputs(n, d, scale, seed=0):
    import jax

    ks = jax.random.split(jax.random.key(seed), 6)
    x = [jax.random.normal(k, (1, n, 1, d)) * scale for k in ks[:3]]
    v = [jax.random.normal(k, (1, n, 1, d)) for k in ks[3:5]]
    return x + v, jax.random.normal(ks[5], (1, n, 1, d))


def case_compare(n, d, degrees, scale):
    """exact vs poly forward and forward+backward; errors of poly against exact (output and gradients)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxmm.ops.tensor import poly_rank, tensor_attention

    args, w = _inputs(n, d, scale)
    rows = []

    def make(**kw):
        fwd = jax.jit(lambda *a: tensor_attention(*a, **kw))
        grad = jax.jit(jax.grad(lambda *a: jnp.sum(tensor_attention(*a, **kw) * w), argnums=range(5)))
        return fwd, grad

    fwd, grad = make(method="exact")
    t_fwd, o_ex = _timed(fwd, *args, reps=2)
    t_bwd, g_ex = _timed(grad, *args, reps=1)
    rows.append(dict(method="exact", n=n, d=d, r=None, fwd_s=t_fwd, fwdbwd_s=t_bwd, out_err=0.0, grad_err=0.0))
    for g in degrees:
        fwd, grad = make(method="poly", degree=g)
        t_fwd, o = _timed(fwd, *args)
        t_bwd, gr = _timed(grad, *args)
        out_err = float(jnp.abs(o - o_ex).max() / jnp.abs(o_ex).max())
        grad_err = max(float(jnp.abs(a - b).max() / jnp.abs(b).max()) for a, b in zip(gr, g_ex))
        rows.append(dict(method=f"poly g={g}", n=n, d=d, r=poly_rank(d, g), fwd_s=t_fwd, fwdbwd_s=t_bwd,
                         out_err=out_err, grad_err=grad_err))
    return dict(rows=rows, peak_rss_mb=_rss_mb(), beta=float(np.abs(scale) ** 3))


def case_big(n, d, backward, scale):
    """The exact path at large n: forward time and peak RSS; forward+backward compiled (XLA temp memory) and,
    with --big-backward, run (about 3× the forward's FLOPs)."""
    import jax
    import jax.numpy as jnp

    from jaxmm.ops.tensor import tensor_attention

    args, w = _inputs(n, d, scale)
    jax.block_until_ready(args)
    base = _rss_mb()
    fwd = jax.jit(lambda *a: tensor_attention(*a))
    compiled = fwd.lower(*args).compile()
    mem = compiled.memory_analysis()
    temp_mb = getattr(mem, "temp_size_in_bytes", 0) / 2**20 if mem is not None else None
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    out = dict(n=n, d=d, fwd_s=time.perf_counter() - t, baseline_rss_mb=base, xla_temp_mb_fwd=temp_mb)
    out["peak_rss_mb_fwd"] = _rss_mb()
    out["tflops_fwd"] = 4 * n**3 * d / out["fwd_s"] / 1e12
    grad = jax.jit(jax.grad(lambda *a: jnp.sum(tensor_attention(*a) * w), argnums=range(5)))
    c = grad.lower(*args).compile()
    m2 = c.memory_analysis()
    out["xla_temp_mb_fwdbwd"] = getattr(m2, "temp_size_in_bytes", 0) / 2**20 if m2 is not None else None
    if backward:
        t = time.perf_counter()
        jax.block_until_ready(c(*args))
        out["fwdbwd_s"] = time.perf_counter() - t
        out["peak_rss_mb_fwdbwd"] = _rss_mb()
    return out


def _sub(argv):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, os.path.abspath(__file__), *argv], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    if res.returncode:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--degrees", type=int, nargs="*", default=[2, 3])
    p.add_argument("--scale", type=float, default=0.6, help="std of q, k1, k2 entries")
    p.add_argument("--big-n", type=int, default=4096)
    p.add_argument("--skip-big", action="store_true")
    p.add_argument("--big-backward", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.case == "compare":
        print(json.dumps(case_compare(a.n, a.d, a.degrees, a.scale)))
        return
    if a.case == "big":
        print(json.dumps(case_big(a.big_n, a.d, a.big_backward, a.scale)))
        return
    common = ["--d", str(a.d), "--scale", str(a.scale)]
    res = {"compare": _sub(["--case", "compare", "--n", str(a.n), "--degrees", *map(str, a.degrees), *common])}
    print(f"\n## n = {a.n}, d = {a.d}, entries ~ N(0, {a.scale}²), one head (peak RSS "
          f"{res['compare']['peak_rss_mb']:.0f} MB)\n")
    print("| method | rank r | fwd s | fwd+bwd s | fwd+bwd speed-up vs exact | max rel err O | max rel err grads |")
    print("|---|---|---|---|---|---|---|")
    ex = res["compare"]["rows"][0]["fwdbwd_s"]
    for r in res["compare"]["rows"]:
        print(f"| {r['method']} | {r['r'] or '-'} | {r['fwd_s']:.3f} | {r['fwdbwd_s']:.3f} | "
              f"{ex / r['fwdbwd_s']:.1f}x | {r['out_err']:.1e} | {r['grad_err']:.1e} |")
    if not a.skip_big:
        big = _sub(["--case", "big", "--big-n", str(a.big_n), *common] + (["--big-backward"] if a.big_backward else []))
        res["big"] = big
        print(f"\n## exact, n = {a.big_n}, d = {a.d}\n")
        print("| pass | time s | TFLOP/s | peak RSS MB (process) | RSS before the call MB | XLA temp MB |")
        print("|---|---|---|---|---|---|")
        print(f"| fwd | {big['fwd_s']:.1f} | {big['tflops_fwd']:.3f} | {big['peak_rss_mb_fwd']:.0f} | "
              f"{big['baseline_rss_mb']:.0f} | {big['xla_temp_mb_fwd']:.1f} |")
        if "fwdbwd_s" in big:
            print(f"| fwd+bwd | {big['fwdbwd_s']:.1f} | - | {big['peak_rss_mb_fwdbwd']:.0f} | "
                  f"{big['baseline_rss_mb']:.0f} | {big['xla_temp_mb_fwdbwd']:.1f} |")
        else:
            print(f"| fwd+bwd (compiled, not run: --big-backward) | - | - | - | - | {big['xla_temp_mb_fwdbwd']:.1f} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
