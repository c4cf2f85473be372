"""truncated_laplace: support, exact law (KS against the closed-form CDF), bound formula, argument errors."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxmm.privacy.mechanisms import truncated_laplace, truncated_laplace_bound


def _tlap_cdf(z, b, B):
    """CDF of the density ∝ exp(−|z|/b) on [−B, B] (float64, written from the density)."""
    z = np.clip(np.asarray(z, np.float64), -B, B)
    norm = 2.0 * b * (1.0 - np.exp(-B / b))
    neg = b * (np.exp(z / b) - np.exp(-B / b)) / norm
    pos = 0.5 + b * (1.0 - np.exp(-z / b)) / norm
    return np.where(z < 0, neg, pos)


@pytest.mark.parametrize("sens,eps,delta", [(1.0, 1.0, 1e-3), (2.0, 0.3, 1e-2), (0.5, 5.0, 1e-5)])
def test_bound_formula(sens, eps, delta):
    want = (sens / eps) * np.log(1.0 + (np.exp(eps) - 1.0) / (2.0 * delta))
    got = truncated_laplace_bound(sensitivity=sens, epsilon=eps, delta=delta)
    assert abs(got - want) <= 1e-12 * want


@pytest.mark.parametrize("sens,eps,delta", [(1.0, 1.0, 1e-3), (2.0, 0.3, 0.2), (0.5, 5.0, 1e-5)])
def test_support_and_ks(sens, eps, delta):
    B = truncated_laplace_bound(sensitivity=sens, epsilon=eps, delta=delta)
    z = np.asarray(truncated_laplace(jax.random.key(3), (40000,), sensitivity=sens, epsilon=eps, delta=delta))
    assert z.shape == (40000,) and z.dtype == np.float32
    assert np.all(np.abs(z) <= B)
    b = sens / eps
    res = stats.kstest(z.astype(np.float64), lambda t: _tlap_cdf(t, b, B))
    assert res.pvalue > 1e-3, res
    # Power check: the same statistic rejects a 30% wrong scale (long support) or a 20% narrower support
    # (short support, where the law is nearly uniform).
    wrong = (lambda t: _tlap_cdf(t, 1.3 * b, B)) if B > 2 * b else (lambda t: _tlap_cdf(t, b, 0.8 * B))
    assert stats.kstest(z.astype(np.float64), wrong).pvalue < 1e-6
    # Symmetric, mean ~ 0; variance of the truncated law in closed form.
    var = (2 * b * b - np.exp(-B / b) * (B * B + 2 * b * B + 2 * b * b)) / (1 - np.exp(-B / b))
    assert abs(z.var() / var - 1.0) < 0.05
    assert abs(z.mean()) < 5 * math.sqrt(var / z.size)


def test_cdf_reference_is_a_cdf():
    b, B = 0.7, 2.0
    t = np.linspace(-B, B, 2001)
    F = _tlap_cdf(t, b, B)
    assert abs(F[0]) < 1e-12 and abs(F[-1] - 1.0) < 1e-12 and np.all(np.diff(F) >= 0)
    dens = np.exp(-np.abs(t) / b) / (2 * b * (1 - np.exp(-B / b)))
    assert np.allclose(np.gradient(F, t)[1:-1], dens[1:-1], rtol=3e-3)  # central differences; kink at 0


def test_dtype_and_determinism():
    a = truncated_laplace(jax.random.key(0), (3, 4), sensitivity=1.0, epsilon=1.0, delta=1e-3, dtype=jnp.bfloat16)
    b = truncated_laplace(jax.random.key(0), (3, 4), sensitivity=1.0, epsilon=1.0, delta=1e-3, dtype=jnp.bfloat16)
    assert a.dtype == jnp.bfloat16 and a.shape == (3, 4)
    assert np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


@pytest.mark.parametrize("kwargs,name", [
    (dict(sensitivity=0.0, epsilon=1.0, delta=1e-3), "sensitivity"),
    (dict(sensitivity=1.0, epsilon=-1.0, delta=1e-3), "epsilon"),
    (dict(sensitivity=1.0, epsilon=1.0, delta=0.0), "delta"),
    (dict(sensitivity=1.0, epsilon=1.0, delta=1.0), "delta"),
])
def test_argument_errors(kwargs, name):
    with pytest.raises(ValueError, match=name):
        truncated_laplace(jax.random.key(0), (2,), **kwargs)
    with pytest.raises(ValueError, match=name):
        truncated_laplace_bound(**kwargs)


def test_bound_in_log_space_for_large_epsilon():
    import math

    from jaxmm.privacy.mechanisms import truncated_laplace_bound

    for eps in (0.3, 5.0, 50.0):  # agrees with the direct formula where it does not overflow
        direct = (1.0 / eps) * math.log1p(math.expm1(eps) / (2 * 1e-4))
        assert truncated_laplace_bound(sensitivity=1.0, epsilon=eps, delta=1e-4) == pytest.approx(direct, rel=1e-12)
    big = truncated_laplace_bound(sensitivity=1.0, epsilon=1000.0, delta=1e-4)
    assert big == pytest.approx((1000.0 - math.log(2e-4)) / 1000.0, rel=1e-9)


@pytest.mark.parametrize("eps", [0.0, math.inf, -1.0, math.nan])
def test_epsilon_zero_or_inf_is_a_value_error(eps):
    """Issue 25.9: ε = 0 used to raise ZeroDivisionError; ε = ∞ has no truncated Laplace law."""
    with pytest.raises(ValueError, match="epsilon: expected a finite positive number, got"):
        truncated_laplace(jax.random.key(0), (3,), sensitivity=1.0, epsilon=eps, delta=1e-3)
    with pytest.raises(ValueError, match="epsilon: expected a finite positive number"):
        truncated_laplace_bound(sensitivity=1.0, epsilon=eps, delta=1e-3)


def test_sensitivity_and_delta_checked_first():
    with pytest.raises(ValueError, match="sensitivity: expected a finite positive number, got 0"):
        truncated_laplace(jax.random.key(0), (3,), sensitivity=0.0, epsilon=1.0, delta=1e-3)
    with pytest.raises(ValueError, match=r"delta: expected a number in \(0, 1\), got 1.0"):
        truncated_laplace(jax.random.key(0), (3,), sensitivity=1.0, epsilon=1.0, delta=1.0)
