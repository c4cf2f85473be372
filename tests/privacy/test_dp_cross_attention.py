"""DP cross-attention: noise-free equality with float64 polynomial attention, the ε_s error bound against
exact attention, clipping enforced and reported, sensitivity, both numerator and denominator noised, the
1/n and 1/ε rates at toy size, an empirical privacy audit, and post-processing (adaptive queries)."""
import dataclasses
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.ops.polynomial import polynomial_features
from jaxmm.privacy.cross_attention import (METHODS, clipping_report, clopper_pearson, dp_cross_attention,
                                              dp_cross_attention_init, dp_cross_attention_parts,
                                              empirical_epsilon, exact_cross_attention, llr_scores,
                                              release_feature_sums, release_sensitivity, released_vector)

INF = math.inf


def _data(n, d, d_v, seed=0, R=1.0, Rw=1.0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-R, R, (n, d)).astype(np.float32), rng.uniform(-Rw, Rw, (n, d_v)).astype(np.float32),
            rng.uniform(-R, R, (32, d)).astype(np.float32))


def _poly_ref(Q, K, V, g, s):
    """float64 numpy polynomial attention Σ_i T_g(s⟨q,k_i⟩) v_i / Σ_i T_g(s⟨q,k_i⟩)."""
    x = s * np.asarray(Q, np.float64) @ np.asarray(K, np.float64).T
    t = sum(x ** j / math.factorial(j) for j in range(g + 1))
    return (t @ np.asarray(V, np.float64)) / t.sum(-1, keepdims=True)


@pytest.mark.parametrize("method", METHODS)
def test_noise_free_equals_polynomial_attention_and_eps_s_bound(method):
    d, d_v, g, R = 2, 3, 3, 1.0
    K, V, Q = _data(64, d, d_v)
    st = dp_cross_attention_init(jax.random.key(0), K, V, epsilon=INF, delta=1e-5, bound_qk=R, bound_v=1.0,
                                 degree=g, method=method)
    out = np.asarray(dp_cross_attention(st, Q, clip_output=False))
    poly = _poly_ref(Q, K, V, g, 1 / d)
    np.testing.assert_allclose(out, poly, atol=2e-5)
    # relative error at ε = ∞ is the polynomial error: |poly − exact| ≤ 2ε_s·R_w/(1 − ε_s), β = s·d·R²
    beta = (1 / d) * d * R * R
    eps_s = math.exp(2 * beta) * beta ** (g + 1) / math.factorial(g + 1)
    exact = np.asarray(exact_cross_attention(jnp.asarray(Q), jnp.asarray(K), jnp.asarray(V)), np.float64)
    err = np.max(np.abs(poly - exact))
    assert err <= 2 * eps_s / (1 - eps_s)
    assert err > 0  # the noise-free mechanism is the polynomial, not exact attention


