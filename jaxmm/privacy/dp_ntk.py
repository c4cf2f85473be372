"""DP NTK regression end to end (2407.13621): private kernel, private query-time features, privacy report.

`fit_predict` runs one classification experiment:
1. L2-normalise the rows (as the paper does); draw W [m, d] ~ N(0, I).
2. Non-private: α = (H + λI)⁻¹ Y with the discrete quadratic NTK H.
   Private: release H̃ = (1/k) Σ g gᵀ, g ~ N(0, H) (Gaussian sampling mechanism) with the paper's
   k = ⌊ε² η² / (8 ln(1/δ) n² β²)⌋ and solve α = (H̃ + λI)⁻¹ Y (through the samples: Woodbury, O(n k²); the
   solve only depends on H̃ = S Sᵀ/k, so it is post-processing of H̃).
3. Query time: f(z) = Σ_i H(z, x̃_i) α_i. For multi-class the paper also privatises the training features used
   here with truncated Laplace noise, at the same ε: total budget (2ε, 2δ) by basic composition.

[reconstruction] The feature release: i.i.d. TLap(Δ₁, ε, δ) on every entry of the [n, d] training features
with Δ₁ = 2√d, the L1 diameter of a unit-L2 row (one changed row moves the matrix by at most that in L1; the
per-coordinate truncation bands add up to at most δ because the TLap density decreases outwards). The
published code's sensitivity is not known to us. `feature_mechanism="gaussian"` is our alternative (not the
paper's): the analytic Gaussian mechanism of `dp_accounting` with L2 sensitivity 2.

Samplers (same law, tested): "factor" draws g = G z without forming G or H (O(k·n·m·d)); "eigh" factors H
once (O(n³)) and, for k ≥ n, draws the Wishart matrix directly (Bartlett); "auto" picks the cheaper.

k = 0 (small ε on a large n): `k_zero="skip"` (default) releases nothing and reports "k=0 not releasable" with
the smallest ε that allows k = 1; `k_zero="clamp"` uses k = 1 and reports the ε that k = 1 actually costs.

What the report says is NOT covered by the mechanism (as in the paper): the labels enter α un-noised; for
2 classes (paper setting) the raw training features are used at query time unless `private_features=True`.
"""
from __future__ import annotations

import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxmm.ops._checks import check_positive, check_rank, check_shape, fail
from jaxmm.privacy import gaussian, ntk_regression as nr
from jaxmm.privacy.mechanisms import truncated_laplace, truncated_laplace_bound

K_ZERO_POLICIES = ("skip", "clamp")
FEATURE_MECHANISMS = ("truncated_laplace", "gaussian")
SAMPLERS = ("auto", "factor", "eigh")


def privatize_features(key, X, *, epsilon: float, delta: float, mechanism: str = "truncated_laplace",
                       sensitivity: float | None = None):
    """(X̃, report): X [n, d] with per-entry noise making the whole matrix (ε, δ)-DP under one changed row.

    Default sensitivity: for truncated Laplace the L1 diameter 2√d of a unit-L2 row; for the analytic Gaussian
    the L2 diameter 2. Pass `sensitivity` if the rows are bounded differently. [reconstruction]
    """
    check_rank("X", X, 2, "[n, d]")
    if mechanism not in FEATURE_MECHANISMS:
        fail("mechanism", f"one of {FEATURE_MECHANISMS}", repr(mechanism))
    X = jnp.asarray(X)
    d = X.shape[1]
    if mechanism == "truncated_laplace":
        sens = 2.0 * math.sqrt(d) if sensitivity is None else float(sensitivity)
        noise = truncated_laplace(key, X.shape, sensitivity=sens, epsilon=epsilon, delta=delta, dtype=X.dtype)
        report = {"mechanism": "truncated_laplace", "norm": "l1", "sensitivity": sens, "scale_b": sens / epsilon,
                  "bound_B0": truncated_laplace_bound(sensitivity=sens, epsilon=epsilon, delta=delta)}
    else:
        from dp_accounting import gaussian_mechanism  # analytic Gaussian calibration (Balle & Wang 2018)

        check_positive("epsilon", epsilon)
        if not 0.0 < delta < 1.0:
            fail("delta", "a number in (0, 1)", delta)
        sens = 2.0 if sensitivity is None else float(sensitivity)
        check_positive("sensitivity", sens)
        sigma = sens * gaussian_mechanism.get_sigma_gaussian(epsilon, delta)
        noise = sigma * jax.random.normal(key, X.shape, dtype=X.dtype)
        report = {"mechanism": "analytic_gaussian (dp_accounting)", "norm": "l2", "sensitivity": sens,
                  "sigma": sigma}
    report.update(epsilon=float(epsilon), delta=float(delta), shape=list(X.shape))
    return X + noise, report


