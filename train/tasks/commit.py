"""CoMMIT (arXiv 2407.20454) in the shared trainer: the MLLM instruction-tuning task (`mllm.qa`, reused by
subclassing) plus κ measurement, the dynamic learning-rate scheduler and the auxiliary loss as hooks.

Registered names:
  commit.train   `CommitTask` in the shared loop (also registered as `commit.task`); its end-of-run hook adds
                 `kappa_mean` / `kappa_last` to the summary and writes `kappa.png` (κ, κ̄, D_S, D_T over steps).
The experiments (imbalance / convergence / overhead: several runs of `commit.train`, a table and plots) are
the experiment `commit_sweep` (train/tasks/commit_sweep.py).

Methods (`config.task_args.method`):
  constant     every group at its configured (constant) LR
  feature_cd   cosine decay of the encoder side's LR only        (PAPERS.md: "most likely"; [reconstruction])
  language_cd  cosine decay of the LLM side's LR only            ([reconstruction])
  commit       κ scheduler (η_S ∝ 2(1−κ̄), η_T ∝ 2κ̄, clipped) + auxiliary loss
  commit_clr   auxiliary loss with constant LRs                   ([our reading] of CoMMIT-CLR)
  commit_sched scheduler without the auxiliary loss (ablation; not a paper method)

Sides: the encoder side S = the top-level subtrees in `task_args.encoder_side` (default encoder + projector,
LoRA leaves under them included); the LLM side T = everything else (`llm`, its LoRA). The trainer's groups
(`encoder`, `projector`, `llm`, `lora`) are mapped to a side by their leaves; a group with leaves on both
sides (LoRA in the encoder AND the LLM) cannot be scheduled per side and fails.

Hooks, after step s (all state in `TrainState.extra`, so a killed-and-resumed run repeats exactly):
  cd hook        every `cd_every` steps (cd methods): that side's lr_scale = cosine factor of s/steps, floored
                 at `cd_min_ratio` (applies from step s+1).
  measure hook   every `measure_every` steps: the optimizer's proposed update Δ for the fixed probe batch (the
                 first `probe_size` training examples) at the current params and optimizer state, with every
                 group's lr_scale set to 1 for the measurement (`kappa_lr="base"`: the step at the base rates,
                 so κ does not depend on the multipliers the scheduler or a cd hook set; `"current"` = the old
                 behaviour, kept only to reproduce the flip), split into Δ_S / Δ_T, and
                 `jaxmm.tuning.commit.balance_coefficient` -> κ, D_S, D_T (logged as `kappa`, `d_s`, `d_t`
                 beside the step's `lr/<group>`, `grad_norm/<group>`, `ce_loss`); κ enters the window buffer;
                 Δ is kept in `extra["lead_update"]` as the aux loss's target step.
  schedule hook  every `lr_every` (= L_lr) steps: κ̄ = window mean (0.5 if empty), window reset; `commit` /
                 `commit_sched` set lr_scale_S = clip(2(1−κ̄)), lr_scale_T = clip(2κ̄) (`lr_clip`).
                 Logged: `kappa_bar`, `lr_scale/<side>`.
Aux loss (commit, commit_clr): `jaxmm.tuning.commit.aux_loss` on the training batch: weight `aux_weight` × the
lagging side's share from κ̄ × `aux_divergence` (kl | js) between the output distribution after the LEADING
side's part of the last measured step Δ (stop-gradient target) and the current one, routed only through the
lagging side — the lagging side learns to make the output change the leading side is about to make. It reads
the batch's inputs and the answer-position mask, never the targets (the answer tokens are teacher-forced
context, as in the CE loss).

Every formula here is our [reconstruction] (PAPERS.md §1); each is a `task_args` switch: `kappa_formula`
(share | ratio), `kappa_lr` (base | current), `lr_clip`, `lr_rule` (symmetric | boost_lagging), `aux_weight`,
`aux_divergence`, `measure_every`, `lr_every`.
"""
from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from etils import epath

from jaxmm.tuning import commit as C
from train.metrics import save_png
from train.task import Hook
from train.tasks import register
from train.tasks.mllm import MLLMQATask

METHODS = ("constant", "feature_cd", "language_cd", "commit", "commit_clr", "commit_sched")
SCHEDULED = ("commit", "commit_sched")
WITH_AUX = ("commit", "commit_clr")
SIDES = ("encoder_side", "llm_side")


def _fail(name, expected, got):
    raise ValueError(f"config.task_args.{name}: expected {expected}, got {got!r}")


