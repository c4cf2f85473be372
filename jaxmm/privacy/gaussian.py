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

from jaxmm.ops._checks import check_positive, check_rank, fail

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