def fit_predict(key, X_train, y_train, X_test, *, num_classes: int, epsilon: float | None = None,
                delta: float = 1e-3, m: int = 256, lam: float = 10.0, eta: float = 7e-3, beta: float = 1e-6,
                published_n: bool = False, k_zero: str = "skip", private_features: bool | None = None,
                feature_mechanism: str = "truncated_laplace", feature_sensitivity: float | None = None,
                sampler: str = "auto", normalize: bool = True, block_size: int = 1024, W=None):
    """Train NTK ridge regression on (X_train, y_train) and predict X_test: (predictions or None, report).

    epsilon=None: the non-private baseline. Otherwise the Gaussian sampling mechanism at (ε, δ) with the
    paper's k; `private_features` (default: True iff num_classes > 2, as in the paper) also privatises the
    query-time training features. Predictions are None when k = 0 and k_zero="skip". `W` [m, d]: the
    first-layer weights (default: drawn N(0, I) from `key`).
    """
    check_rank("X_train", X_train, 2, "[n, d]")
    check_rank("X_test", X_test, 2, "[n_test, d]")
    if X_test.shape[1] != X_train.shape[1]:
        fail("X_test", f"{X_train.shape[1]} columns (d of X_train)", f"shape {tuple(X_test.shape)}")
    y_train = np.asarray(y_train)
    if y_train.shape != (X_train.shape[0],):
        fail("y_train", f"shape ({X_train.shape[0]},)", f"shape {y_train.shape}")
    if k_zero not in K_ZERO_POLICIES:
        fail("k_zero", f"one of {K_ZERO_POLICIES}", repr(k_zero))
    if sampler not in SAMPLERS:
        fail("sampler", f"one of {SAMPLERS}", repr(sampler))
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        fail("m", "a positive integer width", m)
    check_positive("lam", lam)
    Y = nr.pm1_targets(y_train, num_classes)
    n, d = X_train.shape
    Xtr = jnp.asarray(X_train, jnp.float32)
    Xte = jnp.asarray(X_test, jnp.float32)
    if normalize:
        Xtr, Xte = nr.l2_normalize(Xtr), nr.l2_normalize(Xte)
    k_w, k_s, k_f = jax.random.split(key, 3)
    if W is None:
        W = jax.random.normal(k_w, (m, d), dtype=jnp.float32)
    else:
        check_shape("W", W, (m, d), "[m, d]")
        W = jnp.asarray(W, jnp.float32)
    report = {"n": int(n), "d": int(d), "m": int(m), "lam": float(lam), "num_classes": int(num_classes)}

    if epsilon is None:
        alpha = nr.ridge_fit(nr.quadratic_ntk(Xtr, W, block_size=block_size), Y, lam)
        report.update(mechanism="none (non-private)", releasable=True)
        return np.asarray(nr.decide(nr.ntk_predict(Xte, Xtr, W, alpha, block_size=block_size))), report

    private_features = num_classes > 2 if private_features is None else bool(private_features)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        k = gaussian.samples_for_budget(epsilon, delta, n, eta, beta, published_n=published_n)
    n_in_k = gaussian.PUBLISHED_N if published_n else n
    sens = gaussian.ntk_sensitivity(n_in_k, eta, beta)
    report.update(
        mechanism="gaussian_sampling (2407.13621)", epsilon=float(epsilon), delta=float(delta), k=int(k),
        k_formula="floor(eps^2 eta^2 / (8 ln(1/delta) n^2 beta^2))", eta=float(eta), beta=float(beta),
        n_in_k=int(n_in_k), published_n=bool(published_n), relative_sensitivity_bound=sens,
        sampler=sampler, notes=[str(w.message) for w in caught],
        not_covered=["labels y enter alpha = (H~ + lam I)^-1 Y without noise (as in the paper)"])
    eps_k1 = gaussian.epsilon_for_samples(1, delta, sens)
    if k == 0:
        if k_zero == "skip":
            report.update(releasable=False, total_epsilon=None, total_delta=None)
            report["notes"].append(f"k=0 not releasable: the (eps={epsilon:.4g}, delta={delta:g}) budget allows no "
                                   f"sample at n={n_in_k}; k=1 needs eps >= {eps_k1:.4g}")
            return None, report
        warnings.warn(f"fit_predict: k=0 at eps={epsilon:.4g}; clamped to k=1, which costs eps={eps_k1:.4g}",
                      stacklevel=2)
        report["notes"].append(f"k=0 clamped to k=1: the Gaussian-sampling release costs eps={eps_k1:.4g}, "
                               f"not the requested {epsilon:.4g}")
        report.update(k=1, epsilon_effective=eps_k1)
        k = 1
    if sampler == "auto":  # the cheaper of: factor form O(k·n·m·d), eigh of H O(n³ + n²·min(k, n))
        sampler = "factor" if k * n * m * d < n**3 + n * n * min(k, n) else "eigh"
    report["sampler"] = sampler
    if sampler == "factor" and k < n:
        alpha = nr.ridge_fit_from_samples(nr.ntk_gaussian_samples(k_s, Xtr, W, k), Y, lam)
    elif sampler == "factor":
        alpha = nr.ridge_fit(nr.ntk_gaussian_sampling_mechanism(k_s, Xtr, W, k), Y, lam)
    elif k < n:
        S = gaussian.gaussian_samples(k_s, nr.quadratic_ntk(Xtr, W, block_size=block_size), k)
        alpha = nr.ridge_fit_from_samples(S, Y, lam)
    else:
        alpha = nr.ridge_fit(gaussian.gaussian_sampling_mechanism(
            k_s, nr.quadratic_ntk(Xtr, W, block_size=block_size), k), Y, lam)

    eps_h = report.get("epsilon_effective", float(epsilon))
    if private_features:
        Xq, feat = privatize_features(k_f, Xtr, epsilon=epsilon, delta=delta, mechanism=feature_mechanism,
                                      sensitivity=feature_sensitivity)
        report.update(feature_release=feat, total_epsilon=eps_h + float(epsilon), total_delta=2.0 * delta,
                      composition="basic sequential composition of the two releases")
    else:
        Xq = Xtr
        report.update(feature_release=None, total_epsilon=eps_h, total_delta=float(delta))
        report["not_covered"].append("the raw training features are used at query time (paper's 2-class setting)")
    report["releasable"] = True
    preds = nr.decide(nr.ntk_predict(Xte, Xq, W, alpha, block_size=block_size))
    return np.asarray(preds), report


