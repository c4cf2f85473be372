"""The measurements behind bench/gpu/run_all.py: one part per process (`python bench/gpu/parts.py PART --json F`).

Each part writes its JSON record to F after every row (a part killed at its timeout keeps what it measured),
checks every candidate against a float32 reference on fresh inputs before timing it, and times candidates
beside their peer (cuDNN attention, the bf16 matmul ceiling, the naive XLA path) in the same process.
Row fields: name, shape, ms (median), tflops, ratio (time / the peer's time), rel_err (‖got − ref‖/‖ref‖, the
worst over the output and every gradient), max_abs_err, status ("ok", "skipped", "error", "incorrect"), note.

--smoke: tiny sizes on CPU (Pallas in interpret mode, float32; cuDNN rows "skipped: needs CUDA"), to prove the
logic and the report; the numbers mean nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxmm.timing import time_call  # noqa: E402

# JAXMM_BENCH_FAKE_GPU=1 (with --smoke, on CPU) walks the GPU-only branches: their cuDNN / compiled-Pallas calls
# fail there and must be recorded as error rows, never crash a part
ON_GPU = jax.default_backend() == "gpu" or os.environ.get("JAXMM_BENCH_FAKE_GPU") == "1"
NEEDS_CUDA = "skipped: needs CUDA (no NVIDIA GPU in this run)"
# dense bf16 peak (no sparsity) by device_kind substring, from NVIDIA's datasheets; first match wins
PEAK_BF16 = (("H200", 989e12), ("H100", 989e12), ("H800", 989e12), ("GH200", 989e12), ("A100", 312e12),
             ("B200", 2250e12))


def peak_bf16(kind: str):
    return next((p for k, p in PEAK_BF16 if k.lower() in kind.lower()), None)


# ----------------------------------------------------------------------------------------------- recording
class Record:
    def __init__(self, path, part, smoke):
        self.path = path
        self.data = {"part": part, "smoke": smoke, "rows": [], "targets": [], "notes": []}
        self.flush()

    def flush(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=float)
        os.replace(tmp, self.path)

    def row(self, name, shape="", status="ok", **fields):
        r = {"name": name, "shape": shape, "status": status, **fields}
        self.data["rows"].append(r)
        self.flush()
        print(json.dumps(r, default=float), flush=True)
        return r

    def target(self, name, value, threshold, op, note=""):
        met = None if value is None else bool(value <= threshold if op == "<=" else value >= threshold)
        if self.data["smoke"]:
            met, note = None, "smoke sizes: not a measurement" + (f"; {note}" if note else "")
        t = {"name": name, "value": value, "threshold": f"{op} {threshold}", "met": met, "note": note}
        self.data["targets"].append(t)
        self.flush()
        print("target", json.dumps(t, default=float), flush=True)

    def note(self, text):
        self.data["notes"].append(text)
        self.flush()


def timed_row(rec, name, shape, fn, args, *, flops, reps, peer_s=None, errs=None):
    """Time `fn(*args)` and record a row; an exception becomes an 'error' row. Returns the median or None."""
    try:
        timing = time_call(fn, *args, reps=reps, warmup=2)  # compile + one warm-up call, then `reps` timed
        t, first, spread = timing.median, timing.first, timing.spread
    except Exception as e:  # one failing candidate must not hide the others
        traceback.print_exc(limit=3)
        rec.row(name, shape, "error", note=f"{type(e).__name__}: {str(e)[:300]}")
        return None
    fields = dict(ms=t * 1e3, tflops=flops / t / 1e12 if flops else None, first_call_s=first, spread=spread,
                  ratio=(t / peer_s) if peer_s else None)
    if errs:
        fields.update(errs)
    rec.row(name, shape, **fields)
    return t


def errors(got, want):
    """Worst relative (‖·‖₂) and absolute error over matching pytrees, in float32."""
    rel, mx = 0.0, 0.0
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        if not np.all(np.isfinite(a)):
            return {"rel_err": float("nan"), "max_abs_err": float("nan")}
        rel = max(rel, float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)))
        mx = max(mx, float(np.max(np.abs(a - b))))
    return {"rel_err": rel, "max_abs_err": mx}


def grad_fn(fn, nargs):
    """jit(grad of Σ fn(*x)·ct over the first `nargs` arguments), called as g(*x, ct): the forward + backward
    that training runs (ct: a fixed random cotangent, so every output element matters)."""
    def loss(*a):
        return jnp.sum(fn(*a[:nargs]).astype(jnp.float32) * a[nargs])

    return jax.jit(jax.grad(loss, argnums=tuple(range(nargs))))


def jitted(fn, nargs):
    """(forward, forward+backward) jitted once, so a check and a timing at the same shape share compilations."""
    return jax.jit(fn), grad_fn(fn, nargs)


def check(rec, name, fns, ref_fns, args, ct, tol):
    """Output and every gradient of `fns` against `ref_fns` (float32 maths on the same inputs). Returns the
    error dict (with ok) or None after recording an error row."""
    try:
        want = (ref_fns[0](*args), ref_fns[1](*args, ct))
        got = (fns[0](*args), fns[1](*args, ct))
    except Exception as e:
        traceback.print_exc(limit=3)
        rec.row(f"check {name}", status="error", note=f"{type(e).__name__}: {str(e)[:300]}")
        return None
    e = errors(got, want)
    e["ok"] = bool(e["rel_err"] <= tol)
    print(f"check {name}: {e} (tol {tol})", flush=True)
    return e


# ----------------------------------------------------------------------------------------------- parts
def part_env(rec, smoke):
    d = jax.devices()[0]
    import jaxlib

    rec.data.update(device_kind=d.device_kind, platform=d.platform, backend=jax.default_backend(),
                    device_count=jax.device_count(), jax=jax.__version__, jaxlib=jaxlib.__version__,
                    python=platform.python_version(), peak_bf16_tflops=(peak_bf16(d.device_kind) or 0) / 1e12
                    or None)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        rec.data["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.SubprocessError) as e:
        rec.data["nvidia_smi"] = f"unavailable: {type(e).__name__}"
    rec.row("device", d.device_kind, note=f"{jax.default_backend()}, jax {jax.__version__}")
    # preflight: what the parts import, on this machine's packages (the GPU image is not the project's venv)
    import importlib

    for mod in ("flax", "optax", "pytest", "jaxmm.models.llm", "jaxmm.kernels.ntk_attention",
                "jaxmm.kernels.tensor_attention", "jaxmm.ops.ntk", "jaxmm.ops.tensor"):
        try:
            m = importlib.import_module(mod)
            rec.row(f"import {mod}", status="ok", note=getattr(m, "__version__", ""))
        except Exception as e:  # recorded: the part that needs it will fail with the same error
            rec.row(f"import {mod}", status="error", note=f"{type(e).__name__}: {str(e)[:200]}")


def part_ntk(rec, smoke):
    """NTK-Attention (2406.14036) fwd and fwd+bwd against cuDNN plain attention, full and causal."""
    from jaxmm.kernels.ntk_attention import ntk_attention_cudnn, ntk_attention_pallas
    from jaxmm.attention import dot_product_attention, ntk_attention
    from jaxmm.ops.ntk import ntk_attention_reference

    dtype = jnp.bfloat16 if ON_GPU else jnp.float32
    if smoke:  # the check shape is the timed shape: one compilation serves both
        (b, h, d), seqs, check_shape, reps, blk = (1, 2, 16), (32,), (1, 32, 2, 16), 1, 16
    else:
        (b, h, d), seqs, check_shape, reps, blk = (4, 16, 128), (2048, 8192), (2, 1024, 4, 128), 10, 64
    tol = 2e-2 if dtype == jnp.bfloat16 else 1e-4

    def inputs(bb, s, hh, dd, seed):
        ks = jax.random.split(jax.random.key(seed), 6)
        q, k, v = (jax.random.normal(kk, (bb, s, hh, dd), dtype) for kk in ks[:3])
        z, kvec = jax.random.normal(ks[3], (hh, dd, dd)) * 0.3, jax.random.normal(ks[4], (hh, dd))
        return (q, k, v, z, kvec), jax.random.normal(ks[5], (bb, s, hh, dd), jnp.float32)

    makers = {  # name -> (needs CUDA, fn(causal))
        "ntk cudnn (cuDNN bwd)": (True, lambda c: lambda *x: ntk_attention(*x, is_causal=c, implementation="cudnn")),
        "ntk cudnn (Pallas bwd)": (True, lambda c: lambda *x: ntk_attention_cudnn(*x, is_causal=c,
                                                                                   backward="pallas")),
        # the kernel with explicit blocks (64: bench/ntk_attention_gpu.py's GPU default; interpreted on CPU)
        "ntk pallas": (False, lambda c: lambda *x: ntk_attention_pallas(*x, is_causal=c, block_q=blk, block_k=blk,
                                                                        interpret=not ON_GPU)),
    }
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    fns = {(n, c): jitted(mk(c), 5) for n, (cuda, mk) in makers.items() for c in (False, True)
           if ON_GPU or not cuda}
    good = {}
    args, ct = inputs(*check_shape, seed=3)
    for causal in (False, True):
        ref = jitted(lambda *x, c=causal: ntk_attention_reference(f32(x[0]), f32(x[1]), f32(x[2]), x[3], x[4],
                                                                  is_causal=c), 5)
        for name in makers:
            if (name, causal) not in fns:
                rec.row(f"check {name} causal={causal}", status="skipped", note=NEEDS_CUDA)
                continue
            good[(name, causal)] = check(rec, f"{name} causal={causal}", fns[(name, causal)], ref, args, ct, tol)
    for s in seqs:
        args, ct = inputs(b, s, h, d, seed=s)
        qkv = args[:3]
        for causal in (False, True):
            flops = 4 * b * h * s * s * d * (0.5 if causal else 1.0)
            shape = f"B{b} S{s} H{h} d{d} {jnp.dtype(dtype).name} {'causal' if causal else 'full'}"
            plain = lambda impl, c=causal: lambda q, k, v: dot_product_attention(q, k, v, is_causal=c,  # noqa: E731
                                                                                   implementation=impl)
            peer = {"fwd": None, "fwd+bwd": None}
            if ON_GPU:
                cudnn = jitted(plain("cudnn"), 3)
                peer["fwd"] = timed_row(rec, "cuDNN attention fwd", shape, cudnn[0], qkv, flops=flops, reps=reps)
                peer["fwd+bwd"] = timed_row(rec, "cuDNN attention fwd+bwd", shape, cudnn[1], (*qkv, ct),
                                            flops=3.5 * flops, reps=reps)
            else:
                rec.row("cuDNN attention fwd", shape, "skipped", note=NEEDS_CUDA)
                rec.row("cuDNN attention fwd+bwd", shape, "skipped", note=NEEDS_CUDA)
            if s <= 2048:  # XLA attention for scale (its [B, H, S, S] scores are 17 GB at S=8192)
                timed_row(rec, "XLA attention fwd+bwd", shape, grad_fn(plain("xla"), 3), (*qkv, ct),
                          flops=3.5 * flops, reps=reps, peer_s=peer["fwd+bwd"])
            best = None
            for name in makers:
                e = good.get((name, causal))
                if (name, causal) not in fns:
                    rec.row(f"{name} fwd+bwd", shape, "skipped", note=NEEDS_CUDA)
                    continue
                if not e or not e["ok"]:
                    rec.row(f"{name} fwd+bwd", shape, "incorrect" if e else "error",
                            note="not timed: failed its correctness check" + (f" (rel err {e['rel_err']:.2e})"
                                                                              if e else ""))
                    continue
                fwd, fwd_bwd = fns[(name, causal)]
                errs = {k: e[k] for k in ("rel_err", "max_abs_err")}
                timed_row(rec, f"{name} fwd", shape, fwd, args, flops=flops, reps=reps, peer_s=peer["fwd"],
                          errs=errs)
                t = timed_row(rec, f"{name} fwd+bwd", shape, fwd_bwd, (*args, ct), flops=3.5 * flops,
                              reps=reps, peer_s=peer["fwd+bwd"], errs=errs)
                if t is not None and (best is None or t < best[1]):
                    best = (name, t)
            if s == max(seqs):
                ratio = best[1] / peer["fwd+bwd"] if (best and peer["fwd+bwd"]) else None
                rec.target(f"NTK fwd+bwd / cuDNN fwd+bwd, {shape}", ratio, 1.10, "<=",
                           f"best: {best[0]}" if best else "no NTK candidate timed" if ON_GPU else NEEDS_CUDA)
        args = qkv = ct = None


def naive_tensor_attention(q, k1, k2, v1, v2):
    """The XLA peer as the anchor measured it (shared/gpu/gpu_baseline.py): [B, H, n, n, n] scores in float32,
    softmax over the n² pairs, probabilities in the input dtype, then two contractions. Scale 1/d."""
    b, n, h, d = q.shape
    s = jnp.einsum("bihl,bjhl,bkhl->bhijk", q, k1, k2, preferred_element_type=jnp.float32) / d
    p = jax.nn.softmax(s.reshape(b, h, n, n * n), axis=-1).reshape(b, h, n, n, n).astype(q.dtype)
    return jnp.einsum("bhijk,bjhe,bkhe->bihe", p, v1, v2)


def part_tensor(rec, smoke):
    """Exact tensor attention (2405.16411): the Pallas kernel's TFLOP/s (4·n³·d per forward) against the naive
    XLA path (the n³ scores materialised, as the anchor ran it) and the bf16 matmul ceiling of this run; every
    candidate checked against jaxmm's float32 reference first."""
    from jaxmm.kernels.tensor_attention import tensor_attention_pallas
    from jaxmm.attention import tensor_attention
    from jaxmm.ops.tensor import tensor_attention_reference

    dtype = jnp.bfloat16 if ON_GPU else jnp.float32
    if smoke:
        m, (b, h, d), h_naive, ns, check_shape, blk, reps = 256, (1, 2, 16), 2, (32,), (1, 32, 2), 16, 1
    else:  # naive at one head: its f32 scores are 34 GB at n=2048 (the anchor's shape: one (n, d) problem)
        m, (b, h, d), h_naive, ns, check_shape, blk, reps = 8192, (1, 8, 64), 1, (1024, 2048), (1, 256, 2), 64, 5
    tol = 2e-2 if dtype == jnp.bfloat16 else 1e-4

    ka, kb = jax.random.split(jax.random.key(0))
    x, y = jax.random.normal(ka, (m, m), jnp.bfloat16), jax.random.normal(kb, (m, m), jnp.bfloat16)
    ceil_s = timed_row(rec, "bf16 matmul ceiling", f"{m}x{m}x{m}", jax.jit(jnp.matmul), (x, y), flops=2 * m**3,
                       reps=1 if smoke else 10)
    ceiling = 2 * m**3 / ceil_s / 1e12 if ceil_s else None
    rec.data["matmul_tflops"] = ceiling
    del x, y

    def inputs(bb, n, hh, seed):
        ks = jax.random.split(jax.random.key(seed), 6)
        xs = tuple(jax.random.normal(k, (bb, n, hh, d), dtype) * 0.5 for k in ks[:5])
        return xs, jax.random.normal(ks[5], (bb, n, hh, d), jnp.float32)

    fns = {"pallas kernel": jitted(lambda *a: tensor_attention_pallas(*a, block_q=blk, block_k=blk,
                                                                      interpret=not ON_GPU), 5),
           "xla tiled": jitted(lambda *a: tensor_attention(*a, implementation="xla"), 5),
           "xla naive": jitted(naive_tensor_attention, 5)}
    ref = jitted(lambda *a: tensor_attention_reference(*(t.astype(jnp.float32) for t in a)), 5)
    args, ct = inputs(*check_shape, seed=7)
    checks = {name: check(rec, name, f, ref, args, ct, tol) for name, f in fns.items()}

    def ok(name):
        return bool(checks[name] and checks[name]["ok"])

    def errs(name):
        return {k: checks[name][k] for k in ("rel_err", "max_abs_err")} if checks[name] else None

    rates = {}
    for n in ns:
        for who, heads in (("pallas kernel", h), ("xla tiled", h), ("xla naive", h_naive)):
            if who == "xla tiled" and n != min(ns):
                continue
            fwd = 4 * b * heads * n**3 * d
            shape = f"B{b} n{n} H{heads} d{d}"
            if not ok(who):
                rec.row(f"{who} fwd", shape, "incorrect" if checks[who] else "error",
                        note="not timed: failed its correctness check")
                continue
            args, ct = inputs(b, n, heads, seed=n)
            t = timed_row(rec, f"{who} fwd", shape, fns[who][0], args, flops=fwd, reps=reps, errs=errs(who))
            rates[(who, n)] = fwd / t / 1e12 if t else None
            if who == "pallas kernel" or (who == "xla naive" and n == min(ns)):  # naive bwd: several n³ tensors
                timed_row(rec, f"{who} fwd+bwd", shape, fns[who][1], (*args, ct), flops=3.5 * fwd, reps=reps,
                          errs=errs(who))
            args = ct = None
    for r in rec.data["rows"]:  # each rate as a fraction of this run's matmul ceiling
        if ceiling and r.get("tflops") and r["name"] != "bf16 matmul ceiling":
            r["of_matmul_ceiling"] = r["tflops"] / ceiling
    rec.flush()
    n = max(ns)
    k, nv = rates.get(("pallas kernel", n)), rates.get(("xla naive", n))
    rec.target(f"tensor attention kernel fwd TFLOP/s, n={n} d={d}", k, 300, ">=",
               f"matmul ceiling this run: {ceiling:.1f} TFLOP/s" if ceiling else "")
    rec.target(f"kernel / naive XLA fwd rate, n={n} d={d}", (k / nv) if (k and nv) else None, 6, ">=")


