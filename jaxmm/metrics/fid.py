"""Fréchet distance between two feature sets (Heusel et al. 2017, the "FID" formula), in float64 NumPy:
||mu_a - mu_b||² + Tr(S_a + S_b - 2 (S_a S_b)^½). The one implementation in jaxmm: the text-to-image task, ARTIST
and DocSynthv2's layout-FID all call it. Which network gives the features is the caller's choice and belongs in
every report: FID with Inception-v3 pool features is the field's number; jaxmm's tasks use self-trained feature
extractors (labelled as such), comparable only with themselves."""
from __future__ import annotations

import numpy as np

from jaxmm.checks import fail


def frechet_distance(a, b) -> float:
    """a [N, D], b [M, D] feature rows (N, M >= 2) -> float. Tr (S_a S_b)^½ is computed as the sum of the square
    roots of the eigenvalues of S_a^½ S_b S_a^½ (symmetric PSD, the same spectrum as S_a S_b), which needs no
    non-symmetric matrix square root and stays finite when there are fewer rows than dimensions."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        fail("a, b", "[N, D] and [M, D] feature rows with N, M >= 2", f"{a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    ea, va = np.linalg.eigh(sa)
    ra = (va * np.sqrt(np.clip(ea, 0, None))) @ va.T
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(ra @ sb @ ra), 0, None)).sum()
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(sa) + np.trace(sb) - 2 * tr_sqrt)
