"""Comparing two trainings that should be the same maths on different meshes / process counts / accumulation.

Why not bit equality, and why SGD: a different device count sums the same numbers in a different order, so
every float32 reduction may differ by a few ulps (relative ~1e-7 each, ~1e-6 after a deep reduction tree), and
that differs between machines of the same kind too. Plain SGD (with momentum) is linear in the gradient: after
T steps a parameter differs by about lr * T * |g| * 1e-6 — for this repo's test configs (lr <= 0.05, T <= 10,
|g| <= 1) well under 1e-6 (measured: 2e-8 on the tiny MLLM after 5 steps, 2x2x2 mesh vs one device). Adam is
not: a parameter whose gradient is ~0 gets the update lr * m / (sqrt(v) + eps), whose size is ~lr whatever the
gradient's scale, so a 1e-12 reordering difference in a 1e-10 gradient can move it by up to ~lr per step
(observed: 1 of 6,144 MLLM parameters 1.7e-5 off after 5 Adam steps on another machine). Hence the equality
tests train with SGD + momentum (the momentum trace is still optimizer state sharded like the params) and
use PARAM_ATOL = 1e-5: >= 10x the reordering error above, while a wrong sharding (a missing cross-device
reduction, rows of a weight permuted, another shard's values) moves parameters by ~lr * |g| per step
(>= 1e-3 here) — `test_trainer.py::test_comparison_catches_a_wrong_sharding` checks that it does fail then.
Losses are O(1) scalars: LOSS_ATOL = 1e-5 is ~100 ulps.
"""
from __future__ import annotations

import chex
import jax
import numpy as np

PARAM_ATOL = 1e-5
LOSS_ATOL = 1e-5
SGD = {"optim.name": "sgd", "optim.momentum": 0.9}  # overrides for an equality run (keep the config's lr)


def flat(params) -> dict:
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def _as_flat(tree) -> dict:
    if isinstance(tree, dict) and all(isinstance(v, np.ndarray) for v in tree.values()):
        return tree  # already {name: array}
    return flat(tree)


def assert_params_close(got, want, what: str = "") -> None:
    """Every leaf of `got` within PARAM_ATOL of `want` (trees or flat dicts); chex names the differing leaves
    (or the structures, if the names differ) and the gap."""
    chex.assert_trees_all_close(_as_flat(got), _as_flat(want), rtol=0, atol=PARAM_ATOL, custom_message=what)


def assert_losses_close(got, want, what: str = "") -> None:
    np.testing.assert_allclose(got, want, rtol=0, atol=LOSS_ATOL, err_msg=what)
