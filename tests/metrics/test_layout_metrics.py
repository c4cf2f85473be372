"""jaxmm.metrics.layout against hand-computed cases and an independent matrix square root."""
import math

import numpy as np
import pytest
import scipy.linalg

from jaxmm.metrics.layout import (box_iou, frechet_distance, layout_alignment, layout_overlap, maximum_iou,
                                  perplexity)


def test_alignment_hand_computed():
    # A's lines (l, xc, r, t, yc, b) = (0, .1, .2, 0, .1, .2); B's = (.1, .25, .4, .5, .55, .6): nearest is
    # left-left at .1 for both elements -> mean of -log(1 - .1)
    a, b = (0, 0, 0.2, 0.2), (0.1, 0.5, 0.3, 0.1)
    assert layout_alignment([a, b]) == pytest.approx(-math.log(0.9), abs=1e-12)
    # add C centred under A (xc = .1): A and C get 0; B's nearest line is now C's left edge (.05 from its own)
    c = (0.05, 0.7, 0.1, 0.1)
    assert layout_alignment([a, b, c]) == pytest.approx(-math.log(0.95) / 3, abs=1e-12)
    assert layout_alignment([a]) == 0.0 and layout_alignment([]) == 0.0
    assert layout_alignment([a, (0.0, 0.6, 0.5, 0.1)]) == 0.0   # left edges aligned


def test_overlap_hand_computed():
    a, b = (0, 0, 0.5, 0.5), (0.25, 0.25, 0.5, 0.5)   # intersection .0625, each area .25
    assert layout_overlap([a, b]) == pytest.approx((0.25 + 0.25) / 2)
    assert layout_overlap([a, b, (0.9, 0.9, 0.1, 0.1)]) == pytest.approx(0.5 / 3)
    small = (0.1, 0.1, 0.1, 0.1)   # inside a: ratio 1 for it, .01/.25 for a
    assert layout_overlap([a, small]) == pytest.approx((1 + 0.04) / 2)
    assert layout_overlap([a, (0.5, 0, 0.5, 0.5)]) == 0.0   # touching edges
    assert layout_overlap([a, (0.2, 0.2, 0.0, 0.3)]) == 0.0   # a zero-area box adds nothing
    with pytest.raises(ValueError, match="boxes"):
        layout_overlap(np.zeros((2, 3)))


def test_box_iou():
    np.testing.assert_allclose(box_iou([(0, 0, 0.5, 0.5)], [(0.25, 0, 0.5, 0.5), (0, 0, 0.5, 0.5)]),
                               [[0.125 / 0.375, 1.0]])


def test_maximum_iou_hand_computed():
    L = np.array
    gen = [(L([(0, 0, .5, .5), (.5, .5, .5, .5)]), L([0, 1])),
           (L([(0, 0, 1, 1)]), L([0])),
           (L([(0, 0, 1, 1)]), L([2]))]   # no real layout has labels {2}: left out
    real = [(L([(.5, .5, .25, .5), (0, 0, .5, .5)]), L([1, 0])),   # vs gen[0]: (1 + .5) / 2 = .75
            (L([(.25, 0, .5, .5), (.5, .5, .5, .5)]), L([0, 1])),  # (1/3 + 1) / 2
            (L([(0, 0, .5, 1)]), L([0]))]                           # vs gen[1]: .5
    assert maximum_iou(gen, real) == pytest.approx((0.75 + 0.5) / 2)
    # within a label, boxes are matched one-to-one whatever their order
    two = L([(0, 0, .2, .2), (.5, .5, .2, .2)])
    assert maximum_iou([(two, L([0, 0]))], [(two[::-1], L([0, 0]))]) == pytest.approx(1.0)
    assert maximum_iou([(two, L([0, 0]))], [(two, L([0, 1]))]) == 0.0
    with pytest.raises(ValueError, match="labels"):
        maximum_iou([(two, L([0]))], real)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 2.0, (500, 1)), rng.normal(-1.0, 0.5, (400, 1))
    va, vb = np.var(a, ddof=1), np.var(b, ddof=1)
    expect = (a.mean() - b.mean()) ** 2 + va + vb - 2 * math.sqrt(va * vb)
    assert frechet_distance(a, b) == pytest.approx(expect, rel=1e-10)
    x, y = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5)), rng.normal(size=(200, 5)) + 0.3
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(sx + sy - 2 * scipy.linalg.sqrtm(sx @ sy).real)
    assert frechet_distance(x, y) == pytest.approx(ref, rel=1e-8)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="feature rows"):
        frechet_distance(x, y[:, :3])


def test_perplexity():
    assert perplexity([math.log(2), math.log(8)]) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="nll"):
        perplexity([])
