"""jaxmm.ops.polynomial: multi-indices, monomials, weights and the Taylor features of exp, against float64
numpy and the Lagrange remainder bound."""
import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.ops.polynomial import monomials, multi_indices, multinomial_weights, polynomial_features


@pytest.mark.parametrize("d,g", [(1, 0), (1, 5), (2, 3), (3, 4), (5, 2)])
def test_multi_indices_count_and_content(d, g):
    a = multi_indices(d, g)
    assert a.shape == (math.comb(d + g, g), d)
    assert np.all(a >= 0) and np.all(a.sum(1) <= g)
    assert len({tuple(r) for r in a}) == a.shape[0]  # no duplicates
    expected = {t for t in itertools.product(range(g + 1), repeat=d) if sum(t) <= g}
    assert {tuple(int(v) for v in r) for r in a} == expected
    assert np.all(np.diff(a.sum(1)) >= 0)  # ordered by total degree


def test_monomials_and_weights_vs_numpy():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.5, 1.5, (7, 3))
    a = multi_indices(3, 4)
    got = np.asarray(monomials(jnp.asarray(x, jnp.float32), a))
    ref = np.prod(x[:, None, :] ** a[None], axis=-1)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    w = multinomial_weights(a, 0.7)
    ref_w = [0.7 ** r.sum() / np.prod([math.factorial(int(p)) for p in r]) for r in a]
    np.testing.assert_allclose(w, ref_w, rtol=1e-12)


@pytest.mark.parametrize("d,g,s", [(2, 3, 0.5), (3, 4, 1 / 3), (4, 2, 1.0)])
def test_inner_product_is_exactly_the_taylor_polynomial(d, g, s):
    """⟨U(q), U(k)⟩ = Σ_{j≤g} (s⟨q,k⟩)^j / j! (multinomial theorem) — exact identity vs float64."""
    rng = np.random.default_rng(1)
    q, k = rng.uniform(-1, 1, (2, 16, d))
    uq = np.asarray(polynomial_features(jnp.asarray(q, jnp.float32), g, s), np.float64)
    uk = np.asarray(polynomial_features(jnp.asarray(k, jnp.float32), g, s), np.float64)
    assert uq.shape == (16, math.comb(d + g, g))
    x = s * np.sum(q * k, axis=-1)
    taylor = sum(x ** j / math.factorial(j) for j in range(g + 1))
    np.testing.assert_allclose(np.sum(uq * uk, -1), taylor, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("g", [1, 2, 3, 5])
def test_relative_error_within_taylor_remainder(g):
    """(1 − ε_s) exp(β₀) ≤ ⟨U(q),U(k)⟩ ≤ (1 + ε_s) exp(β₀), ε_s = e^{2β}β^{g+1}/(g+1)! for |s⟨q,k⟩| ≤ β,
    on ‖q‖_∞, ‖k‖_∞ ≤ R: the per-pair ratio is checked against the per-pair bound, and the worst case against
    the global bound with β = s·d·R²."""
    d, s, R = 3, 1 / 3, 1.2
    rng = np.random.default_rng(g)
    q = rng.uniform(-R, R, (256, d))
    k = rng.uniform(-R, R, (256, d))
    q[0] = R; k[0] = R; q[1] = R; k[1] = -R  # the extremes ±β
    uq = np.asarray(polynomial_features(jnp.asarray(q, jnp.float32), g, s), np.float64)
    uk = np.asarray(polynomial_features(jnp.asarray(k, jnp.float32), g, s), np.float64)
    x = s * np.sum(q * k, -1)
    rel = np.sum(uq * uk, -1) / np.exp(x) - 1
    beta = np.abs(x)
    eps_pair = np.exp(2 * beta) * beta ** (g + 1) / math.factorial(g + 1)
    assert np.all(np.abs(rel) <= eps_pair + 1e-5)
    beta_max = s * d * R * R
    eps_s = math.exp(2 * beta_max) * beta_max ** (g + 1) / math.factorial(g + 1)
    assert np.max(np.abs(rel)) <= eps_s
    # the bound is not vacuous: at x = β_max the true error is within a factor e^{2β}·(g+2) of it
    assert abs(rel[0]) >= eps_s / (math.exp(2 * beta_max) * (g + 2))


def test_error_falls_with_degree():
    rng = np.random.default_rng(3)
    q, k = rng.uniform(-1, 1, (2, 64, 2))
    errs = []
    for g in range(1, 7):
        uq = np.asarray(polynomial_features(jnp.asarray(q, jnp.float32), g, 0.5), np.float64)
        uk = np.asarray(polynomial_features(jnp.asarray(k, jnp.float32), g, 0.5), np.float64)
        errs.append(np.max(np.abs(np.sum(uq * uk, -1) / np.exp(0.5 * np.sum(q * k, -1)) - 1)))
    assert all(b < a for a, b in zip(errs[:4], errs[1:5]))  # strictly down until float32 resolution
    assert errs[5] < 1e-4


def test_argument_checks():
    with pytest.raises(ValueError, match="scale"):
        polynomial_features(jnp.ones((2, 3)), 2, 0.0)
    with pytest.raises(ValueError, match="degree"):
        multi_indices(3, -1)
    with pytest.raises(ValueError, match="x"):
        monomials(jnp.ones((2, 3)), multi_indices(2, 2))


def test_gradient_vs_float64_analytic_including_zeros():
    """d/dx_l Σ_α c_α U_α(x) = Σ_α c_α sqrt(w_α) α_l x^{α − e_l}; x has exact zeros and negatives."""
    import jax

    x = np.array([[0.0, 1.0, -2.0], [0.5, 0.0, 3.0], [-0.7, 0.2, 0.0]])
    g, s = 4, 0.5
    a = multi_indices(3, g)
    c = np.random.default_rng(0).normal(size=a.shape[0])
    sw = np.sqrt(multinomial_weights(a, s))
    got = jax.grad(lambda z: jnp.sum(polynomial_features(z, g, s) * jnp.asarray(c, jnp.float32)))(
        jnp.asarray(x, jnp.float32))
    ref = np.zeros_like(x)
    for l in range(3):
        lower = a.copy()
        lower[:, l] = np.maximum(a[:, l] - 1, 0)
        ref[:, l] = np.sum(c * sw * a[:, l] * np.prod(x[:, None, :] ** lower[None], -1), -1)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-4)
