"""configs/toffee.py:tiny end to end (train/tasks/toffee.py): every stage runs, the construction pipeline writes
editing pairs with masks and generation pairs for 2 held-out subjects, the tables and grids are written.

Marked slow: the run compiles a UNet train step, a λ-guided DDIM sampler, the DINO and CLIP steps (~150 s of CPU
on 2 shared cores, over the suite's budget for new tests); run with `pytest -m slow tests/train/test_toffee_task.py`.
The pieces it glues are tested fast in tests/data/test_subjects.py, tests/models/test_dino.py,
tests/models/test_toffee.py and tests/hf/test_dinov2.py."""
import json
import math

import numpy as np
import pytest

from jaxmm.data import subjects as S


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from train.main import run
    from configs.toffee import get_config

    workdir = tmp_path_factory.mktemp("toffee_tiny")
    summary = run(get_config("tiny"), str(workdir))
    return workdir, summary


@pytest.mark.slow
def test_pipeline_on_two_subjects_writes_pairs(tiny_run):
    workdir, summary = tiny_run
    pairs = np.load(workdir / "pairs.npz")
    n = 2 * 2  # 2 held-out subjects x 2 pairs each (configs/toffee.py:tiny)
    assert summary["pipeline_pairs"] == n
    assert pairs["edit_source"].shape == pairs["edit_target"].shape == (n, 32, 32, 3)
    assert pairs["gen_target"].shape == pairs["gen_reference"].shape == (n, 32, 32, 3)
    assert pairs["edit_mask"].shape == (n, 32, 32) and pairs["edit_mask"].dtype == bool
    assert pairs["kept"].shape == pairs["gen_kept"].shape == (n,) and len(pairs["gen_caption"]) == n
    for x in (pairs["edit_target"], pairs["gen_target"]):
        assert np.isfinite(x).all() and 0 <= x.min() and x.max() <= 1
    # the masks are the renderer's segmentation of both objects: each nonempty, none the whole image; outside the mask
    # the editing source is its target
    assert all(m.any() and not m.all() for m in pairs["edit_mask"])
    out = ~pairs["edit_mask"]
    np.testing.assert_array_equal(pairs["edit_source"][out], pairs["edit_target"][out])
    # both subjects' captions are in the generation pairs (2 subjects -> captions of 2 different objects)
    assert len({c.split(" in front of")[0].split(" on a ")[0] for c in pairs["gen_caption"]}) == 2
    assert summary["pipeline_pairs_per_second"] > 0 and summary["baseline_seconds_per_pair"] > 0