def part_llm(rec, smoke):
    """A ~1B Llama-style training step (jaxmm.models.llm.LLM, AdamW in float32, bf16 compute, cuDNN attention):
    step time, and MFU = compiled.cost_analysis() FLOPs / step time / the card's dense bf16 peak."""
    import flax.linen as nn
    import optax

    from jaxmm.models.llm import LLM, LLMConfig

    if smoke:
        cfg = LLMConfig(vocab_size=256, num_layers=1, d_model=64, num_heads=4, mlp_dim=128, dtype=jnp.float32,
                        implementation="xla")
        batch, seq, reps = 2, 64, 2
    else:
        cfg = LLMConfig(vocab_size=32000, num_layers=16, d_model=2048, num_heads=16, mlp_dim=5632,
                        dtype=jnp.bfloat16, implementation="cudnn", remat=False)
        batch, seq, reps = 8, 2048, 10
    shape = (f"L{cfg.num_layers} d{cfg.d_model} H{cfg.num_heads} mlp{cfg.mlp_dim} V{cfg.vocab_size} "
             f"seq{seq} batch{batch} {jnp.dtype(cfg.dtype).name} attn={cfg.implementation}")
    model = LLM(cfg)
    tokens = jax.random.randint(jax.random.key(1), (batch, seq + 1), 0, cfg.vocab_size)
    xla_model = LLM(dataclasses.replace(cfg, implementation="xla"))  # same parameters, portable attention

    def init(seed):  # initialised through XLA attention: the param tree does not depend on the attention kernel
        return nn.meta.unbox(jax.jit(xla_model.init)(jax.random.key(seed), tokens[:1, :8])["params"])

    params = init(0)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    rec.data.update(config=shape, n_params=n_params)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-4, b1=0.9, b2=0.95, weight_decay=0.1))

    def loss_fn(p, toks, m):
        logits = m.apply({"params": p}, toks[:, :-1])
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, toks[:, 1:]))

    def train_step(state, toks):  # the trainer's step (train/loop.py) without its mesh, hooks and metrics
        p, opt = state
        loss, grads = jax.value_and_grad(loss_fn)(p, toks, model)
        updates, opt = tx.update(grads, opt, p)
        return (optax.apply_updates(p, updates), opt), loss

    state = (params, tx.init(params))
    step = jax.jit(train_step, donate_argnums=(0,))
    t0 = time.perf_counter()
    compiled = step.lower(state, tokens).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    losses = []
    for _ in range(2):
        state, loss = compiled(state, tokens)
        losses.append(float(loss))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        state, loss = compiled(state, tokens)
        losses.append(float(loss))  # float() synchronises
        ts.append(time.perf_counter() - t)
    t = float(np.median(ts))
    kind = jax.devices()[0].device_kind
    peak = peak_bf16(kind) if ON_GPU else None
    n_embed = cfg.vocab_size * cfg.d_model
    model_flops = 6 * (n_params - n_embed) * batch * seq + 12 * cfg.num_layers * batch * seq * seq * cfg.d_model / 2
    ok = all(np.isfinite(losses)) and losses[-1] < losses[0]
    rec.row("train step", shape, "ok" if ok else "incorrect", ms=t * 1e3, first_call_s=compile_s,
            spread=(max(ts) - min(ts)) / t,
            tflops=flops / t / 1e12, tokens_per_s=batch * seq / t, n_params=n_params,
            cost_analysis_flops=flops, model_flops=model_flops,
            mfu_cost_analysis=(flops / t / peak) if peak else None,
            mfu_model=(model_flops / t / peak) if peak else None,
            loss_first=losses[0], loss_last=losses[-1],
            note=("" if ok else "loss not finite or not decreasing on a repeated batch; ")
            + (f"peak {peak / 1e12:.0f} TFLOP/s ({kind})" if peak else f"no bf16 peak known for {kind!r}"))
    rec.target("LLM train step MFU (cost-analysis FLOPs / time / peak)",
               (flops / t / peak) if peak else None, 0.48, ">=",
               "" if peak else NEEDS_CUDA if not ON_GPU else f"no peak for {kind}")
    del state, compiled
    # the candidate's attention (cuDNN) against XLA attention: one forward on the same params and batch
    if ON_GPU:
        try:
            p = init(0)
            a = jax.jit(lambda p, t: loss_fn(p, t, model))(p, tokens[:2])
            r = jax.jit(lambda p, t: loss_fn(p, t, xla_model))(p, tokens[:2])
            rec.row("loss cuDNN vs XLA attention", shape, rel_err=abs(float(a) - float(r)) / abs(float(r)),
                    max_abs_err=abs(float(a) - float(r)), note=f"loss {float(a):.5f} vs {float(r):.5f} (2 rows)")
        except Exception as e:
            rec.row("loss cuDNN vs XLA attention", shape, "error", note=f"{type(e).__name__}: {str(e)[:300]}")


