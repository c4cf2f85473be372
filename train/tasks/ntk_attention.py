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
relative Frobenius error ‖NTK − Prefix‖ / ‖Prefix‖ on held-out inputs, computed with `jaxmm.ops.ntk_attention`
itself, next to the error of dropping the prefix altogether (Z = k = 0).

Speed: Q, K, V are frozen, so the real-key half of NTK-Attention (the flash output o and log-sum-exp of the real
keys) is computed once per input; a training step only recomputes the prefix terms (φ(Q)Z, φ(Q)|k|) and the
exact combine — the same functions the op uses (`prefix_terms`, `combine`).

Writes into the workdir through `train.report`: results.md (table), results.json, ntk_attention_sec44.png (error vs
m), metrics.jsonl.
"""
from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmm.attention import ntk_attention
from jaxmm.ops.attention import prefix_attention
from jaxmm.ops.flash import flash_attention_xla
from jaxmm.ops.ntk import combine, prefix_terms
from train.experiment import experiment
from train.report import table


def _rel_err(a, b):
    return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


def check_config(config):
    e = config.experiment
    for name in ("head_dim", "length", "heads", "n_train", "n_test", "steps", "batch_size", "chunk"):
        if int(e[name]) <= 0:
            raise ValueError(f"config.experiment.{name}: expected a positive integer, got {e[name]}")
    if not e.prefix_lengths or any(int(m) <= 0 for m in e.prefix_lengths):
        raise ValueError(f"config.experiment.prefix_lengths: expected positive integers, got {e.prefix_lengths}")
    if e.batch_size > e.n_train:
        raise ValueError(f"config.experiment.batch_size: expected <= n_train ({e.n_train}), got {e.batch_size}")
    if e.param_scale not in ("m", "1"):
        raise ValueError(f"config.experiment.param_scale: expected 'm' or '1', got {e.param_scale!r}")
    if e.init not in ("zeros", "normal"):
        raise ValueError(f"config.experiment.init: expected 'zeros' or 'normal', got {e.init!r}")


@experiment("ntk_attention.sec44", check=check_config)
def run(config, report) -> dict:
    from tqdm.auto import tqdm

    e = config.experiment
    d, L, H = int(e.head_dim), int(e.length), int(e.heads)
    causal = bool(e.is_causal)
    t_start = time.time()
    key = jax.random.key(int(config.seed))
    k_w, k_x, k_p, k_init = jax.random.split(key, 4)
    w_q, w_k, w_v = jax.random.normal(k_w, (3, d, H, d)) / math.sqrt(d)       # frozen projections
    n_all = int(e.n_train) + int(e.n_test)
    x = jax.random.normal(k_x, (n_all, L, d))
    proj = lambda t, w: jnp.einsum("bld,dhe->blhe", t, w)
    q, k, v = proj(x, w_q), proj(x, w_k), proj(x, w_v)                          # [N, L, H, d]

    # the frozen real-key half of NTK-Attention, once for all m
    real = jax.jit(lambda q, k, v: flash_attention_xla(q, k, v, is_causal=causal, block_k=L))
    o_real, lse_real = real(q, k, v)
    tr, te = slice(0, int(e.n_train)), slice(int(e.n_train), n_all)

    def ntk_from_parts(params, qb, o, lse, scale):
        c, w = prefix_terms(qb, scale * params["z"], scale * params["kvec"])
        return combine(o, lse, c, w)[0]

    def loss_fn(params, qb, ob, lb, target, scale):
        return jnp.mean((ntk_from_parts(params, qb, ob, lb, scale) - target) ** 2)

    opt = optax.adam(float(e.learning_rate))

    @jax.jit
    def train_steps(params, state, batches, scale):
        def step(carry, b):
            params, state = carry
            loss, g = jax.value_and_grad(loss_fn)(params, *b, scale)
            upd, state = opt.update(g, state, params)
            return (optax.apply_updates(params, upd), state), loss
        (params, state), losses = jax.lax.scan(step, (params, state), batches)
        return params, state, losses

    op = jax.jit(lambda q, k, v, z, kv: ntk_attention(q, k, v, z, kv, is_causal=causal, implementation="xla",
                                                      block_k=L))
    rows, metrics = [], report.metrics
    ms = [int(m) for m in e.prefix_lengths]
    steps, log_every = int(e.steps), max(1, int(e.log_every))
    bar = tqdm(total=len(ms) * steps, desc="ntk_attention.sec44", unit="step")
    for mi, m in enumerate(ms):
        kp_m = jax.random.normal(jax.random.fold_in(k_p, m), (1, m, d))
        kp, vp = proj(kp_m, w_k), proj(kp_m, w_v)                               # [1, m, H, d]
        target_fn = jax.jit(lambda qq, kk, vv: prefix_attention(qq, kk, vv, kp, vp, is_causal=causal))
        chunk = int(e.chunk)
        target = jnp.concatenate([target_fn(q[i:i + chunk], k[i:i + chunk], v[i:i + chunk])
                                  for i in range(0, n_all, chunk)], axis=0)
        if e.init == "zeros":
            params = {"z": jnp.zeros((H, d, d)), "kvec": jnp.zeros((H, d))}
        else:
            kz, kk_ = jax.random.split(jax.random.fold_in(k_init, m))
            params = {"z": 0.02 * jax.random.normal(kz, (H, d, d)), "kvec": 0.02 * jax.random.normal(kk_, (H, d))}
        # Z and k stand for sums over the m prefix tokens (Z = Σ_p φ(k_p)ᵀ v_p, k = Σ_p φ(k_p) in the paper's
        # derivation), so with param_scale="m" Adam trains (Z, k) / m [reconstruction, see the module docstring]
        scale = jnp.float32(m if e.param_scale == "m" else 1.0)
        state = opt.init(params)
        rng = np.random.default_rng(int(config.seed) * 1000 + m)
        done, losses = 0, []
        while done < steps:
            n = min(log_every, steps - done)
            idx = rng.integers(0, int(e.n_train), size=(n, int(e.batch_size)))
            batches = (q[tr][idx], o_real[tr][idx], lse_real[tr][idx], target[tr][idx])
            params, state, ls = train_steps(params, state, batches, scale)
            done += n
            loss = float(ls[-1])
            losses.append(loss)
            metrics.write(done, {"m": m, "train_mse": loss})
            bar.update(n)
            bar.set_postfix(m=m, mse=f"{loss:.2e}")
        # held-out error through the op itself (not the training shortcut), and the "drop the prefix" error
        tgt = target[te]
        z_fit, k_fit = scale * params["z"], scale * params["kvec"]
        ntk_out = op(q[te], k[te], v[te], z_fit, k_fit)
        no_prefix = op(q[te], k[te], v[te], jnp.zeros((H, d, d)), jnp.zeros((H, d)))
        shortcut = ntk_from_parts(params, q[te], o_real[te], lse_real[te], scale)
        row = {"m": m, "rel_err_ntk": _rel_err(ntk_out, tgt), "rel_err_no_prefix": _rel_err(no_prefix, tgt),
               "op_vs_shortcut": _rel_err(shortcut, ntk_out), "final_train_mse": losses[-1]}
        rows.append(row)
        metrics.write(done, {"m": m, "eval": row})
    bar.close()
    wall = time.time() - t_start
    _write_outputs(report, config, rows, wall)
    summary = {"wall_s": wall, "n_prefix_lengths": len(rows)}
    for r in rows:
        summary[f"rel_err_m{r['m']}"] = r["rel_err_ntk"]
    return summary


def _write_outputs(report, config, rows, wall):
    e = config.experiment
    head = (f"NTK-Attention Sec. 4.4 [reconstruction]: d={e.head_dim}, L={e.length}, heads={e.heads}, "
            f"causal={e.is_causal}, Adam lr {e.learning_rate} on (Z, k)/{e.param_scale}, {e.steps} steps x batch "
            f"{e.batch_size} on {e.n_train} inputs, error on {e.n_test} held-out inputs; wall {wall:.0f} s")
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
                   rows=rows, wall_s=wall, experiment=e.to_dict())
