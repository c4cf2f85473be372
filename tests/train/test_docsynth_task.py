"""train/tasks/docsynth.py: the coherence measure by hand, and the layout-FID encoder tells real pages from
corrupted ones (the `:tiny` run itself is a case of tests/train/test_configs_tiny.py)."""
import numpy as np

from jaxmm.data import docsynth as ds
from jaxmm.metrics.layout import frechet_distance
from train.tasks import docsynth as task


def _el(cat, x, y, w, h, text=None):
    g = ds.GRID
    return ds.Element(cat, (x / g, y / g, w / g, h / g), text)


def test_coherence_by_hand():
    # width 4 units = 8 chars a line: "ab cd efgh" needs 2 lines (text: 2 units, title: 3 lines x 2 = 6)
    good = ds.Layout((_el("text", 0, 0, 4, 2, "ab cd efgh"), _el("title", 5, 0, 4, 6, "ab cd efgh"),
                      _el("figure", 0, 10, 4, 4)))
    bad = ds.Layout((_el("text", 0, 0, 4, 3, "ab cd efgh"), _el("list", 5, 0, 4, 2, "a b c")))
    assert task.coherence([good]) == 1.0
    assert task.coherence([bad]) == 0.0
    assert task.coherence([good, bad]) == 0.5
    empty = ds.Layout((_el("list", 0, 0, 4, 3), _el("list", 5, 0, 4, 2)))
    assert task.coherence([empty]) == 0.0   # no text, nothing to fill from: counted as not fitting
    assert task.coherence([empty], fill_from={"list": ["a b c"]}) == 0.5


def test_fid_encoder_separates_real_from_corrupted_pages():
    real = [ds.procedural_document(i) for i in range(200)]
    other = [ds.procedural_document(1000 + i) for i in range(100)]
    rng = np.random.default_rng(0)
    shaken = [ds.Layout(tuple(ds.Element(e.category, tuple(np.clip(np.array(e.box) + rng.normal(0, 0.05, 4), 0, 1)),
                                         e.text) for e in p.elements)) for p in other]
    enc = task.train_fid_encoder(real, ds.CATEGORIES, steps=150)
    feats = lambda lays: np.asarray(task._encode(enc, *task._features_input(lays, ds.CATEGORIES)))  # noqa: E731
    base = feats(real)
    same, corrupted = frechet_distance(feats(other), base), frechet_distance(feats(shaken), base)
    assert corrupted > 3 * same, (same, corrupted)
