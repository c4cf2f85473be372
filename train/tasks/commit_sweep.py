"""CoMMIT experiments (experiment `commit_sweep`, configs/commit.py:sweep_<kind>): several training runs of
`commit.train` (`CommitTask`) in the shared loop, in one process, then a Markdown table (results.md, numbers in
results.json) and PNGs in the workdir, through the reporter.

  imbalance    constant LR, the encoder side's LR x1 / x10 / x0.1: κ over steps (PAPERS.md §1 claim 1).
  convergence  methods x LR sweep x seeds x modalities: steps until the smoothed training CE reaches each
               target, final CE, eval exact match. The LR sweep runs every method at every LR with the first
               seed; the other seeds run at each method's best LR (lowest final CE of the first seed).
  overhead     wall clock of one κ measurement and the step time with κ every N steps / never / with aux loss.

Each run lives in `<workdir>/runs/<name>`; a run whose summary.json exists is reused, so a killed sweep
re-run continues. Compiled programs are shared across runs through JAX's persistent compilation cache in
`<workdir>/jax_cache` (same shapes and constants -> no recompile, e.g. across seeds).
"""
from __future__ import annotations

import json
import time

import jax
import ml_collections
from etils import epath
import numpy as np

from train import config as config_lib
from train import tasks
from train.experiment import experiment
from train.metrics import read, write_atomic

SWEEP_KEYS = ("kind", "modalities", "lora", "base_image", "base_audio", "encoder_lr_factors", "seeds", "methods",
              "lrs", "target_loss", "measure_every")


def _copy(c) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(c.to_dict())


def _run_one(base, workdir: str, name: str, **overrides) -> tuple[dict, list]:
    from train import loop

    out = str(epath.Path(workdir) / "runs" / name)  # local or gs:// workdir
    done = epath.Path(out) / "summary.json"
    if done.exists():
        return json.loads(done.read_text()), read(epath.Path(out) / "metrics.jsonl")
    c = config_lib.apply_overrides(_copy(tasks.full_config(base)), overrides)  # base: a partial run config
    t0 = time.perf_counter()
    summary = loop.train(c, out, tasks.get(c.task))
    summary["wall_s"] = time.perf_counter() - t0
    write_atomic(done, json.dumps(summary, indent=2, default=str))  # a half-written cache would block the rerun
    print(f"[sweep] {name}: " + " ".join(f"{k}={v:.4g}" for k, v in summary.items()
                                       if isinstance(v, float)), flush=True)
    return summary, read(epath.Path(out) / "metrics.jsonl")


