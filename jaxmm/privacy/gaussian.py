"""The Gaussian sampling mechanism for PSD matrices and its sample budget (2407.13621, App. D).

Release H̃ = (1/k) Σ_{t=1..k} g_t g_tᵀ with g_t ~ N(0, H) i.i.d. (E[H̃] = H, a PSD matrix of rank ≤ k). The
privacy knob is the number of samples k: fewer samples, more privacy. For neighbouring inputs H, H' whose
relative difference Δ = ‖H^{-1/2} H' H^{-1/2} − I‖_F is bounded, the paper's lemma makes the release
(ε, δ)-DP with

    k = ⌊ ε² / (8 ln(1/δ) Δ²) ⌋,

and for the NTK it bounds Δ by n·β/η (η: a lower bound on λ_min(H); β: a per-entry sensitivity of H), giving
the published k = ⌊ε² η² / (8 ln(1/δ) n² β²)⌋. [our reading] The split into `samples_for_sensitivity` and
Δ = nβ/η is our reading of the formula's structure; the formula itself is the published one.

Two samplers with the same distribution: `gaussian_samples(key, H, k)` factors H (eigh, negative round-off
eigenvalues clipped to 0, so singular PSD H works) and `gaussian_samples_from_factor(key, G, k)` takes any G
with H = G Gᵀ and never factors anything (g = G z, z ~ N(0, I_p)).
"""
from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxmm.checks import check_positive, check_rank, fail

PUBLISHED_N = 1000  # the n hard-coded in the published code's k, whatever the real training-set size


def _check_samples(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        fail("k", "a positive integer number of samples", k)
    return int(k)


def _check_square(name: str, H) -> None:
    check_rank(name, H, 2, "[n, n]")
    if H.shape[0] != H.shape[1]:
        fail(name, "a square matrix [n, n]", f"shape {tuple(H.shape)}")


def psd_factor(H):
    """L with L Lᵀ = H for a symmetric PSD H [n, n] (eigh; eigenvalues below 0 from round-off clipped to 0)."""
    _check_square("H", H)
    H = jnp.asarray(H)
    evals, evecs = jnp.linalg.eigh(0.5 * (H + H.T))
    return evecs * jnp.sqrt(jnp.clip(evals, 0.0, None))[None, :]


def gaussian_samples_from_factor(key, G, k: int):
    """S [n, k] whose columns are i.i.d. N(0, G Gᵀ): S = G Z with Z [p, k] standard normal. No factorisation."""
    check_rank("G", G, 2, "[n, p]")
    k = _check_samples(k)
    G = jnp.asarray(G)
    z = jax.random.normal(key, (G.shape[1], k), dtype=G.dtype)
    return G @ z


def gaussian_samples(key, H, k: int):
    """S [n, k] whose columns are i.i.d. N(0, H) for a symmetric PSD H [n, n]."""
    k = _check_samples(k)
    return gaussian_samples_from_factor(key, psd_factor(H), k)


def wishart_identity(key, n: int, k: int, dtype=jnp.float32):
    """A ~ Wishart(I_n, k) (the law of Z Zᵀ, Z [n, k] standard normal) for k ≥ n, by Bartlett's decomposition.

    A = T Tᵀ with T lower triangular, T_ii = sqrt(χ²_{k−i}) (i = 0..n−1), T_ij ~ N(0, 1) below the diagonal:
    O(n³) whatever k.
    """
    k = _check_samples(k)
    if k < n:
        fail("k", f"at least n = {n} samples for the Bartlett sampler", k)
    k_chi, k_norm = jax.random.split(key)
    dof = (k - jnp.arange(n)).astype(dtype)
    chi2 = 2.0 * jax.random.gamma(k_chi, dof / 2.0, dtype=dtype)
    T = jnp.tril(jax.random.normal(k_norm, (n, n), dtype=dtype), -1) + jnp.diag(jnp.sqrt(chi2))
    return T @ T.T


def gaussian_sampling_mechanism(key, H, k: int, *, method: str = "auto"):
    """H̃ = (1/k) Σ_t g_t g_tᵀ, g_t ~ N(0, H) i.i.d.: the Gaussian sampling mechanism on a PSD H [n, n].

    method="samples" draws the k vectors (O(n² k)); "bartlett" draws L (Z Zᵀ) Lᵀ / k with Z Zᵀ ~ Wishart(I, k)
    directly (same law, O(n³), needs k ≥ n); "auto" picks "bartlett" when k ≥ n.
    """
    k = _check_samples(k)
    if method not in ("auto", "samples", "bartlett"):
        fail("method", "'auto', 'samples' or 'bartlett'", repr(method))
    _check_square("H", H)
    n = H.shape[0]
    if method == "bartlett" or (method == "auto" and k >= n):
        L = psd_factor(H)
        return L @ wishart_identity(key, n, k, dtype=L.dtype) @ L.T / k
    S = gaussian_samples(key, H, k)
    return (S @ S.T) / S.shape[1]


def gaussian_sampling_mechanism_factor(key, G, k: int):
    """The same release as `gaussian_sampling_mechanism(key, G @ G.T, k)` (same distribution), from G [n, p]."""
    S = gaussian_samples_from_factor(key, G, k)
    return (S @ S.T) / S.shape[1]


def _check_budget(epsilon, delta) -> None:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.integer, np.floating)) \
            or not math.isfinite(epsilon) or not epsilon > 0:
        fail("epsilon", "a finite positive number (ε = ∞ allows unboundedly many samples)", epsilon)
    if not 0.0 < delta < 1.0:
        fail("delta", "a number in (0, 1)", delta)


