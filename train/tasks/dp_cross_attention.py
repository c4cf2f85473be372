"""DP cross-attention experiments (2407.14717; configs/dp_cross_attention.py): error vs n / ε / degree against
the theorem's rates, query time and memory, an empirical privacy audit, an adaptive attacker, and a small model
answering from a private context.

The `model` part trains through the shared loop (task `dp_cross_attention.private_context`, in <workdir>/model).
Each part writes a Markdown section (results.md, sections in order) and a PNG into the workdir through
`train.report`; every number also goes to results.json. Data: rows of K, Q uniform in [−R, R]^d, V uniform in
[−R_w, R_w]^{d_v}.
"""
from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxmm.ops.polynomial import polynomial_features
from jaxmm.privacy.cross_attention import (dp_cross_attention, dp_cross_attention_init, empirical_epsilon,
                                              exact_cross_attention, llr_scores, release_feature_sums,
                                              release_sensitivity, released_vector)
from jaxmm.timing import time_call
from train.experiment import experiment
from train.metrics import read
from train.report import line_plot, table as _table
from train.task import Task
from train.tasks import register

EXPERIMENTS = ("error_vs_n", "error_vs_eps", "error_vs_degree", "query_time", "memory", "audit", "adaptive",
               "model")


def _data(n, d, d_v, seed, nq=256, R=1.0, Rw=1.0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-R, R, (n, d)).astype(np.float32), rng.uniform(-Rw, Rw, (n, d_v)).astype(np.float32),
            rng.uniform(-R, R, (nq, d)).astype(np.float32))


def _poly_ref(Q, K, V, g, s):
    x = s * np.asarray(Q, np.float64) @ np.asarray(K, np.float64).T
    t = sum(x ** j / math.factorial(j) for j in range(g + 1))
    return (t @ np.asarray(V, np.float64)) / t.sum(-1, keepdims=True)


def _eps_s(beta, g):
    return math.exp(2 * beta) * beta ** (g + 1) / math.factorial(g + 1)


def _slope(xs, ys):
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    ok = np.isfinite(xs) & np.isfinite(ys) & (ys > 0)
    return float(np.polyfit(np.log(xs[ok]), np.log(ys[ok]), 1)[0]) if ok.sum() >= 2 else float("nan")


def _errors(c, n, epsilon, method, degree, seed=0):
    """Mean |out − exact| and |out − polynomial| over queries and c.repeats independent releases."""
    K, V, Q = _data(n, c.d, c.d_v, seed=seed + n)
    s = 1.0 / c.d
    kw = dict(epsilon=epsilon, delta=c.delta, bound_qk=c.bound_qk, bound_v=c.bound_v, degree=degree, method=method)
    f = jax.jit(jax.vmap(lambda k: dp_cross_attention(dp_cross_attention_init(k, K, V, **kw), Q)))
    reps = 1 if math.isinf(epsilon) else c.repeats
    out = np.asarray(f(jax.random.split(jax.random.key(seed), reps)), np.float64)
    exact = np.asarray(exact_cross_attention(jnp.asarray(Q), jnp.asarray(K), jnp.asarray(V)), np.float64)
    return float(np.mean(np.abs(out - exact))), float(np.mean(np.abs(out - _poly_ref(Q, K, V, degree, s))))


# ------------------------------------------------------------------------------------------- experiments
def error_vs_n(c, report):
    rows, series, res = [], {}, {}
    for method in c.methods:
        errs = []
        for n in c.ns:
            e_exact, e_poly = _errors(c, n, c.epsilon, method, c.degree)
            errs.append(e_poly)
            rows.append([method, n, c.epsilon, e_exact, e_poly, e_poly * n])
        series[f"{method}: |DP − poly|"] = (list(c.ns), errs)
        res[method] = {"errors": errs, "slope": _slope(c.ns, errs)}
    ns = np.asarray(c.ns, float)
    first = series[f"{c.methods[0]}: |DP − poly|"][1][0]
    line_plot(report, "dp_xattn_error_vs_n.png", f"error vs n (ε={c.epsilon}, g={c.degree})", "n",
          "mean |error|", series, ref=("∝ 1/n", ns, first * ns[0] / ns))
    slopes = ", ".join(f"{m}: {res[m]['slope']:.2f}" for m in c.methods)
    md = (f"### Error vs n (ε = {c.epsilon}, δ = {c.delta}, d = {c.d}, d_v = {c.d_v}, g = {c.degree}, "
          f"{c.repeats} releases × 256 queries)\n\n"
          + _table(["method", "n", "ε", "mean abs err vs exact", "mean abs err vs polynomial (DP part)",
                    "DP part × n"], rows)
          + f"\n\nLog-log slope of the DP part vs n (theorem: −1, up to log factors): {slopes}.\n"
          + "![](dp_xattn_error_vs_n.png)\n")
    return md, res


