"""Fixed-feature classification data for kernel regression (DP-NTK, configs/dp_ntk.py): `load_data(section)`
with section.source "digits" (scikit-learn's 8x8 digits), "tfds" (a TFDS image dataset embedded by a FIXED
random ReLU projection of the pixels, or the raw pixels: not the paper's ResNet-18 features) or "npy" (your own
[n, d] features and [n] labels). Labels are remapped to 0..C-1 when `classes` picks a subset."""
from __future__ import annotations

import math
import os

import numpy as np

from jaxmm.checks import fail


def _split(X, y, test_fraction, seed):
    from sklearn.model_selection import train_test_split

    return train_test_split(X, y, test_size=test_fraction, random_state=seed, stratify=y)


def _select_classes(X, y, classes):
    if not classes:
        return X, y
    keep = np.isin(y, classes)
    remap = {c: i for i, c in enumerate(classes)}
    return X[keep], np.array([remap[int(v)] for v in y[keep]])


def _take(X, y, n):
    return (X[:n], y[:n]) if n else (X, y)


def _load_npy(path, field):
    if not path:
        raise ValueError(f"config.data.{field}: expected a path to a .npy file, got {path!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"config.data.{field}: no such file {path!r}")
    return np.load(path, allow_pickle=False)


def _embed_images(images, embed, embed_dim, seed):
    x = images.reshape(images.shape[0], -1).astype(np.float32) / 255.0
    if embed == "pixels":
        return x
    # A FIXED random ReLU projection of the pixels (not the paper's ResNet-18 features).
    proj = np.random.default_rng(seed).normal(size=(x.shape[1], embed_dim)).astype(np.float32)
    return np.maximum((x - 0.5) @ proj / math.sqrt(x.shape[1]), 0.0)


def _read_tfds(cfg, split, n, classes):
    import tensorflow_datasets as tfds

    source = tfds.data_source(cfg.tfds_name, split=split, data_dir=cfg.tfds_data_dir)
    images, labels = [], []
    for i in range(len(source)):
        ex = source[i]
        label = int(ex["label"])
        if classes and label not in classes:
            continue
        images.append(np.asarray(ex["image"]))
        labels.append(label)
        if n and len(labels) >= n:
            break
    if not labels:
        raise ValueError(f"config.data: no examples of classes {tuple(classes)} in {cfg.tfds_name}:{split}")
    X = _embed_images(np.stack(images), cfg.embed, cfg.embed_dim, seed=cfg.split_seed)
    return _select_classes(X, np.asarray(labels), classes)


def load_data(cfg):
    """(X_train, y_train, X_test, y_test, num_classes) for `config.data` (labels remapped to 0..C-1)."""
    classes = tuple(int(c) for c in cfg.classes)
    if cfg.source == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        X, y = _select_classes(X.astype(np.float32), y, classes)
        if cfg.n_train:
            Xtr, Xte, ytr, yte = _split(X, y, len(y) - cfg.n_train, cfg.split_seed)
        else:
            Xtr, Xte, ytr, yte = _split(X, y, cfg.test_fraction, cfg.split_seed)
        Xte, yte = _take(Xte, yte, cfg.n_test)
    elif cfg.source == "tfds":
        if cfg.embed not in ("random_relu", "pixels"):
            fail("config.data.embed", "'random_relu' or 'pixels'", repr(cfg.embed))
        Xtr, ytr = _read_tfds(cfg, "train", cfg.n_train, classes)
        Xte, yte = _read_tfds(cfg, "test", cfg.n_test, classes)
    elif cfg.source == "npy":
        X = _load_npy(cfg.train_features, "train_features").astype(np.float32)
        y = _load_npy(cfg.train_labels, "train_labels").astype(np.int64)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            fail("config.data.train_features/train_labels", "[n, d] features and [n] labels",
                 f"shapes {X.shape} and {y.shape}")
        if cfg.test_features or cfg.test_labels:
            Xte = _load_npy(cfg.test_features, "test_features").astype(np.float32)
            yte = _load_npy(cfg.test_labels, "test_labels").astype(np.int64)
            Xtr, ytr = X, y
        else:
            Xtr, Xte, ytr, yte = _split(X, y, cfg.test_fraction, cfg.split_seed)
        if classes:
            Xtr, ytr = _select_classes(Xtr, ytr, classes)
            Xte, yte = _select_classes(Xte, yte, classes)
        Xtr, ytr = _take(Xtr, ytr, cfg.n_train)
        Xte, yte = _take(Xte, yte, cfg.n_test)
    else:
        fail("config.data.source", "'digits', 'tfds' or 'npy'", repr(cfg.source))
    num_classes = len(classes) if classes else int(max(ytr.max(), yte.max()) + 1)
    return Xtr, ytr, Xte, yte, num_classes
