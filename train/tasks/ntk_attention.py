"""NTK-Attention (2406.14036) Sec. 4.4: how well per-head (Z, k) — d² + d numbers — reproduce attention with an
explicit prefix of m tokens, as m grows. [reconstruction: the paper gives d = 64, L = 128, random frozen
projections, Adam lr 1e-3 and the m range; the input and prefix distributions, the loss, the training length and
the error metric below are ours.]

Per m: X ~ N(0, I) [L, d] inputs, frozen W_Q, W_K, W_V ~ N(0, 1/d), a fixed random prefix P ~ N(0, I) [m, d]
(K_P = P W_K, V_P = P W_V); target = prefix_attention(Q, K, V, K_P, V_P). (Z, k) start at zero (NTK-Attention =
plain attention) and are trained with Adam on the mean squared error over a fixed pool of inputs. With
`param_scale="m"` (default) Adam trains (Z, k)/m: both are sums over the m prefix tokens in the paper's derivation
and must grow like m, which Adam at lr 1e-3 (steps of ~1e-3) cannot reach from zero within a few thousand steps
when m is large (measured with param_scale="1": m = 16384 stays at the untrained error). Reported: the
relative Frobenius error ‖NTK − Prefix‖ / ‖Prefix‖ on held-out inputs, computed with `jaxmm.attention.ntk_attention`
itself, next to the error of dropping the prefix altogether (Z = k = 0).

Each m is one run of the training task `ntk_attention.prefix_fit` in the shared loop (train/loop.py), in
<workdir>/m<m>. Q, K, V are frozen, so the task's examples carry the real-key half of NTK-Attention (the flash
output o and log-sum-exp of the real keys, computed once); a step only recomputes the prefix terms (φ(Q)Z, φ(Q)|k|)
and the exact combine — the functions the op uses (`prefix_terms`, `combine`).

The experiment `ntk_attention.sec44` writes results.md (table), results.json and ntk_attention_sec44.png.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxmm.attention import ntk_attention
from jaxmm.ops.attention import prefix_attention
from jaxmm.ops.flash import flash_attention_xla
from jaxmm.ops.ntk import combine, prefix_terms
from train.experiment import experiment
from train.report import table
from train.task import Task
from train.tasks import register


def _rel_err(a, b):
    return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


def _fit_output(params, q, o, lse, scale):
    """NTK-Attention from the frozen real-key half (o, lse) and the trained prefix statistics scale·(Z, k)."""
    c, w = prefix_terms(q, scale * params["z"], scale * params["kvec"])
    return combine(o, lse, c, w)[0]


class PrefixFit(Task):
    """(Z, k) of one prefix length `model.prefix_length` fitted to explicit prefix attention (module docstring).
    The model is the pure function `_fit_output` (no Linen module: two arrays). Eval: the relative errors of the
    op itself on the held-out inputs."""

    metric = "rel_err_ntk"

    def default_config(self):
        return ml_collections.ConfigDict(dict(
            model=dict(prefix_length=2, head_dim=64, heads=1, init="zeros", param_scale="m"),
            data=dict(length=128, n_train=512, n_test=128, is_causal=False, chunk=16)))

    def __init__(self, config=None):
        super().__init__(config)
        if config is not None:
            m = config.model
            self.scale = float(m.prefix_length if m.param_scale == "m" else 1.0)

    def build_model(self, config):
        m = config.model
        if m.param_scale not in ("m", "1"):
            raise ValueError(f"config.model.param_scale: expected 'm' or '1', got {m.param_scale!r}")
        if m.init not in ("zeros", "normal"):
            raise ValueError(f"config.model.init: expected 'zeros' or 'normal', got {m.init!r}")
        return None

    def datasets(self, config):
        """Train rows (q, o, lse, target) and held-out rows (+ k, v for the op), all from `config.seed`."""
        m, dc = config.model, config.data
        d, H, L, n_all = m.head_dim, m.heads, dc.length, dc.n_train + dc.n_test
        k_w, k_x, k_p = jax.random.split(jax.random.key(config.seed), 3)
        w_q, w_k, w_v = jax.random.normal(k_w, (3, d, H, d)) / math.sqrt(d)       # frozen projections
        proj = lambda t, w: jnp.einsum("bld,dhe->blhe", t, w)                     # noqa: E731
        x = jax.random.normal(k_x, (n_all, L, d))
        q, k, v = proj(x, w_q), proj(x, w_k), proj(x, w_v)                          # [N, L, H, d]
        o, lse = jax.jit(lambda q, k, v: flash_attention_xla(q, k, v, is_causal=dc.is_causal, block_k=L))(q, k, v)
        p = jax.random.normal(jax.random.fold_in(k_p, m.prefix_length), (1, m.prefix_length, d))
        target_fn = jax.jit(lambda q, k, v: prefix_attention(q, k, v, proj(p, w_k), proj(p, w_v),
                                                             is_causal=dc.is_causal))
        target = jnp.concatenate([target_fn(q[i:i + dc.chunk], k[i:i + dc.chunk], v[i:i + dc.chunk])
                                  for i in range(0, n_all, dc.chunk)])
        cols = {n: np.asarray(a) for n, a in dict(q=q, o=o, lse=lse, target=target, k=k, v=v).items()}
        rows = lambda lo, hi, names: [{n: cols[n][i] for n in names} for i in range(lo, hi)]  # noqa: E731
        return (rows(0, dc.n_train, ("q", "o", "lse", "target")),
                rows(dc.n_train, n_all, ("q", "o", "lse", "target", "k", "v")))

    def init_variables(self, model, batch, rng):
        m = self.config.model
        H, d = m.heads, m.head_dim
        if m.init == "zeros":
            return {"params": {"z": jnp.zeros((H, d, d)), "kvec": jnp.zeros((H, d))}}
        kz, kk = jax.random.split(rng)
        return {"params": {"z": 0.02 * jax.random.normal(kz, (H, d, d)), "kvec": 0.02 * jax.random.normal(kk, (H, d))}}

    def loss_fn(self, model, params, batch, rng, extra=None):
        out = _fit_output(params, batch["q"], batch["o"], batch["lse"], self.scale)
        return jnp.mean((out - batch["target"]) ** 2), {}

    def evaluate(self, ctx):
        """Held-out errors through the op (not the training shortcut), and the "drop the prefix" error."""
        ev = {n: jnp.stack([ex[n] for ex in ctx.eval_data]) for n in ctx.eval_data[0]}
        m, dc = self.config.model, self.config.data
        op = jax.jit(lambda z, kv: ntk_attention(ev["q"], ev["k"], ev["v"], z, kv, is_causal=dc.is_causal,
                                                 implementation="xla", block_k=dc.length))
        params = jax.device_get(ctx.state.params)
        ntk_out = op(self.scale * params["z"], self.scale * params["kvec"])
        no_prefix = op(jnp.zeros((m.heads, m.head_dim, m.head_dim)), jnp.zeros((m.heads, m.head_dim)))
        shortcut = _fit_output(params, ev["q"], ev["o"], ev["lse"], self.scale)
        return {"rel_err_ntk": _rel_err(ntk_out, ev["target"]), "rel_err_no_prefix": _rel_err(no_prefix, ev["target"]),
                "op_vs_shortcut": _rel_err(shortcut, ntk_out)}


register("ntk_attention.prefix_fit")(PrefixFit)


def run_config(e, m: int, seed: int) -> ml_collections.ConfigDict:
    """The trainer config of prefix length m (only what differs from the trainer's and the task's defaults)."""
    return ml_collections.ConfigDict(dict(
        task="ntk_attention.prefix_fit", seed=seed,
        model=dict(prefix_length=m, head_dim=e.head_dim, heads=e.heads, init=e.init, param_scale=e.param_scale),
        data=dict(length=e.length, n_train=e.n_train, n_test=e.n_test, is_causal=e.is_causal, chunk=e.chunk),
        train=dict(steps=e.steps, batch_size=e.batch_size, grad_clip=0.0, log_every=e.log_every,
                   eval_batch_size=e.n_test, progress=False, plots=False),
        optim=dict(name="adam", lr=e.learning_rate, schedule="constant"),
        checkpoint=dict(async_save=False)))


def check_config(config):
    e = config.experiment
    for name in ("head_dim", "length", "heads", "n_train", "n_test", "steps", "batch_size", "chunk"):
        if int(e[name]) <= 0:
            raise ValueError(f"config.experiment.{name}: expected a positive integer, got {e[name]}")
    if not e.prefix_lengths or any(int(m) <= 0 for m in e.prefix_lengths):
        raise ValueError(f"config.experiment.prefix_lengths: expected positive integers, got {e.prefix_lengths}")
    if e.batch_size > e.n_train:
        raise ValueError(f"config.experiment.batch_size: expected <= n_train ({e.n_train}), got {e.batch_size}")
    if e.param_scale not in ("m", "1") or e.init not in ("zeros", "normal"):
        raise ValueError(f"config.experiment.param_scale / init: expected 'm' or '1' / 'zeros' or 'normal', got "
                         f"{e.param_scale!r} / {e.init!r}")


@experiment("ntk_attention.sec44", check=check_config)
def run(config, report) -> dict:
    from train.main import run as run_one

    e, rows = config.experiment, []
    for m in e.prefix_lengths:
        out = run_one(run_config(e, int(m), int(config.seed)), report.path(f"m{m}"))
        rows.append({"m": int(m), **{k: out[k] for k in ("rel_err_ntk", "rel_err_no_prefix", "op_vs_shortcut")},
                     "final_train_mse": out["final_loss"], "train_time_s": out["train_time_s"]})
        print(f"[sec44] m={m}: rel. error {out['rel_err_ntk']:.4f} (no prefix {out['rel_err_no_prefix']:.4f})",
              flush=True)
    wall = sum(r["train_time_s"] for r in rows)
    head = (f"NTK-Attention Sec. 4.4 [reconstruction]: d={e.head_dim}, L={e.length}, heads={e.heads}, "
            f"causal={e.is_causal}, Adam lr {e.learning_rate} on (Z, k)/{e.param_scale}, {e.steps} steps x batch "
            f"{e.batch_size} on {e.n_train} inputs, error on {e.n_test} held-out inputs; training {wall:.0f} s")
    cells = [[r["m"], f"{r['rel_err_ntk']:.4f}", f"{r['rel_err_no_prefix']:.4f}", f"{r['final_train_mse']:.2e}"]
             for r in rows]
    with report.figure("ntk_attention_sec44.png", figsize=(5.5, 3.8)) as (fig, ax):
        mm = [r["m"] for r in rows]
        ax.plot(mm, [r["rel_err_ntk"] for r in rows], "o-", label="NTK-Attention (trained Z, k)")
        ax.plot(mm, [r["rel_err_no_prefix"] for r in rows], "s--", label="no prefix (Z = k = 0)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set(xlabel="prefix length m", ylabel="‖NTK − prefix attn‖ / ‖prefix attn‖",
               title=f"Sec. 4.4 reconstruction: d={e.head_dim}, L={e.length}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    report.section(head + "\n\n" + table(["prefix length m", "rel. error NTK-Attention (trained Z, k)",
                                           "rel. error without prefix (Z = k = 0)", "final train MSE"], cells),
                   rows=rows, train_time_s=wall, experiment=e.to_dict())
    return {"train_time_s": wall, "n_prefix_lengths": len(rows), **{f"rel_err_m{r['m']}": r["rel_err_ntk"] for r in rows}}