def test_exact_cross_attention_vs_numpy():
    K, V, Q = _data(10, 4, 2)
    x = (Q.astype(np.float64) @ K.T.astype(np.float64)) / 4
    p = np.exp(x - x.max(-1, keepdims=True))
    ref = (p / p.sum(-1, keepdims=True)) @ V
    np.testing.assert_allclose(np.asarray(exact_cross_attention(jnp.asarray(Q), jnp.asarray(K), jnp.asarray(V))),
                               ref, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_clipping_enforced_and_reported_privately(method):
    K, V, Q = _data(16, 2, 2, R=1.0)
    K2, V2 = K.copy(), V.copy()
    K2[0, 0], K2[3, 1], V2[5, 0] = 4.0, -2.5, 9.0
    kw = dict(epsilon=INF, delta=1e-5, bound_qk=1.0, bound_v=1.0, degree=2, method=method)
    with pytest.warns(UserWarning, match="clipped; clipping_report") as rec:
        st = dp_cross_attention_init(jax.random.key(0), K2, V2, **kw)
    assert not any(ch.isdigit() for ch in str(rec[0].message).split("bound")[0])  # no counts in the warning
    # the counts live only in the private debug report computed from the private data...
    assert clipping_report(K2, V2, bound_qk=1.0, bound_v=1.0) == {
        "n_clipped_k": 2, "n_clipped_v": 1, "n_entries_k": 32, "n_entries_v": 32, "private": True}
    # ...and nowhere in the released state (issue 12: they were released without noise)
    leaves = jax.tree_util.tree_leaves_with_path(st)
    assert not any("clip" in jax.tree_util.keystr(p) for p, _ in leaves)
    assert not any("clip" in f.name for f in dataclasses.fields(st))
    if method == "tree":
        assert not any("clip" in f.name for f in dataclasses.fields(st.tree))
        assert not any("clip" in f.name for f in dataclasses.fields(st.tree.features.trees))
    ref = dp_cross_attention_init(jax.random.key(0), np.clip(K2, -1, 1), np.clip(V2, -1, 1), **kw)
    np.testing.assert_allclose(np.asarray(dp_cross_attention(st, Q)), np.asarray(dp_cross_attention(ref, Q)),
                               atol=1e-6)
    # the released arrays are the same pytree structure whether or not anything was clipped
    assert jax.tree_util.tree_structure(st) == jax.tree_util.tree_structure(ref)
    jitted = jax.jit(lambda k, kk, vv: dp_cross_attention_init(k, kk, vv, **kw))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jitted(jax.random.key(0), K2, V2)


@pytest.mark.parametrize("where", ["K", "V"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_inputs_raise(where, bad):
    """Issue 25.9: a NaN in K used to only warn (NaN passes a clip)."""
    K, V, _ = _data(8, 2, 2)
    (K if where == "K" else V)[3, 1] = bad
    with pytest.raises(ValueError, match=f"{where}: expected finite entries, got 1 NaN/inf entries"):
        dp_cross_attention_init(jax.random.key(0), K, V, epsilon=1.0, delta=1e-5, bound_qk=1.0, bound_v=1.0,
                                degree=2)


def test_empty_context_and_fractional_degree_raise():
    """Issue 25.9: n = 0 and degree 2.5 used to be accepted."""
    K, V, _ = _data(8, 2, 2)
    kw = dict(epsilon=1.0, delta=1e-5, bound_qk=1.0, bound_v=1.0)
    with pytest.raises(ValueError, match=r"K: expected at least one row \(n ≥ 1 private keys\), got shape \(0, 2\)"):
        dp_cross_attention_init(jax.random.key(0), K[:0], V[:0], degree=2, **kw)
    for deg in (2.5, -1, True):
        with pytest.raises(ValueError, match=f"degree: expected a non-negative integer .*got {deg!r}"):
            dp_cross_attention_init(jax.random.key(0), K, V, degree=deg, **kw)


def test_release_sensitivity_bounds_neighbours():
    d, d_v, g, s, R, Rw = 2, 2, 3, 0.5, 1.0, 1.0
    delta_a = release_sensitivity(d, d_v, degree=g, scale=s, bound_qk=R, bound_v=Rw)

    rng = np.random.default_rng(0)
    m = 256  # random extreme neighbour pairs (row 0 replaced), plus the pair k = k' = R·1, v' = −v
    k1, k2 = rng.choice([-R, R], (m, d)), rng.choice([-R, R], (m, d))
    v1, v2 = rng.choice([-Rw, Rw], (m, d_v)), rng.choice([-Rw, Rw], (m, d_v))
    k1[0], k2[0], v1[0], v2[0] = R, R, Rw, -Rw
    phi1, phi2 = (np.asarray(polynomial_features(jnp.asarray(k), g, s), np.float64) for k in (k1, k2))
    w1, w2 = (np.concatenate([v, np.ones((m, 1))], 1) for v in (v1, v2))
    # the other rows cancel in A(D) − A(D'), so only row 0's contribution matters
    diffs = np.abs(phi1[:, :, None] * w1[:, None] - phi2[:, :, None] * w2[:, None]).sum((1, 2))
    worst = diffs.max()
    assert worst <= delta_a * (1 + 1e-9)
    assert worst >= delta_a * d_v * Rw / (d_v * Rw + 1) * (1 - 1e-6)  # k = k' = R·1, v' = −v reaches this


@pytest.mark.parametrize("method", METHODS)
def test_numerator_and_denominator_both_noised(method):
    K, V, Q = _data(32, 2, 2)
    kw = dict(delta=1e-5, bound_qk=1.0, bound_v=1.0, degree=2, method=method)
    clean = dp_cross_attention_init(jax.random.key(0), K, V, epsilon=INF, **kw)
    noisy = dp_cross_attention_init(jax.random.key(0), K, V, epsilon=1.0, **kw)
    diff = np.abs(np.asarray(noisy.sums()) - np.asarray(clean.sums()))
    assert np.all(diff.max(axis=0) > 1e-3)  # every column, the last (denominator) included
    num_c, den_c = dp_cross_attention_parts(clean, Q)
    num_n, den_n = dp_cross_attention_parts(noisy, Q)
    assert np.all(np.abs(np.asarray(den_n - den_c)) > 0) and np.all(np.abs(np.asarray(num_n - num_c)) > 0)


def _mean_error(n, epsilon, method, seeds=32, n_bins=None):
    K, V, Q = _data(n, 2, 2, seed=n)
    poly = _poly_ref(Q, K, V, 2, 0.5)
    kw = dict(epsilon=epsilon, delta=1e-5, bound_qk=1.0, bound_v=1.0, degree=2, method=method, n_bins=n_bins)
    f = jax.jit(jax.vmap(lambda k: dp_cross_attention(dp_cross_attention_init(k, K, V, **kw), Q,
                                                       clip_output=False)))
    return float(np.mean(np.abs(np.asarray(f(jax.random.split(jax.random.key(1), seeds))) - poly)))


def test_error_rate_one_over_n_and_one_over_epsilon():
    ns = [512, 2048, 8192]
    e_n = [_mean_error(n, 1.0, "release") for n in ns]
    slope_n = np.polyfit(np.log(ns), np.log(e_n), 1)[0]
    assert -1.15 < slope_n < -0.85, (e_n, slope_n)
    eps = [1.0, 4.0, 16.0]
    e_e = [e_n[1]] + [_mean_error(2048, e, "release") for e in eps[1:]]
    slope_e = np.polyfit(np.log(eps), np.log(e_e), 1)[0]
    assert -1.15 < slope_e < -0.85, (e_e, slope_e)
    # the tree (fixed bins, so fixed depth): same 1/n rate
    ns_t = [4096, 65536]
    e_t = [_mean_error(n, 8.0, "tree", seeds=16, n_bins=16) for n in ns_t]
    slope_t = np.polyfit(np.log(ns_t), np.log(e_t), 1)[0]
    assert -1.2 < slope_t < -0.8, (e_t, slope_t)


def _audit(release_fn, epsilon, delta, m=10000):
    """Neighbours differ in row 0: (k=R·1, v=R_w) vs (k=R·1, v=−R_w)."""
    K, V, _ = _data(4, 1, 1, seed=3)
    K[0], V[0] = 1.0, 1.0
    K2, V2 = K.copy(), V.copy()
    V2[0] = -1.0
    mu = np.asarray(release_fn(jax.random.key(0), K, V, INF))
    mu2 = np.asarray(release_fn(jax.random.key(0), K2, V2, INF))
    f = jax.jit(jax.vmap(lambda k, kk, vv: release_fn(k, kk, vv, epsilon), in_axes=(0, None, None)))
    keys = jax.random.split(jax.random.key(7), 2 * m)
    s1 = llr_scores(np.asarray(f(keys[:m], K, V)), mu, mu2)
    s2 = llr_scores(np.asarray(f(keys[m:], K2, V2)), mu, mu2)
    return empirical_epsilon(s1, s2, delta=delta)


def test_privacy_audit_stays_within_epsilon_and_has_power():
    eps, delta = 1.0, 1e-5
    kw = dict(delta=delta, bound_qk=1.0, bound_v=1.0, degree=2, method="release")
    ok = _audit(lambda k, K, V, e: released_vector(dp_cross_attention_init(k, K, V, epsilon=e, **kw)), eps, delta)
    assert ok["eps_lower"] <= eps
    assert ok["eps_point"] > 0.2 * eps  # the test sees the mechanism (shift is d_v/(d_v+1) = 1/2 of Δ)
    # a mechanism calibrated to Δ/8 (e.g. forgetting part of the sensitivity) is caught
    sens = release_sensitivity(1, 1, degree=2, scale=1.0, bound_qk=1.0, bound_v=1.0)

    def broken(k, K, V, e):
        w = jnp.concatenate([jnp.asarray(V), jnp.ones((V.shape[0], 1))], 1)
        phi = polynomial_features(jnp.asarray(K), 2, 1.0)
        return jnp.ravel(release_feature_sums(k, phi, w, sensitivity=sens / 8, epsilon=e, delta=delta))

    bad = _audit(broken, eps, delta)
    assert bad["eps_lower"] > eps


def test_audit_catches_an_unnoised_denominator():
    """Neighbours that differ in a key move the denominator sums; leaving them un-noised is caught."""
    eps, delta = 1.0, 1e-5
    K, V, _ = _data(4, 1, 1, seed=3)
    K[0], V[0] = 1.0, 0.0
    K2 = K.copy()
    K2[0] = -1.0
    sens = release_sensitivity(1, 1, degree=2, scale=1.0, bound_qk=1.0, bound_v=1.0)

    def release(k, KK, VV, e, noise_den):
        w = jnp.concatenate([jnp.asarray(VV), jnp.ones((VV.shape[0], 1))], 1)
        phi = polynomial_features(jnp.asarray(KK), 2, 1.0)
        out = release_feature_sums(k, phi, w, sensitivity=sens, epsilon=e, delta=delta)
        return jnp.ravel(out if noise_den else out.at[:, -1].set((phi.T @ w)[:, -1]))

    for noise_den, caught in ((True, False), (False, True)):
        fn = lambda k, KK, VV, e: release(k, KK, VV, e, noise_den)  # noqa: E731
        mu, mu2 = np.asarray(fn(None, K, V, INF)), np.asarray(fn(None, K2, V, INF))
        f = jax.jit(jax.vmap(lambda k, kk: fn(k, kk, V, eps), in_axes=(0, None)))
        keys = jax.random.split(jax.random.key(9), 8000)
        r = empirical_epsilon(llr_scores(np.asarray(f(keys[:4000], K)), mu, mu2),
                              llr_scores(np.asarray(f(keys[4000:], K2)), mu, mu2), delta=delta)
        assert (r["eps_lower"] > eps) == caught, r


def test_clopper_pearson_covers_and_matches_beta_quantiles():
    lo, hi = clopper_pearson(5, 100)
    assert lo == pytest.approx(0.016431879182052, rel=1e-6) and hi == pytest.approx(0.112834911102963, rel=1e-6)
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0


@pytest.mark.parametrize("method", METHODS)
def test_queries_are_post_processing(method):
    """Adaptive or repeated queries read the same release: the answer to q never changes."""
    K, V, Q = _data(32, 2, 2)
    st = dp_cross_attention_init(jax.random.key(0), K, V, epsilon=1.0, delta=1e-5, bound_qk=1.0, bound_v=1.0,
                                 degree=2, method=method)
    a1 = np.asarray(dp_cross_attention(st, Q[:4]))
    nxt = jnp.clip(jnp.asarray(a1[:, :2]) * 3, -1, 1)  # a query built from earlier answers
    dp_cross_attention(st, nxt)
    np.testing.assert_array_equal(np.asarray(dp_cross_attention(st, Q[:4])), a1)
    st2 = dp_cross_attention_init(jax.random.key(0), K, V, epsilon=1.0, delta=1e-5, bound_qk=1.0, bound_v=1.0,
                                  degree=2, method=method)
    np.testing.assert_array_equal(np.asarray(released_vector(st2)), np.asarray(released_vector(st)))
    assert np.all(np.abs(a1) <= 1.0)


def test_argument_checks():
    K, V, Q = _data(8, 2, 2)
    kw = dict(epsilon=1.0, delta=1e-5, bound_qk=1.0, bound_v=1.0, degree=2)
    with pytest.raises(ValueError, match="V"):
        dp_cross_attention_init(jax.random.key(0), K, V[:5], **kw)
    with pytest.raises(ValueError, match="method"):
        dp_cross_attention_init(jax.random.key(0), K, V, method="nope", **kw)
    with pytest.raises(ValueError, match="bound_qk"):
        dp_cross_attention_init(jax.random.key(0), K, V, **{**kw, "bound_qk": 0.0})
    st = dp_cross_attention_init(jax.random.key(0), K, V, **kw)
    with pytest.raises(ValueError, match="Q"):
        dp_cross_attention(st, Q[:, :1])


def test_linen_layer_matches_exact_attention_reference_and_reports_clipping():
    from jaxmm.privacy.layers import DPCrossAttention

    x = jax.random.normal(jax.random.key(0), (2, 5, 6))
    c = jax.random.normal(jax.random.key(1), (2, 7, 4))
    m = DPCrossAttention(num_heads=2, head_dim=4, epsilon=INF, degree=6, squash=False, bound_qk=10.0,
                         bound_v=10.0)
    p = m.init(jax.random.key(2), x, c)
    y, inter = jax.jit(lambda pp: m.apply(pp, x, c, mutable=["intermediates"]))(p)
    P = jax.tree_util.tree_map(np.asarray, p["params"])
    proj = lambda a, n: np.einsum("bld,dhk->blhk", np.asarray(a), P[n]["kernel"]) + P[n]["bias"]  # noqa: E731
    q, k, v = 10 * np.tanh(proj(x, "query") / 10), proj(c, "key"), proj(c, "value")
    logits = np.einsum("bqhk,bnhk->bhqn", q, k) / 4
    a = np.exp(logits - logits.max(-1, keepdims=True))
    o = np.einsum("bhqn,bnhk->bqhk", a / a.sum(-1, keepdims=True), v)
    ref = np.einsum("bqhk,hko->bqo", o, P["out"]["kernel"]) + P["out"]["bias"]
    np.testing.assert_allclose(np.asarray(y), ref, atol=2e-3)  # degree-6 Taylor of exp on |β| ≤ ~1
    assert int(inter["intermediates"]["n_clipped_k"][0]) == 0
    # tight bounds without squashing: entries get clipped and the counts come out
    tight = DPCrossAttention(num_heads=2, head_dim=4, epsilon=1.0, squash=False, bound_qk=0.1, bound_v=0.1)
    _, inter = jax.jit(lambda pp: tight.apply(pp, x, c, rngs={"dp": jax.random.key(3)},
                                              mutable=["intermediates"]))(p)
    assert int(inter["intermediates"]["n_clipped_k"][0]) > 0 and int(inter["intermediates"]["n_clipped_v"][0]) > 0
    # gradients flow through the (noise-free) layer
    g = jax.jit(jax.grad(lambda pp: jnp.sum(m.apply(pp, x, c) ** 2)))(p)
    assert all(np.all(np.isfinite(np.asarray(t))) for t in jax.tree_util.tree_leaves(g))
