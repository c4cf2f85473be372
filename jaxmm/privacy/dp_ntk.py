"""DP NTK regression end to end (2407.13621): private kernel, private query-time features, privacy report.

`fit_predict` runs one classification experiment: α = (H̃ + λI)⁻¹ Y from a private release H̃ of the discrete
quadratic NTK H (Gaussian sampling mechanism: k i.i.d. g ~ N(0, Σ), H̃ = (1/k) Σ g gᵀ), then
f(z) = Σ_i H(z, x_i) α_i. The neighbour relation everywhere is: REPLACE ONE TRAINING ROW (x_i, y_i); n is
public. Two accounting modes:

``assumptions="bounded"`` (default): the guarantee holds for ANY dataset, by construction.
  1. Bounded rows: every x_i is L2-normalised (or, with normalize=False, clipped) so ‖x_i‖ ≤ 1.
  2. Ridge: the mechanism samples from Σ = H + ηI. H = G Gᵀ is PSD, so λ_min(Σ) ≥ η for every dataset
     (and λ_min(Σ') ≥ η for its neighbour). η is public (a config number, or by default
     η = ‖E‖_F-bound / 0.01, i.e. a relative sensitivity Δ = 0.01; it depends only on n and W).
  3. Per-entry sensitivity. H_ij = ⟨x_i, x_j⟩·x_iᵀ M x_j with M = WᵀW/m (W public, drawn independently of
     the data). Replace x_i by x'. For j ≠ i, H_ij = φ(x_i) with φ(x) = (x·a)(x·b), a = x_j, b = M x_j, a
     quadratic form with matrix (abᵀ + baᵀ)/2 whose two non-zero eigenvalues are (a·b ± ‖a‖‖b‖)/2; on the
     unit ball φ ranges over [(a·b − ‖a‖‖b‖)/2, (a·b + ‖a‖‖b‖)/2], so |H_ij − H'_ij| ≤ ‖a‖‖b‖ ≤ ‖M‖ =: β.
     The diagonal H_ii = ‖x_i‖²·x_iᵀ M x_i ∈ [0, ‖M‖], so |H_ii − H'_ii| ≤ β too. β = σ_max(W)²/m
     (`ntk_regression.entry_sensitivity`; ≈ (1 + √(d/m))² = 2.25 for d = 64, m = 256 — not 1e-6). All other
     entries are unchanged, so E = H' − H lives in row/column i: rank(E) ≤ 2 and
     ‖E‖_F ≤ √(2(n − 1) + 1)·β = √(2n − 1)·β. (Tight: all rows equal to M's top eigenvector, one replaced
     by an orthogonal unit vector, gives |E_ij| = β in the whole row and column.)
  4. Relative sensitivity: the eigenvalues ν of Σ^{-1/2} E Σ^{-1/2} satisfy ‖ν‖₂ ≤ ‖E‖_F/λ_min(Σ) ≤
     Δ := √(2n − 1)·β/η, at most 2 of them non-zero; the same for Σ' (λ_min(Σ') ≥ η).
  5. k from (ε, δ): `gaussian.samples_for_epsilon` — the largest k whose Rényi-DP bound for k i.i.d. samples
     at relative sensitivity Δ (rank 2, both orders), converted to (ε, δ), is ≤ ε. The derivation is in
     jaxmm.privacy.gaussian; it holds for every Δ < 1 and every ε (the paper's closed form
     k = ⌊ε²/(8 ln(1/δ)Δ²)⌋ is not used: its conditions on ε, Δ are not checked here).
  Solve (post-processing, η public): Ĥ = PSD part of (H̃ − ηI) (an estimate of H), α = (Ĥ + λI)⁻¹ Y.

``assumptions="paper"``: the paper's setting, kept for comparison. Σ = H (no ridge), k from the published
  k = ⌊ε² η² / (8 ln(1/δ) n² β²)⌋ with ASSUMED η ≤ λ_min(H) (default 7e-3) and β ≥ the per-entry change
  (default 1e-6). Nothing enforces either: the run MEASURES λ_min(H) and the largest entry change over
  far-point replacements of one row (`check_paper_assumptions`), reports whether they held and the ε the
  paper's own formula gives with the measured relative sensitivity (a lower bound on its worst case).
  Measured on digits: λ_min(H) ≈ 1e-5…2e-3 and entry changes ≈ 0.4, so the stated ε does not hold.

Query-time features: for > 2 classes the paper also privatises the training features used in f(z) with
truncated Laplace noise (per-entry TLap(Δ₁, ε, δ), Δ₁ = 2√d = the L1 diameter of the unit ball's rows,
[reconstruction]); `feature_mechanism="gaussian"` uses the analytic Gaussian mechanism (L2 sensitivity 2,
ours). Both are one-row-replacement guarantees, as is the kernel release in "bounded" mode, so basic
composition gives (ε_H + ε_F, δ_H + δ_F) for the pair of releases.

What is NOT private, in every mode (reported in `not_covered`): the labels y enter α = (Ĥ + λI)⁻¹ Y without
noise, so α, the predictions and any model that contains α are not DP with respect to the labels; in the
2-class setting (and the "h_only" arm) the raw training features x_i are read at query time. Only the
released kernel (and, where privatised, the features) carry the (ε, δ) guarantee. `nothing_released`
is the same predictor with H̃ = 0 (α = Y/λ): it reads the same non-private inputs, so the gap between it
and a private arm is what the private kernel release adds.

Samplers (same law, tested): "factor" draws g = G z (+ √η z' in bounded mode) without forming G or H
(O(k·n·m·d)); "eigh" factors Σ once (O(n³)) and, for k ≥ n, draws the Wishart matrix directly (Bartlett);
"auto" picks the cheaper. k = 0: `k_zero="skip"` (default) releases nothing and reports "k=0 not
releasable"; `k_zero="clamp"` uses k = 1 and reports the ε that k = 1 actually costs.
"""
from __future__ import annotations