def part_unet(rec, smoke):
    """The diffusion UNet (jaxmm.models.unet, a UNet2DConditionModel equivalent): an eps-prediction training
    step's forward + backward at bf16 compute against the same step in float32 on the same card (the peer; no
    diffusers on the device machine), with the bf16 output's error against float32."""
    import flax.linen as nn

    from jaxmm.models.unet import UNet, UNetConfig

    if smoke:  # one level (a cross-attention down block, the mid block, a cross-attention up block): compile time
        kw = dict(block_out_channels=(16,), down_block_types=("CrossAttnDownBlock2D",),  # is the smoke's cost
                  up_block_types=("CrossAttnUpBlock2D",), num_attention_heads=2, cross_attention_dim=16,
                  norm_num_groups=8)
        batch, size, ctx_len, reps = 2, 8, 4, 2
    else:  # SD-1.5-like widths at a 64 x 64 latent (512 px images), two levels fewer blocks
        kw = dict(block_out_channels=(320, 640, 1280), num_attention_heads=8, cross_attention_dim=768,
                  norm_num_groups=32, layers_per_block=2,
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
        batch, size, ctx_len, reps = 8, 64, 77, 10
    models = {name: UNet(UNetConfig(dtype=dt, **kw)) for name, dt in (("bf16", jnp.bfloat16), ("f32", jnp.float32))}
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, size, size, 4)), jnp.float32)
    t = jnp.asarray(rng.integers(0, 1000, size=(batch,)), jnp.int32)
    ctx = jnp.asarray(rng.normal(size=(batch, ctx_len, kw["cross_attention_dim"])), jnp.float32)
    # params drawn with NumPy from the abstract shapes (a jitted init compiles every parameter's RNG: slow)
    shapes = nn.meta.unbox(jax.eval_shape(models["f32"].init, jax.random.key(0), x, t, ctx)["params"])
    params = jax.tree.map(lambda s: jnp.asarray(0.02 * rng.normal(size=s.shape), jnp.float32), shapes)
    shape = f"B{batch} {size}x{size}x4 ctx{ctx_len} ch{kw['block_out_channels']}"

    def step_fn(model):
        def loss(p, x, t, ctx):
            return jnp.mean((model.apply({"params": p}, x, t, ctx).astype(jnp.float32) - x) ** 2)
        return jax.jit(jax.value_and_grad(loss))

    steps = {name: step_fn(m) for name, m in models.items()}
    errs = errors(steps["bf16"](params, x, t, ctx), steps["f32"](params, x, t, ctx))  # loss and every grad leaf
    peer = timed_row(rec, "unet train step float32 (peer)", shape, steps["f32"], (params, x, t, ctx), flops=None,
                     reps=reps)
    cand = timed_row(rec, "unet train step bf16 (errors: worst leaf vs float32)", shape, steps["bf16"],
                     (params, x, t, ctx), flops=None, reps=reps, peer_s=peer, errs=errs)
    rec.target("UNet train step bf16 / float32 time", (cand / peer) if cand and peer else None, 1.0, "<=",
               "" if ON_GPU else NEEDS_CUDA)


PARTS = {"env": part_env, "ntk": part_ntk, "tensor": part_tensor, "llm": part_llm, "unet": part_unet}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("part", choices=sorted(PARTS))
    ap.add_argument("--json", required=True)
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    if not a.smoke and not ON_GPU and a.part != "env":
        sys.exit(f"{a.part}: no GPU (backend {jax.default_backend()}); use --smoke on CPU")
    rec = Record(a.json, a.part, a.smoke)
    print(f"== {a.part}: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}", flush=True)
    PARTS[a.part](rec, a.smoke)


if __name__ == "__main__":
    main()