def error_vs_eps(c, report):
    rows, series, res = [], {}, {}
    for method in c.methods:
        errs = []
        for e in c.eps_grid:
            e_exact, e_poly = _errors(c, c.n, e, method, c.degree)
            errs.append(e_poly)
            rows.append([method, c.n, e, e_exact, e_poly])
        finite = [i for i, e in enumerate(c.eps_grid) if math.isfinite(e)]
        res[method] = {"errors": errs,
                       "slope": _slope([c.eps_grid[i] for i in finite], [errs[i] for i in finite])}
        series[method] = ([c.eps_grid[i] for i in finite], [errs[i] for i in finite])
    line_plot(report, "dp_xattn_error_vs_eps.png", f"error vs ε (n={c.n}, g={c.degree})", "ε",
          "mean |DP − poly|", series)
    slopes = ", ".join(f"{m}: {res[m]['slope']:.2f}" for m in c.methods)
    md = (f"### Error vs ε (n = {c.n})\n\n"
          + _table(["method", "n", "ε", "mean abs err vs exact", "mean abs err vs polynomial (DP part)"], rows)
          + f"\n\nLog-log slope over finite ε (theorem: −1 while the noise is small against the denominator; "
            f"the output clip to ±R_w flattens it at small ε): {slopes}. At ε = ∞ the error vs exact is the "
            f"polynomial error alone.\n![](dp_xattn_error_vs_eps.png)\n")
    return md, res


def error_vs_degree(c, report):
    rows, res = [], {}
    beta = (1.0 / c.d) * c.d * c.bound_qk ** 2
    for g in c.degrees:
        e_inf, _ = _errors(c, c.n, math.inf, "release", g)
        eps_s = _eps_s(beta, g)
        bound = 2 * eps_s / (1 - eps_s) * c.bound_v if eps_s < 1 else math.inf
        dp = {m: _errors(c, c.n, c.epsilon, m, g)[0] for m in c.methods}
        r = math.comb(c.d + g, g)
        rows.append([g, r, eps_s, bound, e_inf] + [dp[m] for m in c.methods])
        res[g] = {"eps_s": eps_s, "bound": bound, "err_inf": e_inf, **{f"err_{m}": dp[m] for m in c.methods}}
    line_plot(report, "dp_xattn_error_vs_degree.png", f"error vs degree (n={c.n})", "degree g",
          "mean |error| vs exact",
          {"ε=∞ (polynomial error)": (list(c.degrees), [res[g]["err_inf"] for g in c.degrees]),
           "bound 2ε_s R_w/(1−ε_s)": (list(c.degrees), [res[g]["bound"] for g in c.degrees]),
           **{f"ε={c.epsilon} {m}": (list(c.degrees), [res[g][f"err_{m}"] for g in c.degrees])
              for m in c.methods}}, logx=False)
    md = (f"### Error vs degree (n = {c.n}; β = s·d·R² = {beta:.3g}; ε_s = e^(2β)β^(g+1)/(g+1)!)\n\n"
          + _table(["g", "r", "ε_s", "bound 2ε_s·R_w/(1−ε_s)", "err vs exact at ε=∞"]
                   + [f"err vs exact at ε={c.epsilon} ({m})" for m in c.methods], rows)
          + "\n\nMore degree: smaller polynomial error, but larger r and Σ_α B_α, so more DP noise at fixed ε.\n"
            "![](dp_xattn_error_vs_degree.png)\n")
    return md, res


