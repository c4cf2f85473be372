"""The DINO stand-in of train/tasks/toffee.py identifies held-out subjects (docs/results/toffee.md, Encoders).

Fast: the training pairs are two different views of one subject (the mechanism that removes the single-image
background shortcut). Slow (`pytest -m slow`, 70 CPU s measured): a short training run must identify held-out subjects
(leave-one-out 1-NN over other views and backgrounds) well above chance and above its own random initialisation; an
inert stand-in (untrained, or trained on the background as plain single-image DINO was) scores at or below chance."""
import jax
import ml_collections
import numpy as np
import pytest

from jaxmm.data import subjects as S
from train.tasks import toffee as TT


def test_dino_pairs_are_other_views_of_the_same_subject():
    subject = np.repeat(np.arange(5), 3)
    j, j2 = TT.dino_pairs(np.random.default_rng(0), subject, 400)
    assert (subject[j] == subject[j2]).all() and (j != j2).all()
    # every other view of a subject is drawn (not a fixed partner)
    assert len({(a, b) for a, b in zip(j, j2)}) == 5 * 3 * 2


def test_knn_accuracy_closed_form():
    labels = np.array([0, 0, 1, 1])
    feats = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]])
    assert TT.knn_accuracy(lambda x: (x, None), feats, labels) == 1.0
    swapped = feats[[0, 2, 1, 3]]              # each image's nearest neighbour is now of the other subject
    assert TT.knn_accuracy(lambda x: (x, None), swapped, labels) == 0.0


@pytest.mark.slow
def test_short_dino_training_identifies_held_out_subjects():
    c = ml_collections.ConfigDict({
        "seed": 0, "data": {"size": 32},
        "dino": {"width": 64, "layers": 2, "prototypes": 256, "steps": 600, "batch": 32, "lr": 2e-3, "ema": 0.99,
                 "teacher_temp": 0.04, "local_crops": 4, "koleo": 0.1}})
    data = S.subject_images(32, 6, seed=0, size=32)
    embed, _, backbone, init = TT.train_dino(c, data, jax.random.key(0), None)
    gal = S.subject_images(32, 4, seed=3000, size=32)
    rand = jax.jit(lambda im: (backbone.apply({"params": init["backbone"]}, TT._pm(im))["pooler_output"], None))
    acc, acc0 = TT.knn_accuracy(embed, gal["image"], gal["subject"]), TT.knn_accuracy(rand, gal["image"],
                                                                                     gal["subject"])
    chance = 3 / (len(gal["subject"]) - 1)
    assert acc >= 4 * chance and acc >= acc0 + 0.05, (acc, acc0, chance)
