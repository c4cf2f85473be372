"""Differentially private cross-attention (2407.14717): private keys/values K, V released once, public and
possibly adaptive queries answered from the release.

    Attn(q) = Σ_i exp(s⟨q,k_i⟩) v_i / Σ_i exp(s⟨q,k_i⟩),   s = 1/d by default (PAPERS.md §3)
            ≈ ⟨U(q), Σ_i U(k_i) v_iᵀ⟩ / ⟨U(q), Σ_i U(k_i)⟩      (polynomial features U, r = C(d+g, g))

Both the numerator sums A_v = Σ_i U(k_i) v_iᵀ [r, d_v] and the denominator sums A_1 = Σ_i U(k_i) [r] are
privatised (one matrix A = [A_v | A_1] [r, d_v+1] with weights w_i = [v_i, 1]); a reviewer noted a version that
left the denominator un-noised — here it is not.

Bounds (enforced): ‖k_i‖_∞ ≤ R (``bound_qk``), ‖v_i‖_∞ ≤ R_w (``bound_v``). K and V are CLIPPED to them.
How many entries were clipped is a noise-free statistic of the private data, so it is NOT part of the
released state (it used to be: a leak); ``clipping_report(K, V, bound_qk=, bound_v=)`` computes it for the
data holder's PRIVATE debug report, and init warns (without the counts) when it clipped anything. K and V
must be finite (NaN/inf is a ValueError). Neighbouring datasets replace one row of (K, V); n is public.

Two mechanisms with the same (ε, δ):
* ``method="tree"``: ``DPTreeSoftmax`` (the paper's structure; jaxmm.privacy.dp_tree) — r per-feature
  DPTreeDistance trees over n_bins bins, each (ε/r, δ/r), split over L levels. [reconstruction]
* ``method="release"`` (baseline, ours): release A + TLap(Δ_A, ε, δ) once, i.i.d. per entry.
  Sensitivity: A(D) − A(D') = U(k)⊗w − U(k')⊗w', so
      ‖A(D) − A(D')‖₁ ≤ ‖U(k)‖₁‖w‖₁ + ‖U(k')‖₁‖w'‖₁ ≤ 2·(Σ_α B_α)·(d_v·R_w + 1) =: Δ_A,
  B_α = sqrt(s^{|α|}/α!)·R^{|α|} ≥ |U_α(k)|. i.i.d. TLap(Δ_A, ε, δ) per entry of a vector of L1 sensitivity
  Δ_A is (ε, δ)-DP (argument in jaxmm.privacy.dp_tree's docstring).

Queries: everything after init is post-processing of the release, so any number of adaptive queries keeps
(ε, δ) (the paper's ε₀-net argument is not needed here). Post-processing also lets us (i) floor the noisy
denominator at half its public lower bound n·exp(−s‖q‖₁R) and (ii) clip the output to [−R_w, R_w] (true
attention is a convex combination of clipped values). Queries are public and are not clipped.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxmm.checks import check_positive, check_rank, fail
from jaxmm.ops.polynomial import polynomial_features
from jaxmm.privacy.dp_tree import (DPTreeSoftmax, check_budget, clip_count, feature_bounds, features_jit,
                                    static_field)
from jaxmm.privacy.mechanisms import truncated_laplace

METHODS = ("tree", "release")


def release_sensitivity(d: int, d_v: int, *, degree: int, scale: float, bound_qk: float, bound_v: float) -> float:
    """Δ_A = 2·(Σ_α B_α)·(d_v·R_w + 1): L1 sensitivity of the feature sums A = Σ_i U(k_i)⊗[v_i, 1]."""
    return 2.0 * float(feature_bounds(d, degree, scale, bound_qk).sum()) * (d_v * bound_v + 1.0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DPCrossAttentionState:
    """Everything a query may read, i.e. the release. ``feature_sums`` ([r, d_v+1], method "release") or
    ``tree`` (method "tree") is the noisy part; the static fields are public parameters. Nothing else
    derived from K, V is stored (no clip counts: see ``clipping_report``)."""

    feature_sums: jax.Array | None
    tree: DPTreeSoftmax | None
    n: int = static_field()
    d: int = static_field()
    d_v: int = static_field()
    degree: int = static_field()
    scale: float = static_field()
    bound_qk: float = static_field()
    bound_v: float = static_field()
    epsilon: float = static_field()
    delta: float = static_field()
    method: str = static_field()

    @property
    def memory_floats(self) -> int:
        if self.method == "tree":
            return self.tree.memory_floats
        return int(np.prod(self.feature_sums.shape))

    def sums(self):
        """The privatised [r, d_v+1] feature sums [A_v | A_1] (post-processing of the release)."""
        return self.feature_sums if self.method == "release" else self.tree.feature_sums()


def clip_counts(K, V, *, bound_qk: float, bound_v: float):
    """(entries of K outside ±bound_qk, entries of V outside ±bound_v) as int32 arrays (jit-friendly).

    PRIVATE: noise-free statistics of the private K, V — for the data holder's debug report, never released.
    """
    return clip_count(K, -bound_qk, bound_qk), clip_count(V, -bound_v, bound_v)


def clipping_report(K, V, *, bound_qk: float, bound_v: float) -> dict:
    """PRIVATE debug report (Python ints): how many entries of K and V init clips to the bounds.

    Not differentially private and not part of ``DPCrossAttentionState``: keep it with the private data.
    """
    ck, cv = clip_counts(K, V, bound_qk=bound_qk, bound_v=bound_v)
    return {"n_clipped_k": int(ck), "n_clipped_v": int(cv), "n_entries_k": int(np.size(K)),
            "n_entries_v": int(np.size(V)), "private": True}


def release_feature_sums(key, phi, w, *, sensitivity: float, epsilon: float, delta: float):
    """Σ_i φ_i⊗w_i + i.i.d. TLap(Δ, ε, δ). Exposed so the audit can also run a mis-calibrated Δ."""
    sums = phi.T @ w
    if math.isinf(epsilon):
        return sums
    return sums + truncated_laplace(key, sums.shape, sensitivity=sensitivity, epsilon=epsilon, delta=delta)


def dp_cross_attention_init(key, K, V, *, epsilon: float, delta: float, bound_qk: float, bound_v: float,
                            degree: int, scale: float | None = None, method: str = "tree",
                            n_bins: int | None = None) -> DPCrossAttentionState:
    """Build the private structure once.

    K [n, d], V [n, d_v] (private, clipped to ±bound_qk / ±bound_v); ε = math.inf turns the noise off (not
    private: the polynomial-attention reference). scale defaults to 1/d. n_bins (method "tree") defaults to
    n rounded up to a power of two [reconstruction]: memory r·(2·n_bins − 1)·2(d_v+1) floats.
    """
    check_rank("K", K, 2, "[n, d]")
    check_rank("V", V, 2, "[n, d_v]")
    if V.shape[0] != K.shape[0]:
        fail("V", f"{K.shape[0]} rows (as K)", f"shape {V.shape}")
    check_positive("bound_qk", bound_qk)
    check_positive("bound_v", bound_v)
    check_budget(epsilon, delta)
    if method not in METHODS:
        fail("method", f"one of {METHODS}", method)
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)) or degree < 0:
        fail("degree", "a non-negative integer (the Taylor degree g)", repr(degree))
    if K.shape[0] < 1:
        fail("K", "at least one row (n ≥ 1 private keys)", f"shape {tuple(K.shape)}")
    for name, arr in (("K", K), ("V", V)):  # NaN/inf would pass the clip (NaN) or hide a broken input (inf)
        if not isinstance(arr, jax.core.Tracer) and not bool(np.all(np.isfinite(np.asarray(arr)))):
            bad = int(np.sum(~np.isfinite(np.asarray(arr))))
            fail(name, "finite entries", f"{bad} NaN/inf entries in shape {tuple(arr.shape)}")
    n, d = K.shape
    d_v = V.shape[1]
    scale = 1.0 / d if scale is None else float(scale)
    check_positive("scale", scale)
    K = jnp.asarray(K, jnp.float32)
    V = jnp.asarray(V, jnp.float32)
    Kc = jnp.clip(K, -bound_qk, bound_qk)
    Vc = jnp.clip(V, -bound_v, bound_v)
    if not isinstance(Kc, jax.core.Tracer) and not isinstance(Vc, jax.core.Tracer) \
            and bool(jnp.any(Kc != K) | jnp.any(Vc != V)):  # no counts in the message: they are private
        warnings.warn(f"dp_cross_attention_init: some key entries (bound ±{bound_qk}) or value entries (bound "
                      f"±{bound_v}) were clipped; clipping_report(K, V, ...) counts them (private, not DP)",
                      stacklevel=2)
    w = jnp.concatenate([Vc, jnp.ones((n, 1), jnp.float32)], axis=1)
    common = dict(n=n, d=d, d_v=d_v, degree=int(degree), scale=scale, bound_qk=float(bound_qk),
                  bound_v=float(bound_v), epsilon=float(epsilon), delta=float(delta), method=method)
    if method == "release":
        sens = release_sensitivity(d, d_v, degree=degree, scale=scale, bound_qk=bound_qk, bound_v=bound_v)
        sums = release_feature_sums(key, features_jit(Kc, int(degree), scale), w, sensitivity=sens,
                                    epsilon=epsilon, delta=delta)
        return DPCrossAttentionState(feature_sums=sums, tree=None, **common)
    bins = 1 << max(n - 1, 0).bit_length() if n_bins is None else int(n_bins)
    wb = np.concatenate([np.full(d_v, float(bound_v)), [1.0]])
    tree = DPTreeSoftmax.build(key, Kc, w, bound_k=bound_qk, weight_bound=wb, degree=degree, scale=scale,
                               epsilon=epsilon, delta=delta, n_bins=bins)
    return DPCrossAttentionState(feature_sums=None, tree=tree, **common)


@jax.jit
def dp_cross_attention_parts(state: DPCrossAttentionState, Q):
    """Q [..., d] -> (numerator [..., d_v], denominator [...]) from the private release (no floor, no clip)."""
    if Q.shape[-1] != state.d:
        fail("Q", f"last dimension {state.d} (the keys' d)", f"shape {Q.shape}")
    out = polynomial_features(jnp.asarray(Q, jnp.float32), state.degree, state.scale) @ state.sums()
    return out[..., :state.d_v], out[..., state.d_v]


@functools.partial(jax.jit, static_argnames=("clip_output",))
def dp_cross_attention(state: DPCrossAttentionState, Q, *, clip_output: bool = True):
    """Answer any number of (adaptive) queries Q [..., d] -> [..., d_v]; post-processing only."""
    num, den = dp_cross_attention_parts(state, Q)
    beta = state.scale * state.bound_qk * jnp.sum(jnp.abs(jnp.asarray(Q, jnp.float32)), axis=-1)
    den = jnp.maximum(den, 0.5 * state.n * jnp.exp(-beta))
    out = num / den[..., None]
    return jnp.clip(out, -state.bound_v, state.bound_v) if clip_output else out


def exact_cross_attention(Q, K, V, *, scale: float | None = None):
    """softmax(s·Q Kᵀ) V with s = 1/d by default: Q [..., d], K [n, d], V [n, d_v] -> [..., d_v]."""
    check_rank("K", K, 2, "[n, d]")
    check_rank("V", V, 2, "[n, d_v]")
    if Q.shape[-1] != K.shape[1]:
        fail("Q", f"last dimension {K.shape[1]} (the keys' d)", f"shape {Q.shape}")
    s = 1.0 / K.shape[1] if scale is None else scale
    return jax.nn.softmax(s * (Q @ K.T), axis=-1) @ V


# ----------------------------------------------------------------------------------------------------------
# Empirical privacy audit (distinguishing test on neighbouring datasets).

def released_vector(state: DPCrossAttentionState):
    """The released numbers of a state as one flat vector (what an auditor or attacker sees)."""
    arr = state.feature_sums if state.method == "release" else state.tree.features.trees.tree.nodes
    return jnp.ravel(arr)


def _binom_sf_and_cdf(k: int, n: int, p):
    """P(X ≥ k), P(X ≤ k) for X ~ Bin(n, p), p an array (float64, log-space sums)."""
    p = np.clip(np.asarray(p, np.float64), 1e-300, 1 - 1e-16)[..., None]
    j = np.arange(n + 1)
    logc = math.lgamma(n + 1) - np.array([math.lgamma(i + 1) + math.lgamma(n - i + 1) for i in j])
    logpmf = logc + j * np.log(p) + (n - j) * np.log1p(-p)
    pmf = np.exp(logpmf)
    return pmf[..., k:].sum(-1), pmf[..., :k + 1].sum(-1)


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact two-sided (1 − α) Clopper–Pearson interval for a binomial proportion k/n (bisection)."""
    if not 0 <= k <= n or n < 1:
        fail("k", f"an integer count in [0, n={n}]", k)

    def solve(fn, target, increasing):
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if (fn(mid) < target) == increasing:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)

    lower = 0.0 if k == 0 else solve(lambda p: _binom_sf_and_cdf(k, n, p)[0], alpha / 2, True)
    upper = 1.0 if k == n else solve(lambda p: _binom_sf_and_cdf(k, n, p)[1], alpha / 2, False)
    return float(lower), float(upper)