def format_privacy_report(report: dict) -> str:
    """A few human-readable lines for a report from `fit_predict`."""
    if report.get("mechanism", "").startswith("none"):
        return f"[privacy] non-private baseline (n={report['n']}, m={report['m']}, lam={report['lam']})"
    lines = [f"[privacy] {report['mechanism']}: eps={report['epsilon']:.4g} delta={report['delta']:g} "
             f"k={report['k']} n={report['n']} (n in k: {report['n_in_k']}) eta={report['eta']:g} "
             f"beta={report['beta']:g} Delta=n*beta/eta={report['relative_sensitivity_bound']:.4g}"]
    feat = report.get("feature_release")
    if feat:
        lines.append(f"[privacy] query-time features: {feat['mechanism']} sensitivity={feat['sensitivity']:.4g} "
                     f"({feat['norm']}) eps={feat['epsilon']:.4g} delta={feat['delta']:g}")
    if report.get("releasable"):
        lines.append(f"[privacy] total: eps={report['total_epsilon']:.4g} delta={report['total_delta']:g}")
    lines += [f"[privacy] note: {s}" for s in report.get("notes", [])]
    lines += [f"[privacy] not covered: {s}" for s in report.get("not_covered", [])]
    return "\n".join(lines)


def save_privacy_report(report: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=2, default=float)
