"""DPTree family: exact range sums / distance identities with the noise off (vs float64 numpy), unbiased and
bounded noise with it on, sensitivity bounds, clipping counted, pytree behaviour."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.ops.polynomial import polynomial_features
from jaxmm.privacy.dp_tree import (DPTree, DPTreeDistance, DPTreeHighDim, DPTreeSoftmax, clip_count, feature_bounds,
                                   tree_depth, truncated_laplace_variance)
from jaxmm.privacy.mechanisms import truncated_laplace_bound

INF = math.inf


def test_depth_is_ceil_log2_plus_one():
    for n in range(1, 40):
        assert tree_depth(n) == math.ceil(math.log2(n)) + 1


@pytest.mark.parametrize("shape", [(13,), (13, 3), (1,), (16, 2)])
def test_range_sums_exact_without_noise(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape)
    t = DPTree.build(jax.random.key(0), jnp.asarray(x, jnp.float32), sensitivity=1.0, epsilon=INF, delta=1e-5)
    n = shape[0]
    lo, hi = np.array([(a, b) for a in range(n + 1) for b in range(a, n + 1)]).T
    got = np.asarray(t.range_sum(jnp.asarray(lo), jnp.asarray(hi)))
    csum = np.concatenate([np.zeros((1,) + shape[1:]), np.cumsum(x, axis=0)])
    np.testing.assert_allclose(got, csum[hi] - csum[lo], atol=1e-5)
    assert t.nodes.shape == (2 * (1 << (t.depth - 1)) - 1, shape[1] if len(shape) == 2 else 1)


def test_tlap_variance_closed_form_vs_quadrature():
    b_sens, eps, delta = 2.0, 0.7, 1e-3
    bound = truncated_laplace_bound(sensitivity=b_sens, epsilon=eps, delta=delta)
    z = np.linspace(-bound, bound, 400001)
    dens = np.exp(-np.abs(z) * eps / b_sens)
    var = np.trapezoid(z * z * dens, z) / np.trapezoid(dens, z)
    assert truncated_laplace_variance(sensitivity=b_sens, epsilon=eps, delta=delta) == pytest.approx(var, rel=1e-4)


def test_range_sums_unbiased_and_bounded_with_noise():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, 11).astype(np.float32)
    m, eps, delta, sens = 2000, 2.0, 1e-4, 1.0
    build = jax.vmap(lambda k: DPTree.build(k, jnp.asarray(x), sensitivity=sens, epsilon=eps, delta=delta))
    trees = build(jax.random.split(jax.random.key(3), m))
    exact = DPTree.build(jax.random.key(0), jnp.asarray(x), sensitivity=sens, epsilon=INF, delta=delta)
    # per-node noise: bounded by B0(Δ, ε/L, δ/L), std matches the closed form
    noise = np.asarray(trees.nodes - exact.nodes[None])
    L = exact.depth
    assert np.all(np.abs(noise) <= truncated_laplace_bound(sensitivity=sens, epsilon=eps / L, delta=delta / L) + 1e-4)
    std = trees.node_noise_std
    assert np.std(noise) == pytest.approx(std, rel=0.04)
    lo = jnp.array([0, 0, 3, 5, 10])
    hi = jnp.array([11, 1, 9, 6, 11])
    got = np.asarray(jax.vmap(lambda t: t.range_sum(lo, hi))(trees))
    truth = np.array([x[a:b].sum() for a, b in zip(np.asarray(lo), np.asarray(hi))])
    se = got.std(0) / math.sqrt(m)
    assert np.all(np.abs(got.mean(0) - truth) < 5 * se)
    # ≤ 2L noisy nodes per range query
    assert np.all(got.std(0) <= math.sqrt(2 * L) * std * 1.05)


def test_tree_is_pytree_and_jits():
    t = DPTree.build(jax.random.key(0), jnp.arange(5.0), sensitivity=1.0, epsilon=1.0, delta=1e-5)
    leaves, treedef = jax.tree_util.tree_flatten(t)
    assert len(leaves) == 1
    t2 = jax.tree_util.tree_unflatten(treedef, leaves)
    f = jax.jit(lambda tr, a, b: tr.range_sum(a, b))
    np.testing.assert_allclose(f(t2, 1, 4), t.range_sum(1, 4), rtol=1e-6)
    t3 = DPTree.build(jax.random.key(0), jnp.arange(5.0), sensitivity=1.0, epsilon=1.0, delta=1e-5)
    np.testing.assert_array_equal(t.nodes, t3.nodes)  # same key, same release


def test_argument_checks():
    with pytest.raises(ValueError, match="values"):
        DPTree.build(jax.random.key(0), jnp.ones((2, 2, 2)), sensitivity=1.0, epsilon=1.0, delta=1e-5)
    with pytest.raises(ValueError, match="epsilon"):
        DPTree.build(jax.random.key(0), jnp.ones(3), sensitivity=1.0, epsilon=0.0, delta=1e-5)
    with pytest.raises(ValueError, match="delta"):
        DPTree.build(jax.random.key(0), jnp.ones(3), sensitivity=1.0, epsilon=1.0, delta=0.0)
    with pytest.raises(ValueError, match="w"):
        DPTreeDistance.build(jax.random.key(0), jnp.ones(3), jnp.ones(4), lo=0, hi=1, weight_bound=1,
                             epsilon=1.0, delta=1e-5, n_bins=4)


def _dist_ref(y, x, w):
    return np.sum(w[None] * np.abs(y[:, None] - x[None])[..., None], axis=1)


def test_distance_identity_exact_without_noise():
    rng = np.random.default_rng(2)
    n, nb, lo, hi = 40, 16, -1.0, 3.0
    x = rng.uniform(lo, hi, n)
    w = rng.uniform(-2, 2, (n, 2))
    t = DPTreeDistance.build(jax.random.key(0), jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), lo=lo,
                             hi=hi, weight_bound=2.0, epsilon=INF, delta=1e-5, n_bins=nb)
    assert not any("clip" in f.name for f in dataclasses.fields(t))  # no noise-free count in the release
    edges = lo + (hi - lo) * np.arange(nb + 1) / nb
    outside = np.array([-5.0, lo - 0.1, hi + 0.5, 10.0])
    y = np.concatenate([edges, outside])
    np.testing.assert_allclose(np.asarray(t.query(jnp.asarray(y, jnp.float32))), _dist_ref(y, x, w),
                               rtol=2e-5, atol=2e-4)
    np.testing.assert_allclose(np.asarray(t.total_weight()), w.sum(0), atol=1e-4)
    # inside a bin: error ≤ 2·(bin width)·Σ_{i in y's bin}|w_i|
    yi = rng.uniform(lo, hi, 50)
    err = np.abs(np.asarray(t.query(jnp.asarray(yi, jnp.float32))) - _dist_ref(yi, x, w))
    width = (hi - lo) / nb
    same_bin = np.floor((yi - lo) / width)[:, None] == np.floor((x - lo) / width)[None]
    bound = 2 * width * (same_bin[..., None] * np.abs(w)[None]).sum(1)
    assert np.all(err <= bound + 2e-4)


def test_distance_sensitivity_bound_holds_and_is_attained():
    """Leaf arrays of neighbouring datasets differ by ≤ Δ = 4ΣW in L1; a worst case comes close."""
    def leaves(x, w):
        return np.asarray(DPTreeDistance.build(jax.random.key(0), jnp.asarray(x, jnp.float32),
                                               jnp.asarray(w, jnp.float32), lo=0.0, hi=1.0, weight_bound=1.0,
                                               epsilon=INF, delta=1e-5, n_bins=8).tree.nodes[:8])
    rng = np.random.default_rng(4)
    x, w = rng.uniform(0, 1, 10), rng.uniform(-1, 1, 10)
    worst = 0.0
    for i in range(20):
        x2, w2 = x.copy(), w.copy()
        x2[0], w2[0] = (rng.uniform(0, 1), rng.uniform(-1, 1)) if i else (0.0, -1.0)
        if i == 0:
            x[0], w[0] = 0.9999, 1.0
        worst = max(worst, np.abs(leaves(x, w) - leaves(x2, w2)).sum())
    assert worst <= 4.0 + 1e-5
    assert worst >= 3.0  # (x=1, w=1) vs (x=0, w=−1): counts 2, moments ≈ 1


def test_distance_clips_and_reports():
    x = jnp.array([0.2, 1.5, -0.3, 0.5])
    w = jnp.array([1.0, 0.5, 3.0, -1.0])
    t = DPTreeDistance.build(jax.random.key(0), x, w, lo=0.0, hi=1.0, weight_bound=1.0, epsilon=INF, delta=1e-5,
                             n_bins=4)
    # 1.5 and −0.3 in x, 3.0 in w: counted only by the private debug helper, not stored in the release
    assert int(clip_count(x, 0.0, 1.0)) + int(clip_count(w, -1.0, 1.0)) == 3
    assert not any("clip" in f.name for f in dataclasses.fields(t))
    xc, wc = np.clip(np.asarray(x), 0, 1), np.clip(np.asarray(w), -1, 1)
    y = np.array([0.0, 0.25, 1.0])
    np.testing.assert_allclose(np.asarray(t.query(jnp.asarray(y))), _dist_ref(y, xc, wc[:, None])[:, 0], atol=1e-5)


def test_distance_unbiased_with_noise():
    rng = np.random.default_rng(5)
    x, w = rng.uniform(0, 1, 30), rng.uniform(-1, 1, 30)
    m = 1500
    build = jax.vmap(lambda k: DPTreeDistance.build(k, jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
                                                    lo=0.0, hi=1.0, weight_bound=1.0, epsilon=3.0, delta=1e-4,
                                                    n_bins=8))
    y = jnp.array([0.0, 0.5, 0.875])
    got = np.asarray(jax.vmap(lambda t: t.query(y))(build(jax.random.split(jax.random.key(1), m))))
    truth = _dist_ref(np.asarray(y), x, w[:, None])[:, 0]
    assert np.all(np.abs(got.mean(0) - truth) < 5 * got.std(0) / math.sqrt(m))


def test_high_dim_sum_of_coordinates_exact_without_noise():
    rng = np.random.default_rng(6)
    X = rng.uniform(-1, 1, (25, 3))
    w = rng.uniform(-1, 1, (25, 2))
    t = DPTreeHighDim.build(jax.random.key(0), jnp.asarray(X, jnp.float32), jnp.asarray(w, jnp.float32), lo=-1.0,
                            hi=1.0, weight_bound=1.0, epsilon=INF, delta=1e-5, n_bins=8)
    grid = -1 + 2 * rng.integers(0, 9, (6, 3)) / 8  # bin edges per coordinate
    ref = np.sum(w[None] * np.abs(grid[:, None] - X[None]).sum(-1)[..., None], axis=1)
    np.testing.assert_allclose(np.asarray(t.query(jnp.asarray(grid, jnp.float32))), ref, rtol=2e-5, atol=2e-4)
    assert t.memory_floats == 3 * 15 * 4


def test_softmax_tree_equals_polynomial_kernel_sums_without_noise():
    rng = np.random.default_rng(7)
    d, g, s = 2, 3, 0.5
    K = rng.uniform(-1, 1, (30, d))
    w = rng.uniform(-1, 1, (30, 3))
    q = rng.uniform(-1, 1, (5, d))
    t = DPTreeSoftmax.build(jax.random.key(0), jnp.asarray(K, jnp.float32), jnp.asarray(w, jnp.float32),
                            bound_k=1.0, weight_bound=1.0, degree=g, scale=s, epsilon=INF, delta=1e-5, n_bins=16)
    phi_k = np.asarray(polynomial_features(jnp.asarray(K), g, s), np.float64)
    phi_q = np.asarray(polynomial_features(jnp.asarray(q), g, s), np.float64)
    np.testing.assert_allclose(np.asarray(t.feature_sums()), phi_k.T @ w, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(t.query(jnp.asarray(q, jnp.float32))), phi_q @ phi_k.T @ w, rtol=1e-4,
                               atol=1e-4)
    assert np.all(np.abs(phi_k) <= feature_bounds(d, g, s, 1.0)[None] + 1e-12)
    assert not any("clip" in f.name for f in dataclasses.fields(t))
