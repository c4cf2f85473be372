"""The quadratic-activation NTK of 2407.13621 and kernel ridge regression with it (private or not).

Two-layer network with quadratic activation, m first-layer weights w_r ~ N(0, I_d), L2-normalised inputs:

    H_ij = ⟨x_i, y_j⟩ · (1/m) Σ_r ⟨w_r, x_i⟩⟨w_r, y_j⟩ = ((X Wᵀ)(Y Wᵀ)ᵀ / m) ∘ (X Yᵀ)     (discrete NTK)
    H_ij = ⟨x_i, y_j⟩²                                                              (m → ∞ limit)
    G_i  = concat_r(⟨w_r, x_i⟩ x_i) / √m  ∈ R^{m·d},   H = G Gᵀ                        (feature factor)

Regression: α = (H + λI)⁻¹ Y, f(z) = Σ_i H(z, x_i) α_i; labels ±1 (2 classes: one column, prediction
sign) or one-vs-rest columns with −1 for the negatives (C classes: prediction argmax).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxmm.checks import check_positive, check_rank, check_shape, fail


def l2_normalize(X, eps: float = 1e-12):
    """Rows scaled to unit L2 norm (the paper's input normalisation); zero rows stay zero."""
    check_rank("X", X, 2, "[n, d]")
    X = jnp.asarray(X)
    return X / jnp.maximum(jnp.linalg.norm(X, axis=1, keepdims=True), eps)


def clip_rows(X):
    """Rows scaled down to L2 norm ≤ 1 (x / max(1, ‖x‖)); rows already inside the unit ball are unchanged."""
    check_rank("X", X, 2, "[n, d]")
    X = jnp.asarray(X)
    return X / jnp.maximum(jnp.linalg.norm(X, axis=1, keepdims=True), 1.0)


def entry_sensitivity(W) -> float:
    """β = ‖WᵀW/m‖_op = σ_max(W)²/m (float64): the most one entry of H can change when one row x_i with
    ‖x_i‖ ≤ 1 is replaced by another such row (proof in jaxmm.privacy.dp_ntk). W is public (data-independent)."""
    check_rank("W", W, 2, "[m, d]")
    W = np.asarray(W, np.float64)
    return float(np.linalg.norm(W, 2) ** 2 / W.shape[0])


def quadratic_ntk_np(X, W, Y=None):
    """The discrete quadratic NTK in numpy float64 (for measurements and audits): [n, n_y]."""
    X = np.asarray(X, np.float64)
    Y = X if Y is None else np.asarray(Y, np.float64)
    W = np.asarray(W, np.float64)
    return ((X @ W.T) @ (Y @ W.T).T / W.shape[0]) * (X @ Y.T)


def _check_xw(X, W, Y):
    check_rank("X", X, 2, "[n, d]")
    check_shape("W", W, (None, X.shape[1]), "[m, d] (d from X)")
    if Y is not None:
        check_shape("Y", Y, (None, X.shape[1]), "[n_y, d] (d from X)")


def quadratic_ntk(X, W, Y=None, *, block_size: int = 1024):
    """Discrete quadratic NTK between the rows of X [n, d] and Y [n_y, d] (default Y = X): [n, n_y].

    Computed one block of `block_size` rows of X at a time (`lax.map`), so the peak working memory is the
    [n, n_y] result plus two [block_size, n_y] blocks; no [m, n, n_y] tensor is ever formed.
    """
    _check_xw(X, W, Y)
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        fail("block_size", "a positive integer", block_size)
    X = jnp.asarray(X)
    Y = X if Y is None else jnp.asarray(Y)
    W = jnp.asarray(W, dtype=X.dtype)
    return _quadratic_ntk(X, W, Y, int(block_size))


@jax.jit(static_argnames="block_size")
def _quadratic_ntk(X, W, Y, block_size):
    m = W.shape[0]
    B = Y @ W.T  # [n_y, m]

    def row(args):
        x, a = args  # x [d], a = W x [m]
        return ((B @ a) / m) * (Y @ x)

    return jax.lax.map(row, (X, X @ W.T), batch_size=min(block_size, X.shape[0]))


def quadratic_ntk_limit(X, Y=None):
    """The m → ∞ limit ⟨x_i, y_j⟩² [n, n_y] (for w_r ~ N(0, I): E[(1/m)Σ_r⟨w_r,x⟩⟨w_r,y⟩] = ⟨x, y⟩)."""
    check_rank("X", X, 2, "[n, d]")
    X = jnp.asarray(X)
    if Y is not None:
        check_shape("Y", Y, (None, X.shape[1]), "[n_y, d] (d from X)")
    Y = X if Y is None else jnp.asarray(Y)
    return (X @ Y.T) ** 2


def ntk_features(X, W):
    """G [n, m·d] with G_i = concat_r(⟨w_r, x_i⟩ x_i)/√m, so that G Gᵀ = quadratic_ntk(X, W).

    Materialises n·m·d numbers: fine for small problems; for large ones use `ntk_gaussian_samples`, which
    draws g = G z without forming G.
    """
    _check_xw(X, W, None)
    X = jnp.asarray(X)
    W = jnp.asarray(W, dtype=X.dtype)
    A = X @ W.T  # [n, m]
    n, m = A.shape
    return (A[:, :, None] * X[:, None, :]).reshape(n, -1) / jnp.sqrt(jnp.asarray(m, X.dtype))


def ntk_gaussian_samples(key, X, W, k: int, *, batch_size: int = 16):
    """S [n, k], columns i.i.d. N(0, H) with H = quadratic_ntk(X, W), without forming H or G.

    g = G z with z = vec(Z), Z [m, d] standard normal: g_i = (1/√m) Σ_r ⟨w_r, x_i⟩⟨z_r, x_i⟩, i.e.
    rowsum((X Wᵀ) ∘ (X Zᵀ))/√m. Cost O(k·n·m·d) time, O(batch_size·n·m) memory.
    """
    _check_xw(X, W, None)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        fail("k", "a positive integer number of samples", k)
    X = jnp.asarray(X)
    W = jnp.asarray(W, dtype=X.dtype)
    keys = jax.random.split(key, int(k))
    return _ntk_samples(keys, X, W, int(batch_size))


@jax.jit(static_argnames="batch_size")
def _ntk_samples(keys, X, W, batch_size):
    A = X @ W.T  # [n, m]
    m, d = W.shape

    def one(key):
        Z = jax.random.normal(key, (m, d), dtype=X.dtype)
        return jnp.sum(A * (X @ Z.T), axis=1) / jnp.sqrt(jnp.asarray(m, X.dtype))

    return jax.lax.map(one, keys, batch_size=min(batch_size, keys.shape[0])).T


def ntk_gaussian_sampling_mechanism(key, X, W, k: int, *, chunk: int = 512, batch_size: int = 16):
    """H̃ = (1/k) Σ_t g_t g_tᵀ with g_t ~ N(0, quadratic_ntk(X, W)) [n, n], summed `chunk` samples at a time.

    The factor form (no Cholesky, no G); O(k·n·m·d) time. For k < n prefer `ntk_gaussian_samples` and a
    solver that works from the samples (`ridge_fit_from_samples`).
    """
    _check_xw(X, W, None)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        fail("k", "a positive integer number of samples", k)
    n = X.shape[0]
    acc = jnp.zeros((n, n), jnp.asarray(X).dtype)
    for c, start in enumerate(range(0, int(k), chunk)):
        S = ntk_gaussian_samples(jax.random.fold_in(key, c), X, W, min(chunk, int(k) - start),
                                 batch_size=batch_size)
        acc = acc + S @ S.T
    return acc / k


def pm1_targets(labels, num_classes: int):
    """±1 regression targets: [n, 1] (+1 for class 1) when num_classes == 2, else one-vs-rest [n, C]."""
    labels = np.asarray(labels)
    check_rank("labels", labels, 1, "[n]")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        fail("num_classes", "an integer >= 2", num_classes)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        fail("labels", f"integers in [0, {num_classes})", f"range [{labels.min()}, {labels.max()}]")
    if num_classes == 2:
        return np.where(labels == 1, 1.0, -1.0)[:, None]
    return np.where(labels[:, None] == np.arange(num_classes)[None, :], 1.0, -1.0)


def decide(scores):
    """Class predictions from scores [n, 1] (sign: class 1 if > 0) or [n, C] (argmax)."""
    check_rank("scores", scores, 2, "[n, 1 or C]")
    scores = jnp.asarray(scores)
    if scores.shape[1] == 1:
        return (scores[:, 0] > 0).astype(jnp.int32)
    return jnp.argmax(scores, axis=1).astype(jnp.int32)


def ridge_fit(H, Y, lam: float):
    """α = (H + λI)⁻¹ Y for a PSD H [n, n] and targets Y [n, c] (Cholesky solve)."""
    check_rank("H", H, 2, "[n, n]")
    check_shape("H", H, (H.shape[0], H.shape[0]), "[n, n]")
    check_shape("Y", Y, (H.shape[0], None), "[n, c]")
    check_positive("lam", lam)
    H = jnp.asarray(H)
    A = H + lam * jnp.eye(H.shape[0], dtype=H.dtype)
    return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(A), jnp.asarray(Y, H.dtype))