import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxmm.checks import check_positive, check_rank, check_shape, fail
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


ASSUMPTIONS = ("bounded", "paper")
SOLVES = ("debiased", "plain")
PAPER_ETA, PAPER_BETA = 7e-3, 1e-6  # the published runs' assumed λ_min(H) lower bound and per-entry sensitivity
DEFAULT_RELATIVE_SENSITIVITY = 0.01  # bounded mode, eta=None: η = √(2n−1)·β / 0.01


def frobenius_sensitivity(n: int, W) -> float:
    """√(2n − 1)·β ≥ ‖H(D) − H(D')‖_F for one replaced row with ‖x‖ ≤ 1 (derivation in the module docstring)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        fail("n", "a positive integer (training-set size)", n)
    return math.sqrt(2 * n - 1) * nr.entry_sensitivity(W)


def bounded_eta(n: int, W, relative_sensitivity: float = DEFAULT_RELATIVE_SENSITIVITY) -> float:
    """The ridge η that makes the bounded mode's relative sensitivity Δ = √(2n−1)·β/η equal the target."""
    check_positive("relative_sensitivity", relative_sensitivity)
    return frobenius_sensitivity(n, W) / relative_sensitivity


def check_paper_assumptions(X, W, *, eta: float, beta: float, n_rows: int = 48, seed: int = 0) -> dict:
    """Measure what the paper's setting assumes, on this data (float64 numpy; X rows already normalised).

    λ_min(H) against η; the largest entry change of H over replacements of one row i by a far point c
    (a unit vector ⊥ x_i, ±M's top eigenvector, the training row least aligned with x_i, a random unit
    vector; not −x_i: H is even in each row), all rows i;
    and the relative sensitivity ‖H^{-½} H' H^{-½} − I‖_F for `n_rows` rows (random) × those candidates, via
    E = e_i uᵀ + u e_iᵀ: ‖B E B‖_F² = 2‖b‖²‖w‖² + 2(b·w)², b = B e_i, w = B u, B = H^{-½}. These are values
    found by a search, i.e. LOWER bounds on the worst case. Returns a dict with `held` and the measurements.
    The check reads the private data without noise: it is a diagnostic for the experimenter (printed in the
    run's report), not part of any release.
    """
    X = np.asarray(X, np.float64)
    W = np.asarray(W, np.float64)
    n, m = X.shape[0], W.shape[0]
    H = nr.quadratic_ntk_np(X, W)
    evals, evecs = np.linalg.eigh(0.5 * (H + H.T))
    lam_min = float(evals[0])
    top = np.linalg.eigh(W.T @ W / m)[1][:, -1]
    rng = np.random.default_rng(seed)
    rand = rng.normal(size=X.shape[1])
    orth = rand[None, :] - (X @ rand)[:, None] * X / np.maximum(np.einsum("id,id->i", X, X), 1e-30)[:, None]
    orth /= np.maximum(np.linalg.norm(orth, axis=1, keepdims=True), 1e-30)
    far = {"orthogonal_to_row": orth, "top_eigvec": np.broadcast_to(top, X.shape),
           "minus_top_eigvec": np.broadcast_to(-top, X.shape),
           "least_aligned_row": X[np.argmin(X @ X.T, axis=1)],
           "random_unit": np.broadcast_to(rand / np.linalg.norm(rand), X.shape)}
    rows = np.sort(rng.choice(n, size=min(n_rows, n), replace=False))
    if lam_min > 0:
        B = (evecs / np.sqrt(evals)) @ evecs.T
    max_change, rel = 0.0, 0.0
    for C in far.values():
        C = np.ascontiguousarray(C)
        Hc = nr.quadratic_ntk_np(C, W, X)  # [n, n]: row i = H(c_i, x_j)
        hcc = np.einsum("id,id->i", C, C) * np.einsum("id,de,ie->i", C, W.T @ W / m, C)
        U = Hc - H
        U[np.arange(n), np.arange(n)] = hcc - np.diag(H)
        max_change = max(max_change, float(np.abs(U).max()))
        if lam_min > 0:
            for i in rows:
                u = U[i].copy()
                u[i] *= 0.5
                b, w = B[:, i], B @ u
                rel = max(rel, math.sqrt(2 * (b @ b) * (w @ w) + 2 * (b @ w) ** 2))
    rel = rel if lam_min > 0 else math.inf
    claimed = n * beta / eta
    return {"lambda_min_H": lam_min, "eta_assumed": float(eta), "lambda_min_ok": lam_min >= eta,
            "max_entry_change": max_change, "beta_assumed": float(beta), "beta_ok": max_change <= beta,
            "relative_sensitivity_measured": rel, "relative_sensitivity_assumed": claimed,
            "relative_sensitivity_ok": rel <= claimed, "held": bool(lam_min >= eta and max_change <= beta
                                                                      and rel <= claimed),
            "search": f"{len(far)} far points per row; relative sensitivity on {len(rows)} rows"}