@pytest.mark.slow
def test_summary_tables_and_grids(tiny_run):
    workdir, summary = tiny_run
    saved = json.loads((workdir / "summary.json").read_text())
    numbers = {k: v for k, v in saved.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert all(math.isfinite(v) for v in numbers.values())
    for key in ("lambda0_DINO", "lambda2_CLIP-T", "lambda2_MSE", "seg_dino_p0.3", "clip_t_p0.0", "dino_knn"):
        assert key in saved
    # the encoder-free columns: squared errors of [0, 1] images against the true render, so in [0, 1]
    for key in ("MSE_p0.3_seeds", "mask MSE_p0.0_seeds"):
        assert all(0 <= v <= 1 for v in saved[key])
    # the no-model row: the reference scored against itself by DINO is a cosine of identical features
    assert abs(saved["copy_DINO"] - 1) < 1e-5 and 0 < saved["copy_mask MSE"] <= 1
    md = (workdir / "results.md").read_text()
    assert "| λ |" in md and "| p |" in md and "Cost per pair" in md
    # ToffeeNet trained on the pipeline's own pairs (tiny keeps every pair: 2 subjects x 2 prompts x 2 kinds), and on
    # the same pairs with the true renders
    assert saved["dataset_examples"] == 8 and saved["dataset_editing"] == 4
    for key in ("seg_dino_p0.3_pipeline", "clip_t_p0.0_pipeline_truth", "MSE_p0.3_pipeline_seeds"):
        assert key in saved
    assert "training data from the construction pipeline" in md
    # ToffeeNet draws minibatches of toffee.batch, the Refiner / View Generator of unet.batch (tiny: 2 and 4)
    assert saved["toffeenet_p0.3_pipeline_batch"] == 2 and saved["refiner_batch"] == saved["viewgen_batch"] == 4
    for png in ("toffee_pipeline.png", "toffee_lambda.png", "toffee_edit.png", "toffee_dataset.png"):
        assert (workdir / png).stat().st_size > 0


def test_pixel_mse_whole_and_in_the_mask():
    from train.tasks.toffee import pixel_mse

    tg = np.zeros((4, 4, 3))
    m1, m2 = np.zeros((4, 4)), np.zeros((4, 4))
    m1[:2, :2], m2[0, 0] = 1, 1
    exs = [{"target": tg, "mask": m1}, {"target": tg, "mask": m2}]
    x = np.zeros((2, 4, 4, 3))
    x[0, 0, 0] = 1.0        # one pixel wrong in example 0 (inside its 4-pixel mask), example 1 exact
    x[1, 3, 3] = 0.5        # example 1: wrong only outside its mask
    assert pixel_mse(x, exs) == (3 * 1.0 + 3 * 0.25) / (2 * 48)
    assert pixel_mse(x, exs, masked=True) == (1 / 4 + 0) / 2


def test_bad_config_fails_before_compute(tmp_path):
    from configs.toffee import get_config
    from train.tasks.toffee import check_config

    c = get_config("tiny")
    c.data.size = 30
    with pytest.raises(ValueError, match="config.data.size"):
        check_config(c)
    c = get_config("tiny")
    c.toffee.p_values = (1.5,)
    with pytest.raises(ValueError, match="p_values"):
        check_config(c)
    c = get_config("tiny")
    c.toffee.seeds = ()
    with pytest.raises(ValueError, match="config.toffee.seeds"):
        check_config(c)
    c = get_config("tiny")
    c.unet.viewgen_prediction = "noise"
    with pytest.raises(ValueError, match="config.unet.viewgen_prediction.*'noise'"):
        check_config(c)
    c = get_config("tiny")
    c.toffee.prediction = "x0"
    with pytest.raises(ValueError, match="config.toffee.prediction.*'x0'"):
        check_config(c)
    for name in ("unet", "toffee"):
        c = get_config("tiny")
        c[name].batch = 0
        with pytest.raises(ValueError, match=f"config.{name}.batch.*0"):
            check_config(c)


def _built(rng, n=2, size=16):
    """A construction-pipeline output for one subject (train.tasks.toffee.run's `construct`), with made-up
    'refined' and 'new view' images and filter verdicts."""
    s = S.random_subject(rng)
    views, bgs = [S.random_view(rng) for _ in range(n)], [S.random_background(rng) for _ in range(n)]
    v2 = [S.random_view(rng) for _ in range(n)]
    truth = [S.render(s, v, b, size) for v, b in zip(views, bgs)]
    return {"subject": S.render(s, S.random_view(rng), S.random_background(rng), size),
            "caps": [f"{s.caption} {b.caption}" for b in bgs], "truth": truth,
            "source": [S.render(S.random_subject(rng), v, b, size) for v, b in zip(views, bgs)],
            "new_truth": [S.render(s, v, b, size) for v, b in zip(v2, bgs)],
            "refined": rng.uniform(size=(n, size, size, 3)).astype(np.float32),
            "new_view": rng.uniform(size=(n, size, size, 3)).astype(np.float32),
            "scores": (np.zeros(n), np.array([True, False])), "new_view_scores": (np.zeros(n), np.array([False, True]))}


def test_pipeline_examples_are_the_kept_pairs_with_consistent_sources():
    """ToffeeNet's training pairs from the pipeline: only what the filter kept; an editing source that equals its
    target outside the mask and shows the other object inside it, the mask covering both silhouettes; the true-render
    control differs only in the images."""
    from train.tasks.toffee import pipeline_examples

    b = _built(np.random.default_rng(3))
    exs, ctrl = pipeline_examples(b), pipeline_examples(b, true_renders=True)
    assert len(exs) == len(ctrl) == 2          # the editing pair of prompt 0, the generation pair of prompt 1
    (edit, gen), (edit_t, gen_t) = exs, ctrl
    for e in (edit, gen, edit_t, gen_t):
        assert set(e) == {"target", "reference", "source", "mask", "depth", "caption"}
        np.testing.assert_array_equal(e["reference"], b["subject"]["image"])
    # editing: prompt 0's refined image; the mask the dilated union of the subject's and the other object's
    # silhouettes; outside it the source is the target, inside it the other object's render
    np.testing.assert_array_equal(edit["target"], b["refined"][0])
    m = edit["mask"].astype(bool)
    assert (m >= b["truth"][0]["mask"]).all() and (m >= b["source"][0]["mask"]).all() and not m.all()
    np.testing.assert_array_equal(edit["source"][~m], edit["target"][~m])
    np.testing.assert_allclose(edit["source"][m], b["source"][0]["image"][m])
    np.testing.assert_array_equal(edit["depth"], S.depth_map(b["truth"][0]["depth"]))
    assert edit["caption"] == b["caps"][0]
    # generation: prompt 1's new view, no source or mask, the depth of the new view
    np.testing.assert_array_equal(gen["target"], b["new_view"][1])
    assert not gen["source"].any() and not gen["mask"].any() and gen["caption"] == b["caps"][1]
    np.testing.assert_array_equal(gen["depth"], S.depth_map(b["new_truth"][1]["depth"]))
    # the control: the true renders in place of the pipeline's images, everything else the same
    np.testing.assert_array_equal(edit_t["target"], b["truth"][0]["image"])
    np.testing.assert_array_equal(gen_t["target"], b["new_truth"][1]["image"])
    np.testing.assert_array_equal(edit_t["mask"], edit["mask"])
    np.testing.assert_array_equal(edit_t["source"][~m], b["truth"][0]["image"][~m])
    # nothing kept, nothing written
    b["scores"], b["new_view_scores"] = (np.zeros(2), np.zeros(2, bool)), (np.zeros(2), np.zeros(2, bool))
    assert pipeline_examples(b) == []


def test_bad_sources_fail_before_compute():
    from configs.toffee import get_config
    from train.tasks.toffee import check_config

    c = get_config("tiny")
    c.toffee.sources = ("pipeline", "dreambooth")
    with pytest.raises(ValueError, match="config.toffee.sources.*dreambooth"):
        check_config(c)
    c = get_config("tiny")
    c.toffee.dataset_subjects = 0
    with pytest.raises(ValueError, match="config.toffee.dataset_subjects"):
        check_config(c)
    c = get_config("tiny")
    c.toffee.sources, c.toffee.dataset_subjects = ("renderer",), 0   # no pipeline source: no dataset needed
    check_config(c)
