"""The pipeline's filter thresholds (train/tasks/toffee.py `youden_threshold`, `calibrate_filter`): a threshold is
the rule "maximise TPR - FPR on measured good / bad pairs", not a fixed number. Checked against a brute-force
float64 scan, the closed form for two equal-variance Gaussians, and a calibration gallery with a hand-made encoder
whose good and bad similarities are known."""
import numpy as np
import pytest

from jaxmm.data import subjects as S
from train.tasks import toffee as TT


def _j(pos, neg, t):
    return np.mean(pos >= t) - np.mean(neg >= t)


def test_youden_threshold_matches_a_brute_force_scan():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.4, 0.2, 300), rng.normal(0.1, 0.15, 500)
    r = TT.youden_threshold(pos, neg)
    # J is piecewise constant and changes only at observed values: scanning them finds its maximum
    best = max(_j(pos, neg, t) for t in np.concatenate([pos, neg]))
    assert r["J"] == pytest.approx(best, abs=1e-12)
    assert _j(pos, neg, r["threshold"]) == pytest.approx(r["J"], abs=1e-12)
    assert r["tpr"] == pytest.approx(np.mean(pos >= r["threshold"]))
    assert r["fpr"] == pytest.approx(np.mean(neg >= r["threshold"]))


def test_youden_threshold_closed_forms():
    # separable: the midpoint of the gap, J = 1
    r = TT.youden_threshold([0.6, 0.7, 0.9], [0.1, 0.2, 0.4])
    assert r["threshold"] == pytest.approx(0.5) and r["J"] == 1.0
    # N(+1, 1) against N(-1, 1): the densities cross at 0, whatever the class sizes (a rule that maximised plain
    # accuracy would move towards the rarer class's mean: 1/2·ln(20000/2000) = 1.15 for 10:1)
    rng = np.random.default_rng(1)
    r = TT.youden_threshold(rng.normal(1, 1, 2000), rng.normal(-1, 1, 20000))
    assert abs(r["threshold"]) < 0.15
    assert r["J"] == pytest.approx(2 * 0.8413 - 1, abs=0.03)    # 2·Φ(1) - 1


def test_youden_threshold_rejects_bad_input():
    with pytest.raises(ValueError, match="pos: expected a non-empty array"):
        TT.youden_threshold([], [0.1])
    with pytest.raises(ValueError, match="neg: expected a non-empty array of finite"):
        TT.youden_threshold([0.3], [np.nan])


def test_calibrate_filter_on_a_gallery_with_known_similarities():
    gal = S.subject_images(3, 2, seed=5, size=16)
    lab, subs = gal["subject"], gal["subjects"]
    prefixes = [S.encode_caption(s.caption, 32)[:len(s.caption.split())] for s in subs]
    assert len({tuple(p) for p in prefixes}) == 3
    # DINO stand-in: the subject's one-hot (+ a small per-view offset): same-subject cosines ~1, others ~0.1
    dino = lambda im: (np.eye(3)[lab] + 0.1, None)   # noqa: E731

    def clip(im, ids):   # image: its subject's one-hot; text: the one-hot of the subject its caption names
        text = [next(k for k, p in enumerate(prefixes) if (x[:len(p)] == p).all()) for x in ids]
        return np.eye(3)[lab], np.eye(3)[text]
    out = TT.calibrate_filter(dino, clip, gal, 32)
    assert out["dino"]["pos"][2] == 3 and out["dino"]["neg"][2] == 12    # 3 same-subject pairs, 12 others
    assert out["dino"]["J"] == 1.0
    bad = 0.23 / 1.23   # cosine of (1.1, .1, .1) and (.1, 1.1, .1)
    assert out["dino"]["threshold"] == pytest.approx((1 + bad) / 2)
    # own captions score 1, another subject's caption on the same background words 0: threshold 0.5
    assert out["clip"]["pos"][:2] == (1.0, 0.0) and out["clip"]["neg"][:2] == (0.0, 0.0)
    assert out["clip"]["threshold"] == pytest.approx(0.5) and out["clip"]["J"] == 1.0


def test_filter_scores_keeps_only_pairs_passing_both_thresholds():
    """filter_scores = (DINO cosine to the subject, DINO >= t_dino and CLIP-T >= t_clip), checked pair by pair on
    hand-made features: a pair failing either threshold is dropped."""
    feats = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])   # cosines to (1, 0): 1, 0.6, 0, 1
    text = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    dino = lambda im: (feats, None)   # noqa: E731
    clip = lambda im, ids: (feats, text)   # noqa: E731   CLIP-T = feats . text: 1, 0.6, 0, 0
    d, keep = TT.filter_scores(np.zeros((4, 8, 8, 3)), np.array([[2.0, 0.0]]), None, dino, clip, 0.59, 0.5)
    np.testing.assert_allclose(d, [1.0, 0.6, 0.0, 1.0], atol=1e-12)
    assert keep.tolist() == [True, True, False, False]   # 3: DINO fails; 4: CLIP-T fails
    assert TT.filter_scores(np.zeros((4, 8, 8, 3)), np.array([[1.0, 0.0]]), None, dino, clip, 0.61, 0.5)[1].tolist() \
        == [True, False, False, False]
