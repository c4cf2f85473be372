"""Tensor attention experiments (2405.16411; configs/tensor_attention.py): poly error table, scaling, Match3.

Each is a `train.experiment` experiment writing results.md, results.json and PNG plots into the workdir through
`train.report`. Match3 trains every (model, seed) as the training task `tensor_attention.match3_model` in the
shared loop (train/loop.py), each in <workdir>/<model>_seed<seed> (metrics.jsonl, summary.json, checkpoints).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxmm.attention import tensor_attention
from jaxmm.data.match3 import eval_set as match3_eval_set
from jaxmm.data.match3 import match3_labels
from jaxmm.ops.tensor import poly_rank, tensor_attention_loss_grad
from jaxmm.timing import time_call
from train.experiment import experiment
from train.task import Task
from train.tasks import register


def _np_attention(q, k1, k2, v1, v2, s):
    """Float64 definition for one head: q.. [n, d] -> [n, dv]."""
    logits = np.einsum("il,jl,kl->ijk", q, k1, k2) * s
    p = np.exp(logits - logits.max(axis=(1, 2), keepdims=True))
    p /= p.sum(axis=(1, 2), keepdims=True)
    return np.einsum("ijk,je,ke->ie", p, v1, v2), np.abs(logits).max()


# ------------------------------------------------------------------------------------------------ 1. poly error
@experiment("tensor_attention.poly_error")
def poly_error(config, report):
    n, d = config.n, config.d
    poly = jax.jit(lambda *a, g: tensor_attention(*a, method="poly", degree=g), static_argnames="g")
    table = {}  # (B, g) -> (max rel err over seeds, beta)
    for B in config.bounds:
        for seed in range(config.seeds):
            rng = np.random.default_rng(1000 * seed + int(100 * B))
            x = [rng.uniform(-B, B, size=(n, d)) for _ in range(3)] + [rng.normal(size=(n, d)) for _ in range(2)]
            ref, beta = _np_attention(*x, 1 / d)
            xs = [jnp.asarray(t[None, :, None].astype(np.float32)) for t in x]
            for g in config.degrees:
                out = np.asarray(poly(*xs, g=g)[0, :, 0], np.float64)
                err = float(np.abs(out - ref).max() / np.abs(ref).max()) if np.all(np.isfinite(out)) else math.inf
                prev = table.get((B, g), (0.0, 0.0))
                table[(B, g)] = (max(prev[0], err), max(prev[1], beta))
        print(f"[poly_error] B={B}: " + " ".join(f"g{g}={table[(B, g)][0]:.1e}" for g in config.degrees), flush=True)

    # ∇_X of the Definition 3.8 objective: fast (poly) vs exact
    gn, gd = config.grad_n, config.grad_d
    gtable = {}
    for B in config.grad_bounds:
        rng = np.random.default_rng(int(100 * B))
        a = [rng.uniform(-1, 1, size=(gn, gd)) for _ in range(5)]
        xf = [rng.uniform(-B, B, size=(gd, gd)) for _ in range(3)]
        args = [t.astype(np.float32) for t in a + xf + [rng.normal(size=(gd * gd, gd)), rng.normal(size=(gn, gd))]]
        _, g_ex = tensor_attention_loss_grad(*args)
        for g in config.grad_degrees:
            _, g_poly = tensor_attention_loss_grad(*args, method="poly", degree=g)
            err = float(jnp.abs(g_poly - g_ex).max() / jnp.abs(g_ex).max())
            gtable[(B, g)] = err if math.isfinite(err) else math.inf

    lines = [f"# Poly tensor attention error (n = {n}, d = {d}, s = 1/d, q/k1/k2 entries uniform in [−B, B], "
             f"v ~ N(0, 1), max over {config.seeds} seeds)", "",
             "Relative error max|O_poly − O| / max|O| against the float64 definition; β = max|S| observed "
             "(≤ B³). An error near 1 means the output is unrelated to the true one (z has lost its sign or scale).",
             "", "| B | B³ | β | " + " | ".join(f"g={g} (r={poly_rank(d, g)})" for g in config.degrees) + " |",
             "|---|---|---|" + "---|" * len(config.degrees)]
    for B in config.bounds:
        beta = table[(B, config.degrees[0])][1]
        lines.append(f"| {B} | {B ** 3:.3g} | {beta:.3g} | " +
                     " | ".join(_fmt(table[(B, g)][0]) for g in config.degrees) + " |")
    grad = [f"Fast ∇_X of the Definition 3.8 objective vs the exact (Lemma 4.1) gradient, n = {gn}, d = {gd}, "
            "A entries uniform in [−1, 1], X1, X2, X3 entries uniform in [−B, B] (relative max error):", "",
            "| B | " + " | ".join(f"g={g}" for g in config.grad_degrees) + " |",
            "|---|" + "---|" * len(config.grad_degrees)]
    grad += [f"| {B} | " + " | ".join(_fmt(gtable[(B, g)]) for g in config.grad_degrees) + " |"
             for B in config.grad_bounds]
    with report.figure("tensor_attention_poly_error.png") as (fig, ax):
        for g in config.degrees:
            errs = [min(table[(B, g)][0], 1e3) for B in config.bounds]
            ax.semilogy([B ** 3 for B in config.bounds], errs, "o-", label=f"g={g}")
        ax.set_xscale("log")
        ax.set(xlabel="B³ (bound on |S|)", ylabel="relative error of O (capped at 1e3)",
               title=f"poly tensor attention error, n={n}, d={d}")
        ax.legend()
    report.section("\n".join(lines), forward=[dict(B=B, g=g, err=e, beta=b) for (B, g), (e, b) in table.items()])
    report.section("\n".join(grad), grad=[dict(B=B, g=g, err=e) for (B, g), e in gtable.items()])
    small = [table[(B, g)][0] for B in config.bounds for g in config.degrees if B ** 3 <= 0.1 * g]
    big = [table[(B, g)][0] for B in config.bounds for g in config.degrees if B ** 3 >= 4 * g]
    return {"max_err_below_threshold": max(small) if small else None,
            "min_err_above_threshold": min(big) if big else None}


def _fmt(e):
    return "inf/nan" if not math.isfinite(e) else f"{e:.1e}"


# ------------------------------------------------------------------------------------------------ 2. scaling
@experiment("tensor_attention.scaling")
def scaling(config, report):
    d = config.d
    rows = []
    arms = [("exact", None, config.exact_ns)] + [("poly", g, config.poly_ns) for g in config.degrees]
    for method, g, ns in arms:
        for n in ns:
            ks = jax.random.split(jax.random.key(n), 6)
            args = [jax.random.normal(k, (1, n, 1, d)) * config.entry_std for k in ks[:3]]
            args += [jax.random.normal(k, (1, n, 1, d)) for k in ks[3:5]]
            w = jax.random.normal(ks[5], (1, n, 1, d))
            kw = dict(method=method, degree=g)
            grad = jax.jit(jax.grad(lambda *a: jnp.sum(tensor_attention(*a, **kw) * w), argnums=range(5)))
            compiled = grad.lower(*args).compile()
            mem = compiled.memory_analysis()
            temp = getattr(mem, "temp_size_in_bytes", None) if mem is not None else None
            t = time_call(compiled, *args, reps=1 if (method == "exact" and n >= 512) else config.reps).min
            name = "exact" if method == "exact" else f"poly g={g}"
            rows.append(dict(method=name, n=n, fwdbwd_s=t, temp_mb=None if temp is None else temp / 2**20))
            print(f"[scaling] {name} n={n}: {t:.4f} s, XLA temp {rows[-1]['temp_mb']} MB", flush=True)

    methods = list(dict.fromkeys(r["method"] for r in rows))
    ns = sorted({r["n"] for r in rows})
    by = {(r["method"], r["n"]): r for r in rows}
    lines = [f"# Tensor attention forward+backward scaling (CPU, d = {d}, one head, float32)", "",
             "Time in seconds (best of reps) / XLA temp memory of the compiled forward+backward in MB.", "",
             "| n | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for n in ns:
        cells = []
        for m in methods:
            r = by.get((m, n))
            cells.append("-" if r is None else f"{r['fwdbwd_s']:.4f} s / {r['temp_mb']:.1f} MB")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    # fitted exponents (log-log slope over the two largest n of each method)
    fits = {}
    for m in methods:
        pts = sorted((r["n"], r["fwdbwd_s"]) for r in rows if r["method"] == m)
        if len(pts) >= 2:
            (n1, t1), (n2, t2) = pts[-2], pts[-1]
            fits[m] = math.log(t2 / t1) / math.log(n2 / n1)
    crossings = {}
    for m in methods[1:]:
        cross = [n for n in ns if (("exact", n) in by and (m, n) in by and
                                   by[(m, n)]["fwdbwd_s"] < by[("exact", n)]["fwdbwd_s"])]
        crossings[m] = min(cross) if cross else None
    lines += ["", "Log-log slope over the two largest n: " + ", ".join(f"{m}: {s:.2f}" for m, s in fits.items()),
              "", "Smallest measured n where poly is faster than exact: " +
              ", ".join(f"{m}: {c}" for m, c in crossings.items())]
    with report.figure("tensor_attention_scaling.png", figsize=(10, 4), ncols=2) as (fig, axes):
        for m in methods:
            pts = sorted((r["n"], r["fwdbwd_s"], r["temp_mb"]) for r in rows if r["method"] == m)
            axes[0].loglog([p[0] for p in pts], [p[1] for p in pts], "o-", label=m)
            axes[1].loglog([p[0] for p in pts], [max(p[2], 1e-3) for p in pts], "o-", label=m)
        axes[0].set_ylabel("forward+backward time (s)")
        axes[1].set_ylabel("XLA temp memory (MB)")
        for ax in axes:
            ax.set_xlabel("n")
            ax.legend()
        fig.suptitle(f"tensor attention scaling, d={d}, CPU")
    report.section("\n".join(lines), rows=rows, slopes=fits, crossings=crossings)
    return {"slope_" + m.replace(" ", "_").replace("=", ""): s for m, s in fits.items()}


# ------------------------------------------------------------------------------------------------ 3. Match3
class Match3(Task):
    """One Match3 model (`model.kind`: softmax | tensor | tensor_poly) in the shared loop: sigmoid cross-entropy
    per token on random sequences (example i of the training stream is drawn from seed [data.seed, i]), eval
    = per-token accuracy on `data.eval_sequences` held-out sequences (drawn as the experiment always drew them)."""

    metric = "eval_accuracy"

    def default_config(self):
        return ml_collections.ConfigDict(dict(
            model=dict(kind="softmax", width=32, heads=4, mlp_dim=64, poly_degree=3, tensor_scale=8 ** -0.5),
            data=dict(seq_len=6, modulus=0, distinct=True, train_sequences=256_000, eval_sequences=4096, seed=0),
            task_args={}))

    def build_model(self, config):
        from jaxmm.models.match3 import KINDS, Match3Model

        if config.model.kind not in KINDS:
            raise ValueError(f"config.model.kind: expected one of {KINDS}, got {config.model.kind!r}")
        return Match3Model(vocab=match3_data(config.data)[0], **config.model)

    def datasets(self, config):
        import grain

        d = config.data
        modulus, eval_x, eval_y = match3_data(d)

        def example(i):
            x = np.random.default_rng([d.seed, int(i)]).integers(0, modulus, d.seq_len)
            return {"tokens": x.astype(np.int32), "labels": match3_labels(x, modulus, d.distinct).astype(np.float32)}

        evals = [{"tokens": x.astype(np.int32), "labels": y.astype(np.float32)} for x, y in zip(eval_x, eval_y)]
        return grain.MapDataset.range(d.train_sequences).map(example), grain.MapDataset.source(evals)

    def model_inputs(self, batch):
        return {"tokens": batch["tokens"]}

    def loss_fn(self, model, params, batch, rng, extra=None):
        logits = model.apply({"params": params}, batch["tokens"])
        loss = optax.sigmoid_binary_cross_entropy(logits, batch["labels"]).mean()
        return loss, {"train_accuracy": jnp.mean((logits > 0) == (batch["labels"] > 0))}

    def eval_metrics(self, model, params, batch):
        logits = model.apply({"params": params}, batch["tokens"])
        return {"loss": optax.sigmoid_binary_cross_entropy(logits, batch["labels"]).mean(-1),
                "accuracy": jnp.mean((logits > 0) == (batch["labels"] > 0), axis=-1)}


register("tensor_attention.match3_model")(Match3)


def match3_data(d):
    """(modulus, eval tokens, eval labels) of a Match3 data section (modulus 0: picked for ~50% positives)."""
    return match3_eval_set(d.seq_len, d.modulus, d.distinct, d.eval_sequences, d.seed)


def match3_run_config(config, kind, seed):
    """The trainer config of one (model, seed) run of the match3 experiment config (what differs from the
    trainer's and the task's defaults)."""
    return ml_collections.ConfigDict(dict(
        task="tensor_attention.match3_model", seed=seed,
        model=dict(kind=kind, width=config.width, heads=config.heads, mlp_dim=config.mlp_dim,
                   poly_degree=config.poly_degree, tensor_scale=config.tensor_scale),
        data=dict(seq_len=config.seq_len, modulus=config.modulus, distinct=config.distinct,
                  train_sequences=config.steps * config.batch_size, eval_sequences=config.eval_sequences,
                  seed=config.seed),
        train=dict(steps=config.steps, batch_size=config.batch_size, grad_clip=0.0, log_every=config.log_every,
                   eval_every=config.log_every, eval_batch_size=min(1024, config.eval_sequences), progress=False,
                   plots=False),
        optim=dict(name="adamw", lr=config.learning_rate, schedule="warmup_cosine",
                   warmup_steps=min(config.warmup, config.steps // 2), weight_decay=0.01),
        checkpoint=dict(async_save=False)))


@experiment("tensor_attention.match3")
def match3(config, report):
    """Every (model, seed) of the config trained by the shared loop (task `tensor_attention.match3_model`) in
    <workdir>/<model>_seed<seed>; the table and the eval-accuracy curves over them."""
    from train.main import run
    from train.metrics import read

    n = config.seq_len
    modulus, _, eval_y = match3_eval_set(n, config.modulus, config.distinct, config.eval_sequences, config.seed)
    base = max(eval_y.mean(), 1 - eval_y.mean())
    print(f"[match3] n={n} M={modulus} positive rate {eval_y.mean():.3f} (majority baseline {base:.3f})", flush=True)
    results, curves = {}, {}
    for kind in config.models:
        for seed in config.seeds:
            wd = report.path(f"{kind}_seed{seed}")
            out = run(match3_run_config(config, kind, seed), wd)
            diverged = not math.isfinite(out["final_loss"])
            results[(kind, seed)] = dict(acc=math.nan if diverged else out["eval_accuracy"], diverged=diverged,
                                         seconds=out["train_time_s"])
            curves[(kind, seed)] = [(r["step"], r["eval_accuracy"]) for r in read(f"{wd}/metrics.jsonl")
                                    if "eval_accuracy" in r]
            print(f"[match3] {kind} seed {seed}: eval accuracy {results[(kind, seed)]['acc']:.4f}", flush=True)

    lines = [f"# Match3 (n = {n}, M = {modulus}, {'distinct i, j, k' if config.distinct else 'any j, k'}, positive rate {eval_y.mean():.3f}; majority baseline {base:.3f})",
             "", f"One layer (pre-norm residual attention + MLP), width {config.width}, {config.heads} heads, "
             f"{config.steps} steps × {config.batch_size} fresh sequences, AdamW {config.learning_rate}; per-token "
             f"accuracy on {config.eval_sequences} held-out sequences.", "",
             "| model | " + " | ".join(f"seed {s}" for s in config.seeds) + " | mean | time/seed (s) |",
             "|---|" + "---|" * (len(config.seeds) + 2)]
    summary = {}
    for kind in config.models:
        accs = [results[(kind, s)]["acc"] for s in config.seeds]
        secs = np.mean([results[(kind, s)]["seconds"] for s in config.seeds])
        label = {"softmax": "standard attention", "tensor": "tensor attention (exact)",
                 "tensor_poly": f"tensor attention (poly, g={config.poly_degree})"}[kind]
        lines.append(f"| {label} | " + " | ".join("diverged" if not math.isfinite(a) else f"{a:.4f}" for a in accs)
                     + f" | {np.nanmean(accs):.4f} | {secs:.0f} |")
        summary[f"acc_{kind}"] = float(np.nanmean(accs))
    with report.figure("tensor_attention_match3.png") as (fig, ax):
        colors = {"softmax": "C0", "tensor": "C1", "tensor_poly": "C2"}
        for (kind, seed), pts in curves.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[kind], alpha=0.8,
                    label=kind if seed == config.seeds[0] else None)
        ax.axhline(base, color="gray", ls="--", label="majority")
        ax.set(xlabel="step", ylabel="held-out per-token accuracy", title=f"Match3, n={n}, M={modulus}")
        ax.legend()
    report.section("\n".join(lines), modulus=modulus,
                   runs=[dict(model=k, seed=s, **v) for (k, s), v in results.items()])
    return summary