def smoothed_ce(records, alpha: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """(steps, EMA of the logged training CE) — the per-batch CE of a 16-row batch is noisy."""
    pts = [(r["step"], r["ce_loss"]) for r in records if "ce_loss" in r]
    steps = np.array([p[0] for p in pts])
    ema, out = None, []
    for _, v in pts:
        ema = v if ema is None else (1 - alpha) * ema + alpha * v
        out.append(ema)
    return steps, np.array(out)


def steps_to(records, target: float):
    steps, ce = smoothed_ce(records)
    hit = np.nonzero(ce <= target)[0]
    return int(steps[hit[0]]) if hit.size else None


def final_ce(records) -> float:
    _, ce = smoothed_ce(records)
    return float(ce[-1]) if ce.size else float("nan")


def _multipliers(records) -> str:
    """The scheduler's LLM-side multipliers, one per window ("—" for methods without the scheduler): shows at a
    glance whether the controller settles or alternates."""
    xs = [r["lr_scale/llm_side"] for r in records if "lr_scale/llm_side" in r]
    return ", ".join(f"{x:.2g}" for x in xs) if xs else "—"


def _fmt(xs, digits=3):
    xs = [x for x in xs if x is not None and np.isfinite(x)]
    if not xs:
        return "—"
    return f"{np.mean(xs):.{digits}g}" + (f" ± {np.std(xs):.{max(digits - 1, 1)}g}" if len(xs) > 1 else "")


# ------------------------------------------------------------------------------------------------ experiments
def imbalance(s, report):
    workdir, rows, fig_lines = report.workdir, [], []
    for modality in s.modalities:
        base = s[f"base_{modality}"]
        lr = base.optim.lr
        for f in s.encoder_lr_factors:
            for seed in s.seeds:
                name = f"{modality}_enc_lr_x{f:g}_seed{seed}"
                summary, recs = _run_one(base, workdir, name, **{
                    "seed": seed, "task_args.method": "constant", "task_args.measure_every": 5,
                    "optim.groups": ml_collections.ConfigDict({
                        "encoder": {"lr": lr * f}, "projector": {"lr": lr * f}})})
                ks = [(r["step"], r["kappa"]) for r in recs if "kappa" in r]
                k = np.array([v for _, v in ks])
                half = k[len(k) // 2:]
                d_s = np.median([r["d_s"] for r in recs if "d_s" in r])
                d_t = np.median([r["d_t"] for r in recs if "d_t" in r])
                rows.append(f"| {modality} | ×{f:g} | {seed} | {d_s:.2e} | {d_t:.2e} | {np.mean(k):.3f} | "
                            f"{np.mean(half):.3f} | "
                            f"{np.std(half):.3f} | {np.min(k):.3f} – {np.max(k):.3f} | "
                            f"{np.mean(np.diff(np.sign(half - 0.5)) != 0):.2f} | {final_ce(recs):.3f} | "
                            f"{summary.get('eval_accuracy', float('nan')):.3f} |")
                ds = [(r["step"], r["d_s"]) for r in recs if r.get("d_s", 0) > 0]
                fig_lines.append((f"{modality}, encoder LR ×{f:g} (seed {seed})", ks, ds))
    with report.figure("commit_imbalance.png", figsize=(12, 4), ncols=2, dpi=100) as (fig, (ax, bx)):
        for label, ks, ds in fig_lines:
            line, = ax.plot(*zip(*ks), lw=1, label=label)
            bx.plot(*zip(*ds), lw=1, color=line.get_color(), label=label)
        bx.set(yscale="log", xlabel="step", ylabel="D_S (KL of the encoder side's proposed step)")
        ax.axhline(0.5, color="gray", ls=":", lw=1)
        ax.set(xlabel="step", ylabel="κ", ylim=(-0.02, 1.02),
               title="κ under constant LR; encoder-side LR ×1 / ×10 / ×0.1")
        ax.legend(fontsize=7)
        for a in (ax, bx):
            a.grid(alpha=0.3)
    head = ("| modality | encoder LR | seed | median D_S | median D_T | mean κ | mean κ (2nd half) | std κ (2nd half) | range | "
            "fraction of measurements where κ−0.5 changes sign (2nd half) | final CE | eval acc |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    return head + "\n" + "\n".join(rows), {}


def convergence(s, report):
    workdir, tables, result = report.workdir, [], {}
    targets = s.target_loss
    for modality in s.modalities:
        base = s[f"base_{modality}"]
        if s.lora:
            base = _copy(base)
            base.model.llm.lora_rank = 8
            base.optim.groups = ml_collections.ConfigDict({"llm": {"frozen": True}})
        tgt = targets[modality]
        per_method = {}
        for method in s.methods:
            sweep = {}
            for lr in s.lrs:
                sweep[lr] = _run_one(base, workdir, f"{modality}_{method}_lr{lr:g}_seed{s.seeds[0]}",
                                     **{"seed": s.seeds[0], "task_args.method": method, "optim.lr": lr})
            best = min(s.lrs, key=lambda lr: final_ce(sweep[lr][1]))
            runs = [sweep[best]] + [_run_one(base, workdir, f"{modality}_{method}_lr{best:g}_seed{seed}",
                                             **{"seed": seed, "task_args.method": method, "optim.lr": best})
                                    for seed in s.seeds[1:]]
            per_method[method] = dict(best=best, sweep={lr: final_ce(r[1]) for lr, r in sweep.items()}, runs=runs)
        rows = []
        for method, m in per_method.items():
            reach = [steps_to(r[1], tgt) for r in m["runs"]]
            rows.append(
                f"| {method} | {m['best']:g} | " + ", ".join(f"{v:.3f}" for v in m["sweep"].values()) +
                f" | {_fmt([x for x in reach if x is not None])} ({sum(x is not None for x in reach)}/{len(reach)})"
                f" | {_fmt([final_ce(r[1]) for r in m['runs']])} | "
                f"{_fmt([r[0].get('eval_accuracy') for r in m['runs']])} | "
                f"{_fmt([r[0].get('kappa_mean') for r in m['runs']], 2)} | {_multipliers(m['runs'][0][1])} |")
            result[f"{modality}/{method}"] = dict(
                best_lr=m["best"], steps_to_target=reach, final_ce=[final_ce(r[1]) for r in m["runs"]],
                eval_accuracy=[r[0].get("eval_accuracy") for r in m["runs"]],
                kappa_mean=[r[0].get("kappa_mean") for r in m["runs"]])
        lrs = ", ".join(f"{lr:g}" for lr in s.lrs)
        tables.append(
            f"**{modality}** (target smoothed CE {tgt:g}; {len(s.seeds)} seeds at the best LR)\n\n"
            f"| method | best LR | final CE at LR {lrs} (seed {s.seeds[0]}) | steps to CE ≤ {tgt:g} (reached) | "
            f"final CE | eval exact match | mean κ | LLM-side LR multiplier per window (first seed) |\n"
            f"|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))
        with report.figure(f"commit_convergence_{modality}.png", figsize=(11, 4), ncols=2, dpi=100) as (fig, axes):
            ax, bx = axes
            for method, m in per_method.items():
                curves = [smoothed_ce(r[1]) for r in m["runs"]]
                n = min(len(c[1]) for c in curves)
                ax.plot(curves[0][0][:n], np.mean([c[1][:n] for c in curves], 0), lw=1.2, label=method)
                ks = [np.array([(q["step"], q["kappa"]) for q in r[1] if "kappa" in q]) for r in m["runs"]]
                n = min(len(k) for k in ks)
                bx.plot(ks[0][:n, 0], np.mean([k[:n, 1] for k in ks], 0), lw=1, label=method)
            ax.axhline(tgt, color="gray", ls=":", lw=1)
            ax.set(yscale="log", xlabel="step", ylabel="training CE (EMA, mean over seeds)")
            bx.set(xlabel="step", ylabel="κ (mean over seeds)", ylim=(-0.02, 1.02))
            for a in (ax, bx):
                a.grid(alpha=0.3)
                a.legend(fontsize=7)
            fig.suptitle(f"CoMMIT convergence — {modality}{' (LoRA LLM)' if s.lora else ''}")
    return "\n\n".join(tables), result


def overhead(s, report):
    workdir, rows = report.workdir, []
    for modality in s.modalities:
        base = s[f"base_{modality}"]
        settings = [("constant", m) for m in s.measure_every] + [("commit", 10)]
        for method, every in settings:
            summary, recs = _run_one(base, workdir, f"{modality}_overhead_{method}_m{every}", **{
                "task_args.method": method, "task_args.measure_every": every, "train.log_every": 10})
            bs = base.train.batch_size
            step_ms = [1000 * bs / r["examples_per_s"] for r in recs if "examples_per_s" in r][2:]
            k_ms = [1000 * r["kappa_time_s"] for r in recs if "kappa_time_s" in r][1:]  # first = compile
            rows.append(f"| {modality} | {method} | {every or 'never'} | {np.median(step_ms):.1f} | "
                        f"{np.median(k_ms) if k_ms else float('nan'):.1f} | {summary['train_time_s']:.1f} |")
    head = ("| modality | method | κ every | median step time incl. hooks (ms) | median κ measurement (ms) | "
            "train time incl. compiles (s) |\n|---|---|---|---|---|---|")
    return head + "\n" + "\n".join(rows), {}


def check_sweep(config):
    config_lib.check_keys("sweep", config.sweep, SWEEP_KEYS)
    if config.sweep.kind not in KINDS:
        raise ValueError(f"config.sweep.kind: expected one of {sorted(KINDS)}, got {config.sweep.kind!r}")


KINDS = {"imbalance": imbalance, "convergence": convergence, "overhead": overhead}


@experiment("commit_sweep", check=check_sweep)
def run_sweep(config, report) -> dict:
    s = config.sweep
    jax.config.update("jax_compilation_cache_dir", report.path("jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    t0 = time.perf_counter()
    table, result = KINDS[s.kind](s, report)
    wall = time.perf_counter() - t0
    report.section(f"{table}\n\n(sweep wall clock {wall / 60:.1f} min)\n", **{s.kind: result})
    return {"kind": s.kind, "wall_s": wall, "table": report.path("results.md")}
