"""Fréchet distance between two feature sets (Heusel et al. 2017, the "FID" formula), in float64 NumPy:
||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)). Which network gives the features is the caller's choice and
belongs in every report: FID with Inception-v3 pool features is the field's number; jaxmm's shapes task uses a
self-trained scorer's features (jaxmm.data.shapes_scorer), comparable only with itself."""
from __future__ import annotations

import numpy as np

from jaxmm.checks import fail


def frechet_distance(a, b) -> float:
    """a [N, D], b [M, D] feature rows (N, M >= 2) -> float. The matrix square root is scipy's `sqrtm` of S1 S2
    (its tiny imaginary part from round-off dropped), as pytorch-fid computes it."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        fail("a, b", "[N, D] and [M, D] feature rows with N, M >= 2", f"{a.shape} and {b.shape}")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():   # singular product: offset both covariances (pytorch-fid's fallback)
        eps = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