def query_time(c, report):
    rows, series, res = [], {m: ([], []) for m in list(c.methods) + ["exact"]}, {}
    for n in c.time_ns:
        K, V, Q = _data(n, c.d, c.d_v, seed=1, nq=c.n_queries)
        for method in c.methods:
            init = jax.jit(lambda k, KK, VV, m=method: dp_cross_attention_init(
                k, KK, VV, epsilon=c.epsilon, delta=c.delta, bound_qk=c.bound_qk, bound_v=c.bound_v,
                degree=c.degree, method=m))
            t_init = time_call(init, jax.random.key(0), K, V, reps=3).median
            st = init(jax.random.key(0), K, V)
            t_q = time_call(dp_cross_attention, st, Q).median
            rows.append([method, n, t_init * 1e3, t_q * 1e3, st.memory_floats])
            series[method][0].append(n)
            series[method][1].append(t_q * 1e3)
            res[f"{method}_{n}"] = {"init_ms": t_init * 1e3, "query_ms": t_q * 1e3}
        t_ex = time_call(jax.jit(exact_cross_attention), Q, K, V).median
        rows.append(["exact attention", n, None, t_ex * 1e3, n * (c.d + c.d_v)])
        series["exact"][0].append(n)
        series["exact"][1].append(t_ex * 1e3)
        res[f"exact_{n}"] = {"query_ms": t_ex * 1e3}
    line_plot(report, "dp_xattn_query_time.png", f"time for {c.n_queries} queries ({jax.default_backend()})",
          "n", "ms", {k: v for k, v in series.items()})
    md = (f"### Query time vs n ({c.n_queries} queries per call, g = {c.degree}, jit, median of 5, "
          f"backend {jax.default_backend()}, shared 2-core CPU: timings are noisy)\n\n"
          + _table(["method", "n", "init ms", f"query ms ({c.n_queries} q)", "state floats"], rows)
          + "\n\nAfter init the DP query cost does not depend on n (release: one [nq, r]·[r, d_v+1] product; "
            "tree: r·L node reads, L = log₂ n_bins + 1 grows only logarithmically); exact attention grows with n."
            "\n![](dp_xattn_query_time.png)\n")
    return md, res


def memory(c, report):
    rows, res = [], {}
    for d in c.mem_ds:
        for g in c.mem_degrees:
            r = math.comb(d + g, g)
            for n in c.mem_ns:
                K, V, _ = _data(n, d, d, seed=0, nq=1)
                mem = {}
                for m in ("tree", "release"):
                    st = jax.eval_shape(lambda KK, VV, m=m: dp_cross_attention_init(
                        jax.random.key(0), KK, VV, epsilon=1.0, delta=1e-5, bound_qk=1.0, bound_v=1.0, degree=g,
                        method=m), K, V)
                    leaf = st.tree.features.trees.tree.nodes if m == "tree" else st.feature_sums
                    mem[m] = int(np.prod(leaf.shape))
                rows.append([n, d, g, r, mem["tree"], mem["tree"] / (n * (d + 1) * r), mem["release"]])
                res[f"{n}_{d}_{g}"] = mem
    md = ("### Memory vs n·d·r (floats in the released state; d_v = d; tree bins = n rounded up to 2^k)\n\n"
          + _table(["n", "d", "g", "r", "tree floats", "tree / (n·(d_v+1)·r)", "release floats (= r·(d_v+1))"],
                   rows)
          + "\n\nTree: r·(2P − 1)·2(d_v + 1) floats with P = 2^⌈log₂ n⌉ bins, i.e. ≈ 4·n·(d_v + 1)·r for n a "
            "power of two (up to 8× when n is just above one): linear in n·d·r like the paper's Õ(n·d·r²) (one r "
            "fewer here: one tree per feature, the weights as channels). "
            "Release: r·(d_v + 1), independent of n.\n")
    return md, res


