"""train/tasks/artist.py's scoring and planning helpers against closed forms (the end-to-end `:tiny` run is in
tests/train/test_configs_tiny.py, marked slow)."""
import numpy as np

from train.tasks import artist as T


def test_frechet_distance_is_the_closed_form_in_one_dimension_and_zero_on_itself():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 2.0, (400, 1)), rng.normal(-0.5, 0.5, (300, 1))
    want = (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2     # (m1-m2)^2 + (s1-s2)^2
    assert abs(T.frechet_distance(a, b) - want) < 1e-9
    x = rng.normal(size=(50, 4))
    assert abs(T.frechet_distance(x, x)) < 1e-6
    few = rng.normal(size=(3, 8))                                                 # rank-deficient covariances
    assert np.isfinite(T.frechet_distance(few, few + 1.0))


def test_planner_helpers():
    assert T.quoted_words('a red poster with white text saying "Tiger 42"') == ["tiger", "42"]
    assert T.quoted_words("no quotes") == []
    boxes = T.rule_layout(["ab", "cde"], (24, 48))
    assert boxes.shape == (2, 4) and np.all(boxes[:, 2] > boxes[:, 0]) and boxes[0, 2] < boxes[1, 0]
    assert np.all(boxes >= 0) and np.all(boxes[:, 2] <= 48) and np.all(boxes[:, 3] <= 24)
    # widths proportional to the word lengths
    np.testing.assert_allclose((boxes[1, 2] - boxes[1, 0]) / (boxes[0, 2] - boxes[0, 0]), 1.5, rtol=1e-6)
    a = np.array([[0, 0, 2, 2]], np.float32)
    assert T.box_iou(a, a) == 1.0 and T.box_iou(a, a + [1, 0, 1, 0]) == 2 / 6 and T.box_iou(a, np.zeros((0, 4))) == 0


def test_self_trained_clip_learns_well_below_chance():
    """The CLIP stand-in of the experiment, trained by `_train_clip` on 64 scenes: its InfoNCE loss must fall well
    below ln(batch) (chance: constant logits). It sat at ln 32 when images and prompts were drawn unpaired."""
    import jax

    from configs.artist import get_config
    from jaxmm.data import glyphs

    c = get_config("small")
    c.train.update(dict(steps_clip=80, clip_batch=16))
    kw = dict(height=c.data.height, width=c.data.width, size_range=tuple(c.data.size_range), min_size=c.data.min_size,
              max_words=c.data.max_words)
    data = T._arrays([glyphs.scene(i, **kw) for i in range(64)], c)
    f = T._train_clip(T._models(c)["clip"], data, c, jax.random.key(0), np.random.default_rng(0))
    chance = np.log(16)
    assert f.losses[:5].mean() > 0.9 * chance                                 # starts near chance
    assert f.losses[-10:].mean() < 0.5 * chance, f.losses[-10:]
