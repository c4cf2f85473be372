"""Layout-generation metrics as Kikuchi et al. 2021 (LayoutGAN++, "Constrained Graphic Layout Generation via
Latent Optimization", their `metric.py`) define them; NumPy / SciPy, no JAX.

Boxes are [n, 4] arrays (x, y, w, h): top-left corner and size as fractions of the page; labels [n] ints.

    layout_alignment(boxes)    per layout: mean over elements i of -log(1 - d_i), d_i = min over j != i and over
                               the six alignment lines (left, x-centre, right, top, y-centre, bottom) of the
                               distance between i's and j's line of that type; an element with no partner counts 0
                               (Lee et al. 2020 via LayoutGAN++; reported x100)
    layout_overlap(boxes)      per layout: sum over ordered pairs i != j of area(i ∩ j) / area(i), divided by n
                               (LayoutGAN++; reported x100); a zero-area box contributes 0
    maximum_iou(gen, real)     LayoutGAN++'s Max-IoU: layouts are grouped by their multiset of labels; within a
                               group, gen and real layouts are matched one-to-one (Hungarian) maximising the
                               layout score = sum over labels of the IoU of the best one-to-one matching of that
                               label's boxes, / n; the result is the mean score of all matched pairs (0 if none)
    frechet_distance(a, b)     ||mu_a - mu_b||² + tr(S_a + S_b - 2 (S_a S_b)^½) of Gaussian fits to two feature
                               sets (layout-FID, with features of a self-trained layout encoder: see the caller)
    perplexity(nll)            exp(mean per-token negative log-likelihood, nats)

Differences from the reference code, both deliberate: padding slots never count as partners (LayoutGAN++ masks only
the rows i), and the gen x real score matrix is indexed [gen, real] (their meshgrid reshape transposes it when the
two groups differ in size).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxmm.metrics.fid import frechet_distance  # noqa: F401  (layout-FID; re-exported)
from jaxmm.checks import fail


def _boxes(name, b) -> np.ndarray:
    b = np.asarray(b, np.float64)
    if b.size == 0:
        return np.zeros((0, 4))
    if b.ndim != 2 or b.shape[1] != 4:
        fail(name, "[n, 4] boxes (x, y, w, h)", np.shape(b))
    return b


def layout_alignment(boxes) -> float:
    b = _boxes("boxes", boxes)
    n = len(b)
    if n < 2:
        return 0.0
    x, y, w, h = b.T
    lines = np.stack([x, x + w / 2, x + w, y, y + h / 2, y + h])  # [6, n]
    d = np.abs(lines[:, :, None] - lines[:, None, :])  # [6, n, n]
    d[:, np.arange(n), np.arange(n)] = np.inf
    dmin = np.clip(d.min(axis=(0, 2)), 0.0, 1.0 - 1e-12)
    return float(np.mean(-np.log1p(-dmin)))


def layout_overlap(boxes) -> float:
    b = _boxes("boxes", boxes)
    n = len(b)
    if n == 0:
        return 0.0
    inter = _intersection(b, b)
    np.fill_diagonal(inter, 0.0)
    area = b[:, 2] * b[:, 3]
    ratio = np.divide(inter, area[:, None], out=np.zeros_like(inter), where=area[:, None] > 0)
    return float(ratio.sum() / n)


def _intersection(a, b) -> np.ndarray:
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, :2] + a[:, None, 2:], b[None, :, :2] + b[None, :, 2:])
    side = np.clip(hi - lo, 0, None)
    return side[..., 0] * side[..., 1]


def box_iou(a, b) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of two box sets."""
    a, b = _boxes("a", a), _boxes("b", b)
    inter = _intersection(a, b)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _pair_score(ga, la, gb, lb) -> float:
    from scipy.optimize import linear_sum_assignment

    score = 0.0
    for lab in np.unique(la):
        iou = box_iou(ga[la == lab], gb[lb == lab])
        r, c = linear_sum_assignment(iou, maximize=True)
        score += iou[r, c].sum()
    return score / len(la)


def maximum_iou(generated: Sequence[tuple], real: Sequence[tuple]) -> float:
    """generated / real: sequences of (boxes [n, 4], labels [n])."""
    from scipy.optimize import linear_sum_assignment

    def groups(layouts, name):
        out = {}
        for k, (bx, lb) in enumerate(layouts):
            bx, lb = _boxes(f"{name}[{k}] boxes", bx), np.asarray(lb).reshape(-1)
            if len(lb) != len(bx):
                fail(f"{name}[{k}] labels", f"{len(bx)} labels (one per box)", len(lb))
            if len(bx):
                out.setdefault(tuple(sorted(lb.tolist())), []).append((bx, lb))
        return out

    g, r = groups(generated, "generated"), groups(real, "real")
    scores = []
    for key in set(g) & set(r):
        m = np.array([[_pair_score(a, la, b, lb) for b, lb in r[key]] for a, la in g[key]])
        i, j = linear_sum_assignment(m, maximize=True)
        scores.extend(m[i, j].tolist())
    return float(np.mean(scores)) if scores else 0.0


def perplexity(nll) -> float:
    """exp of the mean of per-token negative log-likelihoods (nats)."""
    nll = np.asarray(nll, np.float64)
    if nll.size == 0:
        fail("nll", "at least one token's negative log-likelihood", nll.shape)
    return float(np.exp(nll.mean()))