_CHECKS: dict = {}


def _cached_check(X, W, eta, beta):
    """check_paper_assumptions, memoised on the data (a sweep calls it once per ε and arm with the same X, W)."""
    import hashlib

    key = (hashlib.sha1(X.tobytes()).hexdigest(), hashlib.sha1(W.tobytes()).hexdigest(), X.shape, eta, beta)
    if key not in _CHECKS:
        if len(_CHECKS) > 8:
            _CHECKS.clear()
        _CHECKS[key] = check_paper_assumptions(X, W, eta=eta, beta=beta)
    return _CHECKS[key]


def _release_bounded(key, Xtr, W, k: int, eta: float, sampler: str, block_size: int):
    """("samples", S [n, k]) or ("matrix", H̃ [n, n]): k i.i.d. N(0, H + ηI) draws (or their mean outer product)."""
    n, d = Xtr.shape
    m = W.shape[0]
    if sampler == "auto":
        sampler = "factor" if k * n * m * d < n**3 + n * n * min(k, n) else "eigh"
    if sampler == "factor" and k < n:
        k1, k2 = jax.random.split(key)
        S = nr.ntk_gaussian_samples(k1, Xtr, W, k) + math.sqrt(eta) * jax.random.normal(k2, (n, k), Xtr.dtype)
        return sampler, ("samples", S)
    Sigma = nr.quadratic_ntk(Xtr, W, block_size=block_size) + eta * jnp.eye(n, dtype=Xtr.dtype)
    if k < n:
        return sampler, ("samples", gaussian.gaussian_samples(key, Sigma, k))
    return sampler, ("matrix", gaussian.gaussian_sampling_mechanism(key, Sigma, k))


