"""jaxmm.data.shapes: captions, the word tokenizer, rendering (object counts and colours read back from pixels
with scipy's connected components) and the attribute scoring rule."""
import numpy as np
import pytest
from scipy import ndimage

from jaxmm.data import shapes
from jaxmm.data.shapes import Group


def test_caption_parse_round_trip_and_examples():
    scene = (Group(2, 0, 0), Group(1, 2, 1))
    assert shapes.caption(scene, 0) == "two red circles left of a blue square"
    assert shapes.caption(scene, 1) == "a blue square right of two red circles"
    assert shapes.caption((None, Group(3, 3, 2)), 1) == "three yellow triangles on the right"
    ds = shapes.Shapes(200, seed=3, split="t", max_count=3)
    for i in range(200):
        np.testing.assert_array_equal(shapes.parse(ds.text(i)), ds[i]["halves"])


def test_encode_ids_and_mask():
    ids, mask = shapes.encode("a red circle on the left")
    words = ["a", "red", "circle", "on", "the", "left"]
    assert ids.tolist() == [shapes.BOS, *(shapes.VOCAB.index(w) for w in words), shapes.EOS] + [0] * 4
    assert mask.tolist() == [1] * 8 + [0] * 4
    assert shapes.encode("")[0][:3].tolist() == [shapes.BOS, shapes.EOS, shapes.PAD]
    with pytest.raises(ValueError, match="text.*unknown.*'purple'"):
        shapes.encode("a purple circle")


@pytest.mark.parametrize("size", [32, 16])
def test_render_counts_colours_and_sides(size):
    ds = shapes.Shapes(60, seed=0, split="train", size=size, max_count=3)
    colours = np.array(list(shapes.COLORS.values()))
    for i in range(60):
        e = ds[i]
        img = e["image"]
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        for side, (count, colour, _) in enumerate(e["halves"]):
            half = img[:, side * size // 2:(side + 1) * size // 2]
            lit = half.any(-1)
            if count == 0:
                assert not lit.any()
                continue
            assert ndimage.label(lit)[1] == count, (ds.text(i), side)
            np.testing.assert_array_equal(np.unique(half[lit], axis=0), colours[colour][None])
        assert e["multi"] == (e["halves"][:, 0] > 0).all()


def test_examples_are_deterministic_and_splits_differ():
    a, b = shapes.Shapes(5, seed=1, split="train"), shapes.Shapes(5, seed=1, split="eval")
    np.testing.assert_array_equal(a[4]["image"], shapes.Shapes(5, seed=1, split="train")[4]["image"])
    assert any(not np.array_equal(a[i]["image"], b[i]["image"]) for i in range(5))


def test_attribute_hits_by_hand():
    truth = np.array([[[2, 0, 0], [0, -1, -1]],          # single: two red circles on the left
                      [[1, 1, 2], [2, 3, 1]]])           # multi
    pred = np.array([[[2, 0, 1], [1, 0, 0]],             # count ok, colour ok, shape wrong, position wrong
                     [[1, 1, 2], [1, 3, 1]]])            # right count wrong
    hits = shapes.attribute_hits(pred, truth)
    np.testing.assert_array_equal(hits["count"], [[1, np.nan], [1, 0]])
    np.testing.assert_array_equal(hits["shape"], [[0, np.nan], [1, 1]])
    np.testing.assert_array_equal(hits["position"], [[0], [np.nan]])
    acc = shapes.attribute_accuracy(pred, truth)
    assert acc["count"] == pytest.approx(2 / 3) and acc["position"] == 0.0
    assert acc["attribute_accuracy"] == pytest.approx(7 / 10)   # 4 attributes + 6 attributes, 7 hits
    assert shapes.attribute_accuracy(truth, truth)["attribute_accuracy"] == 1.0
    assert "position" not in shapes.attribute_accuracy(pred[1:], truth[1:])   # multi only: no NaN entry


def test_bad_input_errors():
    with pytest.raises(ValueError, match="max_count"):
        shapes.Shapes(3, max_count=4)
    with pytest.raises(ValueError, match="size"):
        shapes.Shapes(3, size=15)
    with pytest.raises(ValueError, match="text"):
        shapes.parse("a red circle somewhere")
    with pytest.raises(ValueError, match="pred"):
        shapes.attribute_hits(np.zeros((2, 3)), np.zeros((2, 2, 3)))