def empirical_epsilon(scores_d, scores_dprime, *, delta: float, alpha: float = 0.05) -> dict:
    """Lower bound on ε from a threshold test "say D when score ≥ t".

    (ε, δ)-DP implies TPR ≤ e^ε·FPR + δ and TNR ≤ e^ε·FNR + δ, so ε ≥ ln((TPR − δ)/FPR). The threshold is
    chosen on the first half of the samples; the second half gives the point estimate and, with
    Clopper–Pearson bounds (TPR at its lower, FPR at its upper end; each at level α/2), a (1 − α) lower
    confidence bound ``eps_lower`` that a correct mechanism exceeds with probability ≤ α.
    """
    a = np.asarray(scores_d, np.float64)
    b = np.asarray(scores_dprime, np.float64)
    ha, hb = len(a) // 2, len(b) // 2
    a1, a2, b1, b2 = a[:ha], a[ha:], b[:hb], b[hb:]

    def eps_at(t, x, y):
        """(ln((TPR − δ)/FPR) for "D when ≥ t", ln((TNR − δ)/FNR) for "D' when < t")."""
        tpr, fpr = np.mean(x >= t), np.mean(y >= t)
        tnr, fnr = 1 - fpr, 1 - tpr
        e1 = np.log(max(tpr - delta, 1e-300) / fpr) if fpr > 0 else (np.inf if tpr > delta else -np.inf)
        e2 = np.log(max(tnr - delta, 1e-300) / fnr) if fnr > 0 else (np.inf if tnr > delta else -np.inf)
        return e1, e2

    cands = np.quantile(np.concatenate([a1, b1]), np.linspace(0.005, 0.995, 199))
    # a threshold counts only if the side it bets on has ≥ 20 first-half hits (no selection on 1-sample flukes);
    # the other error rate may be 0 (its Clopper–Pearson upper bound is then ≈ 3.7/m)
    best, best_t, best_dir = -np.inf, cands[0], True
    for t in cands:
        e1, e2 = eps_at(t, a1, b1)
        if np.sum(a1 >= t) >= 20 and e1 > best:
            best, best_t, best_dir = e1, t, True
        if np.sum(b1 < t) >= 20 and e2 > best:
            best, best_t, best_dir = e2, t, False
    if best_dir:  # "D when score ≥ t"
        k_pos, k_neg = int(np.sum(a2 >= best_t)), int(np.sum(b2 >= best_t))
    else:  # "D' when score < t"
        k_pos, k_neg = int(np.sum(b2 < best_t)), int(np.sum(a2 < best_t))
        a2, b2 = b2, a2
    tpr_lo, _ = clopper_pearson(k_pos, len(a2), alpha)
    _, fpr_hi = clopper_pearson(k_neg, len(b2), alpha)
    tpr, fpr = k_pos / len(a2), k_neg / len(b2)
    point = math.log(max(tpr - delta, 1e-300) / fpr) if fpr > 0 else math.inf
    lower = math.log(max(tpr_lo - delta, 1e-300) / fpr_hi)
    return {"eps_point": float(point), "eps_lower": float(max(lower, 0.0)), "threshold": float(best_t),
            "tpr": tpr, "fpr": fpr, "n_samples": int(len(a) + len(b))}


def llr_scores(samples, mu_d, mu_dprime):
    """Σ_j |z_j − μ'_j| − |z_j − μ_j| (the Laplace log-likelihood ratio up to the common scale b): large = D."""
    z = np.asarray(samples, np.float64)
    return np.sum(np.abs(z - np.asarray(mu_dprime)) - np.abs(z - np.asarray(mu_d)), axis=-1)