def ridge_fit_debiased(release, Y, lam: float, eta: float):
    """α = (Ĥ + λI)⁻¹ Y with Ĥ = PSD part of (H̃ − ηI) (post-processing of the release; η is public).

    release: ("samples", S [n, k]) with H̃ = S Sᵀ/k (thin SVD, O(n k²)) or ("matrix", H̃ [n, n]) (eigh, O(n³)).
    Directions outside the release's range get Ĥ = 0 there: α = Y/λ on them.
    """
    kind, A = release
    Y = np.asarray(Y, np.float64)
    if kind == "samples":
        S = np.asarray(A, np.float64) / math.sqrt(A.shape[1])
        U, sv, _ = np.linalg.svd(S, full_matrices=False)
        ev = sv**2
    else:
        ev, U = np.linalg.eigh(0.5 * (np.asarray(A, np.float64) + np.asarray(A, np.float64).T))
    c = np.clip(ev - eta, 0.0, None)
    proj = U.T @ Y
    return U @ (proj / (c + lam)[:, None]) + (Y - U @ proj) / lam


def nothing_released(X_train, y_train, X_test, *, num_classes: int, m: int = 256, lam: float = 10.0,
                     normalize: bool = True, block_size: int = 1024, key=None, W=None):
    """The "nothing private released" baseline: H̃ = 0, α = Y/λ, f(z) = Σ_i H(z, x_i) y_i/λ. It reads the same
    non-private query-time inputs as the private arms (raw x_i, raw labels) and no kernel release."""
    Y = nr.pm1_targets(np.asarray(y_train), num_classes)
    Xtr = jnp.asarray(X_train, jnp.float32)
    Xte = jnp.asarray(X_test, jnp.float32)
    Xtr, Xte = (nr.l2_normalize(Xtr), nr.l2_normalize(Xte)) if normalize else (nr.clip_rows(Xtr), nr.clip_rows(Xte))
    if W is None:
        W = jax.random.normal(jax.random.split(key, 3)[0], (m, Xtr.shape[1]), dtype=jnp.float32)
    alpha = jnp.asarray(Y / lam, jnp.float32)
    return np.asarray(nr.decide(nr.ntk_predict(Xte, Xtr, jnp.asarray(W, jnp.float32), alpha, block_size=block_size)))


NOT_COVERED_LABELS = "labels y enter alpha = (H^ + lam I)^-1 Y without noise: alpha and the predictions are not DP"
NOT_COVERED_FEATURES = "the raw training features x_i are read at query time f(z) = sum_i H(z, x_i) alpha_i"