def check_task_args(a) -> None:
    if a.method not in METHODS:
        _fail("method", f"one of {METHODS}", a.method)
    if a.kappa_formula not in C.FORMULAS:
        _fail("kappa_formula", f"one of {C.FORMULAS}", a.kappa_formula)
    if a.aux_divergence not in C.DIVERGENCES:
        _fail("aux_divergence", f"one of {C.DIVERGENCES}", a.aux_divergence)
    if a.kappa_lr not in ("base", "current"):
        _fail("kappa_lr", "'base' or 'current'", a.kappa_lr)
    lo, hi = tuple(a.lr_clip)
    if not 0 <= lo <= hi:
        _fail("lr_clip", "(lo, hi) with 0 <= lo <= hi", tuple(a.lr_clip))
    if a.lr_rule not in C.RULES:
        _fail("lr_rule", f"one of {C.RULES}", a.lr_rule)
    if a.measure_every < 0 or a.lr_every < 1 or a.cd_every < 1:
        _fail("measure_every/lr_every/cd_every", "measure_every >= 0, lr_every >= 1, cd_every >= 1",
              (a.measure_every, a.lr_every, a.cd_every))
    if a.method in SCHEDULED + WITH_AUX and a.measure_every == 0:
        _fail("measure_every", f"> 0 for method {a.method!r} (κ drives it)", a.measure_every)
    if a.probe_size < 1:
        _fail("probe_size", "a positive number of examples", a.probe_size)


def cosine_factor(step: int, total: int, min_ratio: float) -> float:
    """The LR multiplier of cosine decay after `step` of `total` steps: 1 at 0, `min_ratio` at the end."""
    frac = min(max(step / max(total, 1), 0.0), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))


def group_sides(labels, side_mask) -> dict:
    """{group: "encoder_side" | "llm_side" | "mixed"} from the trainer's group labels and the S/T mask."""
    out = {}
    for g, s in zip(jax.tree.leaves(labels), jax.tree.leaves(side_mask)):
        side = "encoder_side" if s else "llm_side"
        out[g] = side if out.get(g, side) == side else "mixed"
    return out


