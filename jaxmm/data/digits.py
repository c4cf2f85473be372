"""scikit-learn's bundled 8x8 digits as a small image-classification set (offline; sklearn imported on use)."""
from __future__ import annotations

import numpy as np


def digits_data(classes, split: str, seed: int = 0, eval_fraction: float = 0.3) -> list[dict]:
    """scikit-learn digits of the given classes as [{"image": float32 [8, 8, 1] in [-1, 1], "label": int32}], the
    label being the index in `classes`. A fixed (seed 0) stratified split: the last `eval_fraction` of each class
    is the eval set."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    out = []
    for i, c in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(d.target == c))
        cut = int(round(len(idx) * (1 - eval_fraction)))
        for j in (idx[:cut] if split == "train" else idx[cut:]):
            out.append({"image": (d.images[j][..., None] / 8.0 - 1.0).astype(np.float32), "label": np.int32(i)})
    return out