def ridge_fit_from_samples(S, Y, lam: float):
    """α = (H̃ + λI)⁻¹ Y for H̃ = S Sᵀ/k, S [n, k] (Woodbury: O(n k²), never forms the [n, n] H̃).

    (λI + UUᵀ)⁻¹ = (I − U (λI_k + UᵀU)⁻¹ Uᵀ)/λ with U = S/√k.
    """
    check_rank("S", S, 2, "[n, k]")
    check_shape("Y", Y, (S.shape[0], None), "[n, c]")
    check_positive("lam", lam)
    S = jnp.asarray(S)
    Y = jnp.asarray(Y, S.dtype)
    U = S / jnp.sqrt(jnp.asarray(S.shape[1], S.dtype))
    inner = lam * jnp.eye(U.shape[1], dtype=U.dtype) + U.T @ U
    return (Y - U @ jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(inner), U.T @ Y)) / lam


def ntk_predict(Z, X_train, W, alpha, *, block_size: int = 1024):
    """Scores f(z) = Σ_i H(z, x_i) α_i for query rows Z [n_q, d]: [n_q, c]."""
    check_shape("alpha", alpha, (X_train.shape[0], None), "[n_train, c]")
    return quadratic_ntk(Z, W, X_train, block_size=block_size) @ jnp.asarray(alpha)