class CommitTask(MLLMQATask):
    def __init__(self, config=None):
        super().__init__(config)
        if config is not None:  # this run's switches (read-only)
            check_task_args(config.task_args)
            self.args = config.task_args
            self.encoder_side = tuple(config.task_args.encoder_side)
            self.aux = config.task_args.method in WITH_AUX and config.task_args.aux_weight > 0

    def default_config(self):
        c = super().default_config()
        c.task_args.update(dict(
            method="commit", encoder_side=("encoder", "projector"),
            measure_every=10, lr_every=50, probe_size=16, kappa_formula="share", lr_clip=(0.1, 2.0),
            lr_rule="symmetric",
            aux_weight=0.1, aux_divergence="kl", kappa_lr="base",
            cd_every=1, cd_min_ratio=0.0))
        return c

    # ------------------------------------------------------------------ model / side split
    def build_model(self, config):
        check_task_args(config.task_args)
        return super().build_model(config)

    def side_mask(self, params):
        return C.path_mask(params, lambda path: path[0] in self.encoder_side)

    def answer_logits(self, model, params, batch):
        """logits_fn for jaxmm.tuning.commit: next-token logits [B, L−1, V] and the answer-position mask."""
        logits = model.apply({"params": params}, batch["input_ids"], self.media(model, batch),
                             batch["attention_mask"])
        return logits[:, :-1], batch["loss_mask"][:, 1:]

    # ------------------------------------------------------------------ state carried in TrainState.extra
    def init_extra(self, config, params):
        a = config.task_args
        window = max(1, -(-a.lr_every // max(a.measure_every, 1)))
        extra = {"kappa_window": jnp.zeros((window,), jnp.float32), "window_count": jnp.zeros((), jnp.int32),
                 "kappa_bar": jnp.full((), 0.5, jnp.float32)}
        if a.method in WITH_AUX and a.aux_weight > 0:
            extra["lead_update"] = jax.tree.map(jnp.zeros_like, params)  # Δ of the last measurement
        return extra

    # ------------------------------------------------------------------ loss: CE (+ aux)
    def loss_fn(self, model, params, batch, rng, extra=None):
        ce, metrics = super().loss_fn(model, params, batch, rng)
        metrics = {**metrics, "ce_loss": ce}
        if not self.aux or "lead_update" not in (extra or {}):
            return ce, metrics
        aux = C.aux_loss(lambda p, b: self.answer_logits(model, p, b), params, extra["lead_update"], batch,
                         self.side_mask(params), extra["kappa_bar"], weight=self.args.aux_weight,
                         divergence=self.args.aux_divergence)
        return ce + aux, {**metrics, "aux_loss": aux}

    # ------------------------------------------------------------------ hooks
    def hooks(self, config):
        a = config.task_args
        check_task_args(a)
        hooks, copy = [], replicator()
        if a.method in ("feature_cd", "language_cd"):
            hooks.append(Hook(a.cd_every, self._cd_hook(config), "cosine_decay"))
        if a.measure_every:
            hooks.append(Hook(a.measure_every, self._measure_hook(config, copy), "kappa"))
            hooks.append(Hook(a.lr_every, self._schedule_hook(config, copy), "schedule"))
        return hooks

    def on_end(self, ctx):
        """κ statistics into the summary and kappa.png (κ, κ̄, D_S, D_T over steps) into the workdir."""
        if jax.process_index() != 0:
            return {}
        if ctx.config.train.plots and any("kappa" in r for r in ctx.records):
            plot_kappa(ctx.records, str(epath.Path(ctx.workdir) / "kappa.png"),
                       f"κ — method {ctx.config.task_args.method}")
        return kappa_summary(ctx.records)

    @staticmethod
    def _sides(ctx):
        params = ctx.state.params
        sides = group_sides(ctx.labels, C.path_mask(params, lambda p: p[0] in ctx.task.encoder_side))
        trainable = set(ctx.lr_scales())
        return {g: s for g, s in sides.items() if g in trainable}

    @staticmethod
    def _scale_sides(ctx, scales: dict) -> None:
        """Set lr_scale of every trainable group by its side ({"encoder_side": x, "llm_side": y})."""
        sides = CommitTask._sides(ctx)
        mixed = [g for g, s in sides.items() if s == "mixed"]
        if mixed:
            raise ValueError(f"config.task_args.encoder_side: groups {mixed} hold parameters of both sides and "
                             f"cannot get per-side learning rates (LoRA in both encoder and LLM?)")
        ctx.set_lr_scales({g: scales[s] for g, s in sides.items() if s in scales})

    def _cd_hook(self, config):
        a, steps = config.task_args, config.train.steps
        side = "encoder_side" if a.method == "feature_cd" else "llm_side"

        def fn(ctx):
            f = cosine_factor(ctx.step, steps, a.cd_min_ratio)
            self._scale_sides(ctx, {side: f})
            return {}

        return fn

    def _probe(self, config, mesh):
        from train import sharding as shard_lib

        train_ds, _ = self.datasets(config)
        n = config.task_args.probe_size
        if n > len(train_ds):
            _fail("probe_size", f"<= the {len(train_ds)} training examples", n)
        rows = shard_lib.local_rows(n)
        items = [train_ds[i] for i in range(rows.start, rows.stop)]
        return shard_lib.global_batch({k: np.stack([it[k] for it in items]) for k in items[0]}, mesh)

    @staticmethod
    def measured_updates(ctx, batch, kappa_lr: str = "base"):
        """The optimizer's proposed update for `batch` at the current params and optimizer state — at the base
        learning rates (every group's lr_scale 1 for this call, then restored) unless kappa_lr="current"."""
        if kappa_lr == "current":
            return ctx.proposed_updates(ctx.state.params, batch)
        scales = ctx.lr_scales()
        ctx.set_lr_scales({g: 1.0 for g in scales})
        try:
            return ctx.proposed_updates(ctx.state.params, batch)
        finally:
            ctx.set_lr_scales(scales)

    def _measure_hook(self, config, replicate):
        from train import sharding as shard_lib

        a = config.task_args
        rules = shard_lib.rules_from_config(config.mesh.rules)
        cache = {}

        def fn(ctx):
            import flax.linen as nn

            if "probe" not in cache:
                cache["probe"] = self._probe(config, ctx.mesh)
                mask = self.side_mask(ctx.state.params)

                def measure(params, updates, batch):
                    with nn.logical_axis_rules(rules):
                        return C.balance_coefficient(lambda p, b: self.answer_logits(ctx.model, p, b), params,
                                                     updates, batch, mask, formula=a.kappa_formula)

                cache["measure"] = jax.jit(measure)
            t0 = time.perf_counter()
            updates = self.measured_updates(ctx, cache["probe"], a.kappa_lr)
            out = {k: float(v) for k, v in cache["measure"](ctx.state.params, updates, cache["probe"]).items()}
            elapsed = time.perf_counter() - t0
            extra = dict(ctx.state.extra)
            window, count = np.asarray(extra["kappa_window"]).copy(), int(extra["window_count"])
            if count < window.shape[0]:
                window[count] = out["kappa"]
                count += 1
            copy = replicate(ctx)
            extra["kappa_window"], extra["window_count"] = copy(jnp.asarray(window)), copy(jnp.asarray(count, jnp.int32))
            if "lead_update" in extra:  # the Δ snapshot: sharded like the params (never replicated whole)
                extra["lead_update"] = copy(updates, like=ctx.state.params)
            ctx.state = ctx.state.replace(extra=extra)
            return {**out, "kappa_time_s": elapsed}

        return fn

    def _schedule_hook(self, config, replicate):
        a = config.task_args
        lo, hi = tuple(a.lr_clip)

        def fn(ctx):
            extra = dict(ctx.state.extra)
            count = int(extra["window_count"])
            kbar = float(np.mean(np.asarray(extra["kappa_window"])[:count])) if count else 0.5
            copy = replicate(ctx)
            extra["kappa_bar"] = copy(jnp.asarray(kbar, jnp.float32))
            extra["window_count"] = copy(jnp.zeros((), jnp.int32))
            extra["kappa_window"] = copy(jnp.zeros_like(extra["kappa_window"]))
            ctx.state = ctx.state.replace(extra=extra)
            record = {"kappa_bar": kbar}
            if a.method in SCHEDULED:
                s, t = C.scheduled_learning_rates(kbar, 1.0, 1.0, (lo, hi), rule=a.lr_rule)
                self._scale_sides(ctx, {"encoder_side": float(s), "llm_side": float(t)})
                record.update({"lr_scale/encoder_side": float(s), "lr_scale/llm_side": float(t)})
            return record

        return fn


register("commit.train")(CommitTask)
register("commit.task")(CommitTask)


def replicator():
    """`fn(ctx) -> copy`, where `copy(tree, like=None)` is a jitted copy into fresh buffers (never an alias of the
    donated params): replicated over ctx.mesh, or with the shardings of the arrays of `like` (the Δ snapshot is
    copied like the params, as the loop shards it). Compiled once per mesh and sharding; one per run (built in
    `hooks`)."""
    from train import sharding as shard_lib

    cache = {}

    def get(ctx):
        if cache.get("mesh") is not ctx.mesh:
            cache.clear()
            cache["mesh"] = ctx.mesh

        def copy(tree, like=None):
            if like is None:
                out_sh, key = shard_lib.replicated(ctx.mesh), "replicated"
            else:
                out_sh = jax.tree.map(lambda x: x.sharding, like)
                key = (jax.tree.structure(out_sh), tuple(jax.tree.leaves(out_sh)))
            if key not in cache:
                cache[key] = jax.jit(lambda t: jax.tree.map(lambda x: jnp.array(x, copy=True), t),
                                     out_shardings=out_sh)
            return cache[key](tree)

        return copy

    return get


# ---------------------------------------------------------------------------------------------- entry points
def kappa_summary(records) -> dict:
    ks = [r["kappa"] for r in records if "kappa" in r]
    if not ks:
        return {"kappa_mean": float("nan")}
    return {"kappa_mean": float(np.mean(ks)), "kappa_std": float(np.std(ks)), "kappa_last": float(ks[-1]),
            "kappa_measurements": len(ks)}


def plot_kappa(records, path: str, title: str = "") -> str:
    from train.metrics import pyplot

    plt = pyplot()

    fig, (ax, bx) = plt.subplots(2, 1, figsize=(6.5, 5.5), sharex=True)
    pts = [(r["step"], r["kappa"]) for r in records if "kappa" in r]
    if pts:
        ax.plot(*zip(*pts), ".-", ms=3, lw=0.8, label="κ (per measurement)")
    bar = [(r["step"], r["kappa_bar"]) for r in records if "kappa_bar" in r]
    if bar:
        ax.step(*zip(*bar), where="post", lw=1.5, label="κ̄ (window mean)")
    ax.axhline(0.5, color="gray", ls=":", lw=1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("κ = D_S / (D_S + D_T)")
    ax.set_title(title or "CoMMIT learning-balance coefficient")
    ax.legend(fontsize=7)
    for key in ("d_s", "d_t"):
        pts = [(r["step"], r[key]) for r in records if key in r and r[key] > 0]
        if pts:
            bx.plot(*zip(*pts), lw=1, label=key.upper())
    bx.set_yscale("log")
    bx.set_xlabel("step")
    bx.set_ylabel("KL of one proposed step")
    bx.legend(fontsize=7)
    for a in (ax, bx):
        a.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)  # local or gs:// workdir
    plt.close(fig)
    return path