def fit_predict(key, X_train, y_train, X_test, *, num_classes: int, epsilon: float | None = None,
                delta: float = 1e-3, m: int = 256, lam: float = 10.0, assumptions: str = "bounded",
                eta: float | None = None, beta: float | None = None,
                published_n: bool = False, k_zero: str = "skip", private_features: bool | None = None,
                feature_mechanism: str = "truncated_laplace", feature_sensitivity: float | None = None,
                sampler: str = "auto", normalize: bool = True, block_size: int = 1024, W=None,
                check_assumptions: bool = True, solve: str = "debiased"):
    """Train NTK ridge regression on (X_train, y_train) and predict X_test: (predictions or None, report).

    epsilon=None: the non-private baseline. Otherwise the Gaussian sampling mechanism at (ε, δ);
    `assumptions` "bounded" (default, guarantee by construction; η: the ridge, default `bounded_eta`; β is
    derived from W, passing one is an error) or "paper" (η, β assumed, default 7e-3 and 1e-6; measured when
    `check_assumptions`). `private_features` (default: True iff num_classes > 2, as in the paper) also
    privatises the query-time training features. Predictions are None when k = 0 and k_zero="skip".
    `W` [m, d]: the first-layer weights (default: drawn N(0, I) from `key`; must not depend on the data).
    `solve` (bounded mode; both are post-processing): "debiased" α = (PSD(H̃ − ηI) + λI)⁻¹ Y, or "plain"
    α = (H̃ + λI)⁻¹ Y (H̃ estimates H + ηI: an effective ridge λ + η that shrinks α towards Y/(λ + η)).
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
    if solve not in SOLVES:
        fail("solve", f"one of {SOLVES}", repr(solve))
    if assumptions not in ASSUMPTIONS:
        fail("assumptions", f"one of {ASSUMPTIONS}", repr(assumptions))
    if assumptions == "bounded" and beta is not None:
        fail("beta", "None in assumptions='bounded' (β is proved from W: sigma_max(W)^2/m)", beta)
    if assumptions == "bounded" and published_n:
        fail("published_n", "False in assumptions='bounded' (the published n = 1000 is a paper-mode option)",
             published_n)
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        fail("m", "a positive integer width", m)
    check_positive("lam", lam)
    Y = nr.pm1_targets(y_train, num_classes)
    n, d = X_train.shape
    Xtr = jnp.asarray(X_train, jnp.float32)
    Xte = jnp.asarray(X_test, jnp.float32)
    if normalize:
        Xtr, Xte = nr.l2_normalize(Xtr), nr.l2_normalize(Xte)
    elif assumptions == "bounded":
        Xtr, Xte = nr.clip_rows(Xtr), nr.clip_rows(Xte)
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
    report.update(mechanism="gaussian_sampling (2407.13621)", assumptions=assumptions, epsilon=float(epsilon),
                  delta=float(delta), sampler=sampler, notes=[], not_covered=[NOT_COVERED_LABELS],
                  neighbour_relation="replace one training row (x_i, y_i); n public")
    if assumptions == "bounded":
        beta_v = nr.entry_sensitivity(W)
        eta_v = bounded_eta(n, W) if eta is None else float(eta)
        check_positive("eta", eta_v)
        sens = math.sqrt(2 * n - 1) * beta_v / eta_v
        k = gaussian.samples_for_epsilon(epsilon, delta, sens)
        report.update(eta=eta_v, beta=beta_v, k=int(k), n_in_k=int(n), published_n=False,
                      relative_sensitivity_bound=sens,
                      k_formula="largest k with RDP-accounted eps(k, delta, Delta) <= eps (jaxmm.privacy.gaussian)",
                      sensitivity_formula="Delta = sqrt(2n-1) * beta / eta, beta = sigma_max(W)^2/m, "
                                          "lambda_min(H + eta I) >= eta")
        eps_of = lambda kk: gaussian.gaussian_sampling_epsilon(kk, delta, sens)  # noqa: E731
    else:
        eta_v = PAPER_ETA if eta is None else float(eta)
        beta_v = PAPER_BETA if beta is None else float(beta)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            k = gaussian.samples_for_budget(epsilon, delta, n, eta_v, beta_v, published_n=published_n)
        n_in_k = gaussian.PUBLISHED_N if published_n else n
        sens = gaussian.ntk_sensitivity(n_in_k, eta_v, beta_v)
        report.update(eta=eta_v, beta=beta_v, k=int(k), n_in_k=int(n_in_k), published_n=bool(published_n),
                      relative_sensitivity_bound=sens,
                      k_formula="floor(eps^2 eta^2 / (8 ln(1/delta) n^2 beta^2)) with ASSUMED eta, beta")
        report["notes"] += [str(w.message) for w in caught]
        eps_of = lambda kk: gaussian.epsilon_for_samples(kk, delta, sens)  # noqa: E731
    eps_k1 = eps_of(1)
    if k == 0:
        if k_zero == "skip":
            report.update(releasable=False, total_epsilon=None, total_delta=None)
            report["notes"].append(f"k=0 not releasable: the (eps={epsilon:.4g}, delta={delta:g}) budget allows no "
                                   f"sample at n={report['n_in_k']}; k=1 needs eps >= {eps_k1:.4g}")
            return None, report
        warnings.warn(f"fit_predict: k=0 at eps={epsilon:.4g}; clamped to k=1, which costs eps={eps_k1:.4g}",
                      stacklevel=2)
        report["notes"].append(f"k=0 clamped to k=1: the Gaussian-sampling release costs eps={eps_k1:.4g}, "
                               f"not the requested {epsilon:.4g}")
        report.update(k=1, epsilon_effective=eps_k1)
        k = 1
    if assumptions == "paper" and check_assumptions:
        chk = dict(_cached_check(np.asarray(Xtr), np.asarray(W), eta_v, beta_v))
        rel = chk["relative_sensitivity_measured"]
        chk["epsilon_implied_paper_formula"] = (gaussian.epsilon_for_samples(k, delta, rel)
                                                if math.isfinite(rel) else math.inf)
        chk["epsilon_implied_rdp"] = (gaussian.gaussian_sampling_epsilon(k, delta, rel)
                                      if 0 < rel < 1 else math.inf)
        report["assumption_check"] = chk
        if not chk["held"]:
            report["notes"].append(
                f"paper assumptions did NOT hold: lambda_min(H)={chk['lambda_min_H']:.3g} vs eta={eta_v:g}, "
                f"max entry change {chk['max_entry_change']:.3g} vs beta={beta_v:g}, measured relative "
                f"sensitivity {rel:.3g} vs n*beta/eta={chk['relative_sensitivity_assumed']:.3g}; the paper's "
                f"formula at this k then gives eps >= {chk['epsilon_implied_paper_formula']:.4g}, not {epsilon:.4g}")
    if assumptions == "bounded":
        report["epsilon_accounted"] = eps_of(k)
        sampler_used, release = _release_bounded(k_s, Xtr, W, k, eta_v, sampler, block_size)
        report["sampler"] = sampler_used
        alpha = jnp.asarray(ridge_fit_debiased(release, Y, lam, eta_v if solve == "debiased" else 0.0), jnp.float32)
        report["solve"] = ("alpha = (PSD part of (H~ - eta I) + lam I)^-1 Y" if solve == "debiased" else
                           "alpha = (H~ + lam I)^-1 Y (effective ridge lam + eta)")
    else:
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
                      composition="basic sequential composition of the two releases (both: replace one row)")
    else:
        Xq = Xtr
        report.update(feature_release=None, total_epsilon=eps_h, total_delta=float(delta))
        report["not_covered"].append(NOT_COVERED_FEATURES)
    if assumptions == "paper":
        report["guarantee"] = "assumed (eta, beta not enforced): see assumption_check"
    else:
        report["guarantee"] = "holds for any dataset with the stated neighbour relation (bounded mode)"
    report["releasable"] = True
    preds = nr.decide(nr.ntk_predict(Xte, Xq, W, alpha, block_size=block_size))
    return np.asarray(preds), report


def format_privacy_report(report: dict) -> str:
    """A few human-readable lines for a report from `fit_predict`."""
    if report.get("mechanism", "").startswith("none"):
        return f"[privacy] non-private baseline (n={report['n']}, m={report['m']}, lam={report['lam']})"
    lines = [f"[privacy] {report['mechanism']} [{report['assumptions']}]: eps={report['epsilon']:.4g} "
             f"delta={report['delta']:g} k={report['k']} n={report['n']} (n in k: {report['n_in_k']}) "
             f"eta={report['eta']:.4g} beta={report['beta']:.4g} Delta={report['relative_sensitivity_bound']:.4g}"]
    if "epsilon_accounted" in report:
        lines.append(f"[privacy] RDP-accounted eps of the kernel release at k={report['k']}: "
                     f"{report['epsilon_accounted']:.4g}")
    chk = report.get("assumption_check")
    if chk:
        lines.append(f"[privacy] paper assumptions {'held' if chk['held'] else 'DID NOT HOLD'}: lambda_min(H)="
                     f"{chk['lambda_min_H']:.3g} (assumed >= {chk['eta_assumed']:g}), max entry change "
                     f"{chk['max_entry_change']:.3g} (assumed <= {chk['beta_assumed']:g}), relative sensitivity "
                     f"{chk['relative_sensitivity_measured']:.3g} (assumed {chk['relative_sensitivity_assumed']:.3g})"
                     f"; implied eps (paper formula, measured Delta) >= {chk['epsilon_implied_paper_formula']:.4g}")
    feat = report.get("feature_release")
    if feat:
        lines.append(f"[privacy] query-time features: {feat['mechanism']} sensitivity={feat['sensitivity']:.4g} "
                     f"({feat['norm']}) eps={feat['epsilon']:.4g} delta={feat['delta']:g}")
    if report.get("releasable"):
        lines.append(f"[privacy] total: eps={report['total_epsilon']:.4g} delta={report['total_delta']:g} "
                     f"({report.get('guarantee', '')})")
    lines += [f"[privacy] note: {s}" for s in report.get("notes", [])]
    lines += [f"[privacy] not covered: {s}" for s in report.get("not_covered", [])]
    return "\n".join(lines)


def save_privacy_report(report: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=2, default=float)