def _audit_samples(release_fn, K, V, K2, V2, epsilon, m, seed):
    mu = np.asarray(release_fn(jax.random.key(0), K, V, math.inf))
    mu2 = np.asarray(release_fn(jax.random.key(0), K2, V2, math.inf))
    f = jax.jit(jax.vmap(lambda k, kk, vv: release_fn(k, kk, vv, epsilon), in_axes=(0, None, None)))
    keys = jax.random.split(jax.random.key(seed), 2 * m)
    z1 = np.concatenate([np.asarray(f(kk, K, V)) for kk in np.array_split(keys[:m], max(1, m // 20000))])
    z2 = np.concatenate([np.asarray(f(kk, K2, V2)) for kk in np.array_split(keys[m:], max(1, m // 20000))])
    return llr_scores(z1, mu, mu2), llr_scores(z2, mu, mu2)


def audit(c, report):
    """Neighbours differ in row 0. 'value' pair: (k=R·1, v=R_w) vs (k=R·1, v=−R_w); 'key' pair: (k=R·1, v=0)
    vs (k=−R·1, v=0) — the second moves the denominator, which the 'denominator un-noised' variant leaks."""
    K, V, _ = _data(c.audit_n, 1, 1, seed=3)
    pairs = {}
    K2, V2 = K.copy(), V.copy()
    K[0], V[0], V2[0] = c.bound_qk, c.bound_v, -c.bound_v
    K2[0] = c.bound_qk
    pairs["value"] = (K.copy(), V.copy(), K2.copy(), V2.copy())
    Kk, Vk = K.copy(), V.copy()
    Kk[0], Vk[0] = c.bound_qk, 0.0
    Kk2, Vk2 = Kk.copy(), Vk.copy()
    Kk2[0] = -c.bound_qk
    pairs["key"] = (Kk, Vk, Kk2, Vk2)
    g, delta = c.audit_degree, c.delta
    sens = release_sensitivity(1, 1, degree=g, scale=1.0, bound_qk=c.bound_qk, bound_v=c.bound_v)

    def mech(method):
        return lambda k, KK, VV, e: released_vector(dp_cross_attention_init(
            k, KK, VV, epsilon=e, delta=delta, bound_qk=c.bound_qk, bound_v=c.bound_v, degree=g, method=method))

    def broken(scale_sens=1.0, noise_den=True):
        def fn(k, KK, VV, e):
            w = jnp.concatenate([jnp.asarray(VV), jnp.ones((VV.shape[0], 1))], 1)
            phi = polynomial_features(jnp.asarray(KK), g, 1.0)
            noisy = release_feature_sums(k, phi, w, sensitivity=sens * scale_sens, epsilon=e, delta=delta)
            if not noise_den:
                noisy = noisy.at[:, -1].set((phi.T @ w)[:, -1])
            return jnp.ravel(noisy)
        return fn

    arms = [(f"{m} (correct)", mech(m), p) for m in c.methods for p in ("value", "key")]
    arms += [("release, Δ/8 (mis-calibrated)", broken(1 / 8), "value"),
             ("release, denominator un-noised", broken(1.0, False), "key")]
    rows, res = [], {}
    for eps in c.audit_eps:
        for name, fn, pair in arms:
            s1, s2 = _audit_samples(fn, *pairs[pair], eps, c.audit_samples, seed=11)
            r = empirical_epsilon(s1, s2, delta=delta)
            rows.append([name, pair, eps, r["eps_point"], r["eps_lower"], r["tpr"], r["fpr"],
                         "OK" if r["eps_lower"] <= eps else "VIOLATION"])
            res[f"{name}|{pair}|{eps}"] = r
    md = (f"### Empirical privacy audit (n = {c.audit_n}, d = d_v = 1, g = {g}, δ = {delta}, "
          f"{c.audit_samples} independent inits per dataset)\n\n"
          "Threshold test on the Laplace log-likelihood ratio of the released vector; the threshold is chosen "
          "on one half of the samples and evaluated on the other; eps_lower is the 95% Clopper–Pearson lower "
          "confidence bound on ε (TPR at its lower, FPR at its upper bound). A correct mechanism must have "
          "eps_lower ≤ ε; the last two arms are deliberately broken to show the audit's power.\n\n"
          + _table(["mechanism", "neighbours", "ε", "ε̂ (point)", "ε lower (95% CP)", "TPR", "FPR", "verdict"],
                   rows) + "\n")
    return md, res


def adaptive(c, report):
    """An attacker who knows every private row but row 0 chooses queries from earlier answers to recover
    (k₀, v₀): q = 0 gives v₀ (all weights equal), ±R·e_m pairs give k₀ through log-ratios of the target's
    weight, then q = R·sign(k̂₀) (adaptive) to raise the target's weight; estimates are re-fitted on all
    answers each round. Oracles: exact attention; DP released once (any number of queries); and a naive
    mechanism adding fresh noise per answer (each answer (ε, δ)-DP, so T answers cost Tε)."""
    n, d, d_v, g, s, R = c.attack_n, 2, 2, c.attack_degree, 0.5, c.bound_qk
    table, curves = [], {}
    Ts = list(c.attack_rounds)
    for oracle_name in ["exact"] + [f"{kind} ε={e}" for kind in ("DP once", "fresh noise") for e in c.attack_eps]:
        errs_v, errs_k = np.zeros(len(Ts)), np.zeros(len(Ts))
        for trial in range(c.attack_trials):
            K, V, _ = _data(n, d, d_v, seed=100 + trial)
            Kn, Vn = K[1:].astype(np.float64), V[1:].astype(np.float64)
            kw = dict(delta=c.delta, bound_qk=R, bound_v=c.bound_v, degree=g, scale=s, method="release")
            if oracle_name == "exact":
                ask = lambda q, t: np.asarray(exact_cross_attention(jnp.asarray(q[None], jnp.float32),  # noqa
                                                                    jnp.asarray(K), jnp.asarray(V), scale=s))[0]
            else:
                e = float(oracle_name.split("=")[1])
                st = dp_cross_attention_init(jax.random.key(trial), K, V, epsilon=e, **kw)
                init = jax.jit(lambda k, e=e: dp_cross_attention_init(k, K, V, epsilon=e, **kw))
                if oracle_name.startswith("DP once"):
                    ask = lambda q, t, st=st: np.asarray(dp_cross_attention(st, jnp.asarray(q[None], jnp.float32), clip_output=False))[0]  # noqa
                else:
                    ask = lambda q, t, init=init: np.asarray(dp_cross_attention(  # noqa
                        init(jax.random.fold_in(jax.random.key(trial), t)), jnp.asarray(q[None], jnp.float32),
                        clip_output=False))[0]
            answers = []  # (kind, q, o): kind 0 = zero query, 1 + 2m + (sgn < 0) = axis m, −1 = aimed
            k_hat, v_hat = np.zeros(d), np.zeros(d_v)
            for t in range(max(Ts)):
                phase = t % (d * 2 + 2)
                if phase == 0:
                    kind, q = 0, np.zeros(d)
                elif phase <= 2 * d:
                    m, sgn = (phase - 1) // 2, 1.0 if phase % 2 else -1.0
                    kind, q = phase, sgn * R * np.eye(d)[m]
                else:
                    kind, q = -1, R * np.sign(k_hat)
                answers.append((kind, q, ask(q, t).astype(np.float64)))
                # re-fit on everything seen so far
                v0 = n * np.mean([o for (kd, _, o) in answers if kd == 0], 0) - Vn.sum(0)
                logs = np.zeros(d)
                for m in range(d):
                    lp = {1: [], -1: []}
                    for kd, qq, o in answers:
                        if kd in (1 + 2 * m, 2 + 2 * m):
                            w = np.exp(s * Kn @ qq)
                            diff = o - v0
                            e_t = float(np.dot(w @ Vn - o * w.sum(), diff) / max(np.dot(diff, diff), 1e-12))
                            lp[1 if kd == 1 + 2 * m else -1].append(math.log(max(e_t, 1e-6)))
                    if lp[1] and lp[-1]:
                        logs[m] = (np.mean(lp[1]) - np.mean(lp[-1])) / (2 * s * R)
                k_hat = np.clip(logs, -R, R)
                num, den = np.zeros(d_v), 0.0
                for kd, qq, o in answers:
                    if kd > 0:
                        continue  # axis queries: used for k only
                    w = np.exp(s * Kn @ qq)
                    e_t = math.exp(s * float(qq @ k_hat))
                    num += e_t * (o * (w.sum() + e_t) - w @ Vn)
                    den += e_t * e_t
                v_hat = np.clip(num / den, -c.bound_v, c.bound_v)
                if t + 1 in Ts:
                    i = Ts.index(t + 1)
                    errs_v[i] += np.max(np.abs(v_hat - V[0])) / c.attack_trials
                    errs_k[i] += np.max(np.abs(k_hat - K[0])) / c.attack_trials
        curves[oracle_name] = (Ts, list(errs_v))
        for T, ev, ek in zip(Ts, errs_v, errs_k):
            table.append([oracle_name, T, ev, ek])
    guess = float(np.mean([np.max(np.abs(np.random.default_rng(100 + t).uniform(-1, 1, (n, d_v))[0]))
                           for t in range(c.attack_trials)]))
    line_plot(report, "dp_xattn_adaptive.png", f"adaptive attacker, n={n}", "queries", "‖v̂₀ − v₀‖∞",
          curves, ref=("guess 0", Ts, [guess] * len(Ts)))
    md = (f"### Adaptive queries: recovering a private row (n = {n}, d = d_v = 2, g = {g}, release mechanism, "
          f"{c.attack_trials} datasets; error of guessing v̂₀ = 0: {guess:.3f})\n\n" + adaptive.__doc__.split(
              "\n\n")[0].replace("\n   ", "") + "\n\n"
          + _table(["oracle", "queries", "‖v̂₀ − v₀‖∞", "‖k̂₀ − k₀‖∞"], table)
          + "\n\nReleased once, the DP answers are fixed: more (adaptive) queries do not reduce the attacker's "
            "error; with fresh noise per answer the error shrinks with the number of answers (and the privacy "
            "cost grows with it: T answers at ε each are only Tε-DP)."
            "\n![](dp_xattn_adaptive.png)\n")
    return md, {k: v[1] for k, v in curves.items()}


def _contexts(rng, b, n, lq):
    """b private contexts of n labelled points and lq queries each: (queries [b, lq, 2], context [b, n, 4],
    query labels [b, lq]); a context's hidden sign σ decides y = [σ·x₁ > 0]."""
    sig = rng.choice([-1.0, 1.0], (b, 1))
    x = rng.uniform(-1, 1, (b, n, 2))
    y = (sig * x[..., 0] > 0).astype(np.int32)
    qx = rng.uniform(-1, 1, (b, lq, 2))
    qy = (sig * qx[..., 0] > 0).astype(np.int32)
    return qx.astype(np.float32), np.concatenate([x, np.eye(2)[y]], -1).astype(np.float32), qy


class PrivateContext(Task):
    """The private-context model (part `model`) in the shared loop: a one-layer `DPCrossAttention` trained with
    the noise off (ε = ∞) on public synthetic contexts (training example i drawn from seed [data.seed, i]); at
    the end (`on_end`) the accuracy with private contexts at each ε of `task_args.eval_eps`."""

    metric = "final_loss"

    def default_config(self):
        return ml_collections.ConfigDict(dict(
            model=dict(head_dim=4, degree=2, scale=1.0, delta=1e-5),
            data=dict(context=64, queries=8, train_contexts=12800, seed=0),
            task_args=dict(eval_ns=(64,), eval_eps=(1.0,), eval_contexts=4, eval_queries=16)))

    def build_model(self, config):
        from jaxmm.privacy.layers import DPCrossAttention

        m = config.model
        return DPCrossAttention(num_heads=1, head_dim=m.head_dim, out_features=2, epsilon=math.inf, delta=m.delta,
                                bound_qk=1.0, bound_v=1.0, degree=m.degree, method="release", scale=m.scale)

    def datasets(self, config):
        import grain

        d = config.data

        def example(i):
            qx, ctx, qy = _contexts(np.random.default_rng([d.seed, int(i)]), 1, d.context, d.queries)
            return {"x": qx[0], "context": ctx[0], "labels": qy[0]}

        return grain.MapDataset.range(d.train_contexts).map(example), None

    def model_inputs(self, batch):
        return {"x": batch["x"], "context": batch["context"]}

    def loss_fn(self, model, params, batch, rng, extra=None):
        import optax

        logits = model.apply({"params": params}, batch["x"], batch["context"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean(), {}

    def on_end(self, ctx):
        a, out = ctx.config.task_args, {}
        for n_eval in a.eval_ns:
            for eps in a.eval_eps:
                qx, cx, qy = _contexts(np.random.default_rng(1), a.eval_contexts, n_eval, a.eval_queries)
                logits = jax.jit(lambda p, x, c, m=ctx.model.clone(epsilon=eps): m.apply(
                    {"params": p}, x, c, rngs={"dp": jax.random.key(5)}))(ctx.state.params, qx, cx)
                out[f"accuracy_n{n_eval}_eps{eps}"] = float(np.mean(np.asarray(jnp.argmax(logits, -1)) == qy))
        return out


register("dp_cross_attention.private_context")(PrivateContext)


def model(c, report):
    """A one-layer model answers "which side of the hidden boundary is q?" by reading a private context of
    labelled points through DPCrossAttention. Each context draws a hidden sign σ; token i = [x_i, onehot(y_i)],
    y_i = [σ·x_i1 > 0]. Without the context the answer is a coin flip (σ is per context). Trained with the
    noise off (ε = ∞: polynomial attention) on public synthetic contexts, evaluated with private contexts
    at each ε."""
    from train.main import run

    cfg = ml_collections.ConfigDict(dict(
        task="dp_cross_attention.private_context", seed=0,
        model=dict(head_dim=c.model_head_dim, degree=c.model_degree, scale=c.model_scale, delta=c.delta),
        data=dict(context=c.model_train_n, train_contexts=32 * c.model_steps),
        task_args=dict(eval_ns=c.model_eval_ns, eval_eps=c.model_eps, eval_contexts=c.model_eval_contexts),
        train=dict(steps=c.model_steps, batch_size=32, grad_clip=0.0, log_every=max(1, c.model_steps // 20),
                   progress=False, plots=False),
        optim=dict(name="adam", lr=c.model_lr, schedule="constant"), checkpoint=dict(async_save=False)))
    out = run(cfg, report.path("model"))
    losses = [r["loss"] for r in read(report.path("model/metrics.jsonl")) if "loss" in r]
    final = float(np.mean(losses[-5:]))
    rows, res, series = [], {}, {}
    for n_eval in c.model_eval_ns:
        accs = [out[f"accuracy_n{n_eval}_eps{eps}"] for eps in c.model_eps]
        rows += [[n_eval, eps, acc] for eps, acc in zip(c.model_eps, accs)]
        res.update({f"{n_eval}_{eps}": acc for eps, acc in zip(c.model_eps, accs)})
        series[f"n = {n_eval}"] = ([e if math.isfinite(e) else 1e4 for e in c.model_eps], accs)
    line_plot(report, "dp_xattn_model.png", "private-context model: accuracy vs ε (∞ drawn at 1e4)", "ε",
              "accuracy", series, logy=False)
    md = (f"### A small model answering from a private context ({c.model_steps} Adam steps of 32 contexts at "
          f"ε = ∞ on contexts of {c.model_train_n} tokens, in the shared loop; final train loss {final:.3f} (mean "
          f"of the last 5 logged); evaluated on {c.model_eval_contexts} private contexts × 16 queries; chance = 0.5)"
          "\n\n" + model.__doc__.replace("\n   ", "").split("\n\n")[0] + "\n\n"
          + _table(["context tokens n", "ε", "accuracy"], rows)
          + "\n\nThe noise on the released sums is fixed by ε while the signal grows with n: larger contexts "
            "stay accurate at smaller ε.\n![](dp_xattn_model.png)\n")
    return md, {"accuracy": res, "final_loss": final}


FNS = dict(error_vs_n=error_vs_n, error_vs_eps=error_vs_eps, error_vs_degree=error_vs_degree,
           query_time=query_time, memory=memory, audit=audit, adaptive=adaptive, model=model)


def check_config(c):
    for name in c.experiments:
        if name not in EXPERIMENTS:
            raise ValueError(f"config.experiments: expected names from {EXPERIMENTS}, got {name!r}")
    bad = [m for m in c.methods if m not in ("tree", "release")]
    if bad:
        raise ValueError(f"config.methods: expected 'tree' and/or 'release', got {bad}")


@experiment("dp_cross_attention.experiments", check=check_config)
def run(c, report) -> dict:
    results, times = {}, {}
    for name in c.experiments:
        t0 = time.time()
        print(f"[dp_cross_attention] {name} ...", flush=True)
        md, res = FNS[name](c, report)
        times[name] = time.time() - t0
        results[name] = res
        report.section(md + f"\n_({name}: {times[name]:.0f} s)_\n", **{name: res})
    summary = {"experiments": ",".join(c.experiments), "seconds": round(sum(times.values()), 1)}
    if "error_vs_n" in results:
        summary.update({f"slope_n_{m}": results["error_vs_n"][m]["slope"] for m in c.methods})
    if "error_vs_eps" in results:
        summary.update({f"slope_eps_{m}": results["error_vs_eps"][m]["slope"] for m in c.methods})
    if "audit" in results:
        summary["audit_violations_correct"] = sum(
            1 for k, r in results["audit"].items() if "correct" in k and r["eps_lower"] > float(k.split("|")[-1]))
    return summary