def samples_for_sensitivity(epsilon: float, delta: float, sensitivity: float) -> int:
    """k = ⌊ε² / (8 ln(1/δ) Δ²)⌋: the most samples the (ε, δ) budget allows at relative sensitivity Δ."""
    _check_budget(epsilon, delta)
    check_positive("sensitivity", sensitivity)
    return int(math.floor(epsilon**2 / (8.0 * math.log(1.0 / delta) * sensitivity**2)))


def epsilon_for_samples(k: int, delta: float, sensitivity: float) -> float:
    """The smallest ε whose budget allows k samples at relative sensitivity Δ: ε = Δ·sqrt(8 k ln(1/δ))."""
    k = _check_samples(k)
    _check_budget(1.0, delta)
    check_positive("sensitivity", sensitivity)
    return sensitivity * math.sqrt(8.0 * k * math.log(1.0 / delta))


def ntk_sensitivity(n: int, eta: float, beta: float) -> float:
    """The paper's relative-sensitivity bound Δ = n·β/η for the NTK (η ≤ λ_min(H), β a per-entry bound)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        fail("n", "a positive integer (training-set size)", n)
    check_positive("eta", eta)
    check_positive("beta", beta)
    return n * beta / eta


def samples_for_budget(epsilon: float, delta: float, n: int, eta: float, beta: float, *,
                       published_n: bool = False) -> int:
    """The paper's k = ⌊ε² η² / (8 ln(1/δ) n² β²)⌋ with the true training-set size n.

    `published_n=True` reproduces the published code, which uses n = 1000 whatever the data, with a warning:
    for n > 1000 that k is (n/1000)² times too large for the claimed (ε, δ); for n < 1000 it is conservative. k can be 0 (small ε, large n):
    the budget then allows no release; callers decide (see `jaxmm.privacy.dp_ntk`).
    """
    n_used = n
    if published_n:
        ntk_sensitivity(n, eta, beta)  # validate the true n too
        if n > PUBLISHED_N:
            warnings.warn(
                f"samples_for_budget: published_n=True uses n={PUBLISHED_N} (hard-coded in the published code) "
                f"instead of the true n={n}: k is {(n / PUBLISHED_N) ** 2:.3g}x what the (ε, δ) claim allows, so "
                f"the stated ε does NOT hold for this data", stacklevel=2)
        elif n < PUBLISHED_N:
            warnings.warn(
                f"samples_for_budget: published_n=True uses n={PUBLISHED_N} (hard-coded in the published code) "
                f"instead of the true n={n}: k is {(n / PUBLISHED_N) ** 2:.3g}x the allowed value (conservative: "
                f"the stated ε holds, with fewer samples than the budget allows)", stacklevel=2)
        n_used = PUBLISHED_N
    return samples_for_sensitivity(epsilon, delta, ntk_sensitivity(n_used, eta, beta))


def relative_sensitivity(H, H_prime) -> float:
    """Δ = max over the two orders of ‖A^{-1/2} B A^{-1/2} − I‖_F, in numpy float64 (H, H' positive definite).

    The quantity the Gaussian sampling lemma needs for one neighbouring pair; used by the privacy audit.
    """
    _check_square("H", H)
    _check_square("H_prime", H_prime)
    if H.shape != H_prime.shape:
        fail("H_prime", f"shape {tuple(H.shape)} (the same as H)", f"shape {tuple(H_prime.shape)}")

    def one(A, B):
        evals, evecs = np.linalg.eigh(0.5 * (A + A.T))
        if evals.min() <= 0:
            fail("H", "a positive definite matrix", f"smallest eigenvalue {evals.min():.3g}")
        inv_sqrt = (evecs / np.sqrt(evals)) @ evecs.T
        return float(np.linalg.norm(inv_sqrt @ B @ inv_sqrt - np.eye(A.shape[0])))

    A = np.asarray(H, dtype=np.float64)
    B = np.asarray(H_prime, dtype=np.float64)
    return max(one(A, B), one(B, A))


# ----------------------------------------------------------------------------------------------------------
# Rényi-DP accounting of the Gaussian sampling mechanism (ours; used by the "bounded" DP-NTK mode).
#
# Release k i.i.d. samples g_t ~ N(0, Σ) (H̃ = (1/k) Σ g gᵀ is post-processing of them). Neighbours Σ, Σ' with
# E = Σ' − Σ of rank ≤ r (r = 2 for the NTK: one replaced row changes one row and column of H) and
# λ_min(Σ), λ_min(Σ') ≥ η, so that the eigenvalues ν_j of Σ^{-1/2} E Σ^{-1/2} satisfy Σ_j ν_j² ≤ Δ²,
# Δ = ‖E‖_F / η (‖Σ^{-1/2} E Σ^{-1/2}‖_F ≤ ‖Σ^{-1/2}‖² ‖E‖_F), and only r of them are non-zero.
#
# Whitening by Σ^{-1/2} and rotating (Rényi divergence is invariant under bijections) turns the pair into
# N(0, I) vs N(0, diag(μ)), μ_j = 1 + ν_j, so (order α > 1)
#     D_α(N(0,Σ) ‖ N(0,Σ')) = Σ_j f_α(μ_j),   f_α(μ) = [α ln μ − ln(αμ + 1 − α)] / (2(α − 1)),
# finite iff αμ_j + 1 − α > 0 for all j (1-D: ∫ p^α q^{1−α} = μ^{α/2} (αμ + 1 − α)^{−1/2} for p = N(0,1),
# q = N(0,μ)). The other order D_α(N(0,Σ') ‖ N(0,Σ)) has eigenvalues 1/μ_j = 1 + ν'_j where ν'_j are the
# eigenvalues of Σ'^{-1/2}(−E)Σ'^{-1/2}, bounded the same way (λ_min(Σ') ≥ η): the same bound covers both.
# f_α'(μ) = α(μ − 1)/(2μ(αμ + 1 − α)), so f_α(1 + ν) grows with |ν| on each side of 0 and
#     ρ(α) := sup_{‖ν‖₂ ≤ Δ, ≤ r non-zero} Σ_j f_α(1 + ν_j)
#           = sup_{t ∈ [0, Δ]} g(t) + g(√(Δ² − t²))   (r = 2;  r = 1: g(Δ))
# with g(t) = max(f_α(1 + t), f_α(1 − t)); we evaluate it on a grid, rounding each piece UP (g
# nondecreasing: g(t) ≤ g(t_{i+1}), g(√(Δ² − t²)) ≤ g(√(Δ² − t_i²)) on [t_i, t_{i+1}]), so the result is an
# upper bound, not an estimate. k samples compose to k·ρ(α); the RDP → (ε, δ) conversion is Mironov 2017,
# Prop. 3: ε = k·ρ(α) + ln(1/δ)/(α − 1), minimised over a grid of α ∈ (1, 1/Δ) (any α gives a valid bound).
# For Δ ≥ 1 no α works (the release can be unboundedly more likely under one neighbour): ε = ∞.

def _f_alpha(alpha: float, mu):
    mu = np.asarray(mu, np.float64)
    inner = alpha * mu + 1.0 - alpha
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (alpha * np.log(mu) - np.log(inner)) / (2.0 * (alpha - 1.0))
    return np.where((inner > 0) & (mu > 0), out, np.inf)


def gaussian_sampling_rdp(alpha: float, sensitivity: float, *, rank: int = 2, grid: int = 2048) -> float:
    """Upper bound ρ(α) on the order-α Rényi divergence (both orders) of ONE sample, N(0, Σ) vs N(0, Σ'), when
    Σ^{-1/2}(Σ' − Σ)Σ^{-1/2} has rank ≤ ``rank`` (1 or 2) and Frobenius norm ≤ Δ = ``sensitivity`` (and the
    same for Σ' in place of Σ). Derivation in the comment above; ∞ when α ≥ 1/Δ."""
    check_positive("sensitivity", sensitivity)
    if not alpha > 1:
        fail("alpha", "a Rényi order > 1", alpha)
    if rank not in (1, 2):
        fail("rank", "1 or 2", rank)
    D = float(sensitivity)

    def g(t):
        return np.maximum(_f_alpha(alpha, 1.0 + t), _f_alpha(alpha, 1.0 - t))

    if rank == 1:
        return float(g(D))
    t = np.linspace(0.0, D, grid + 1)
    rest = np.sqrt(np.maximum(D * D - t * t, 0.0))
    return float(np.max(g(t[1:]) + g(rest[:-1])))


_ALPHAS = 1.0 + np.exp(np.linspace(np.log(1e-4), np.log(1e5), 600))


def gaussian_sampling_epsilon(k: int, delta: float, sensitivity: float, *, rank: int = 2) -> float:
    """ε such that releasing k i.i.d. samples of N(0, Σ) is (ε, δ)-DP for neighbours at relative sensitivity
    Δ = ``sensitivity`` (see `gaussian_sampling_rdp`); math.inf when no Rényi order is finite (Δ ≥ 1)."""
    k = _check_samples(k)
    _check_budget(1.0, delta)
    check_positive("sensitivity", sensitivity)
    best = math.inf
    for a in _ALPHAS[_ALPHAS < 1.0 / sensitivity]:
        rho = gaussian_sampling_rdp(float(a), sensitivity, rank=rank, grid=256)
        best = min(best, k * rho + math.log(1.0 / delta) / (a - 1.0))
    return float(best)


def samples_for_epsilon(epsilon: float, delta: float, sensitivity: float, *, rank: int = 2,
                        k_max: int = 10**9) -> int:
    """The largest k with `gaussian_sampling_epsilon(k, δ, Δ) ≤ ε` (0 if even k = 1 costs more)."""
    _check_budget(epsilon, delta)
    check_positive("sensitivity", sensitivity)
    if gaussian_sampling_epsilon(1, delta, sensitivity, rank=rank) > epsilon:
        return 0
    lo, hi = 1, 2
    while hi <= k_max and gaussian_sampling_epsilon(hi, delta, sensitivity, rank=rank) <= epsilon:
        lo, hi = hi, 2 * hi
    hi = min(hi, k_max + 1)
    while hi - lo > 1:  # invariant: ε(lo) ≤ target < ε(hi)
        mid = (lo + hi) // 2
        if gaussian_sampling_epsilon(mid, delta, sensitivity, rank=rank) <= epsilon:
            lo = mid
        else:
            hi = mid
    return lo
