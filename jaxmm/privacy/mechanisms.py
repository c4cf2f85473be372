"""Noise mechanisms shared by the DP methods (DP-NTK regression, DP cross-attention)."""
from __future__ import annotations

import math

import jax
import numpy as np
import jax.numpy as jnp

from jaxmm.checks import fail


def _check_tlap(sensitivity, epsilon, delta) -> None:
    """Finite positive Δ and ε (ε = 0 or ∞ has no truncated Laplace law), δ in (0, 1)."""
    for name, value in (("sensitivity", sensitivity), ("epsilon", epsilon)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not math.isfinite(value) or not value > 0:
            fail(name, "a finite positive number", value)
    if isinstance(delta, bool) or not isinstance(delta, (int, float, np.integer, np.floating)) \
            or not 0.0 < delta < 1.0:
        fail("delta", "a number in (0, 1)", delta)


def truncated_laplace_bound(*, sensitivity: float, epsilon: float, delta: float) -> float:
    """B₀ = (Δ/ε)·ln(1 + (e^ε − 1)/(2δ)): the support half-width of TLap(Δ, ε, δ)."""
    _check_tlap(sensitivity, epsilon, delta)
    b = sensitivity / epsilon
    # ln(1 + (e^ε − 1)/(2δ)) in log space (no overflow for large ε): ln x = ε + ln(1 − e^{−ε}) − ln(2δ)
    log_x = epsilon + math.log(-math.expm1(-epsilon)) - math.log(2.0 * delta)
    return b * float(np.logaddexp(0.0, log_x))


def truncated_laplace(key, shape, *, sensitivity: float, epsilon: float, delta: float, dtype=jnp.float32):
    """Exact samples of the truncated Laplace TLap(Δ, ε, δ).

    Density ∝ exp(−|z|/b) on [−B₀, B₀] with b = Δ/ε and B₀ = (Δ/ε)·ln(1 + (e^ε − 1)/(2δ)); adding it to a
    statistic of L1-sensitivity Δ is (ε, δ)-DP (Geng et al. 2020, as used by 2407.13621 and 2407.14717).
    Sampled by inverting the CDF of |z| (an exponential truncated at B₀) and a random sign.
    """
    _check_tlap(sensitivity, epsilon, delta)  # before any division: ε = 0 must not be a ZeroDivisionError
    b = sensitivity / epsilon
    bound = truncated_laplace_bound(sensitivity=sensitivity, epsilon=epsilon, delta=delta)
    try:
        shape = tuple(int(s) for s in ((shape,) if isinstance(shape, int) else shape))
    except TypeError:
        fail("shape", "a tuple of non-negative ints", repr(shape))
    if any(s < 0 for s in shape):
        fail("shape", "a tuple of non-negative ints", shape)
    if not jnp.issubdtype(dtype, jnp.floating):
        fail("dtype", "a floating dtype", dtype)
    k_mag, k_sign = jax.random.split(key)
    u = jax.random.uniform(k_mag, shape, dtype=dtype)
    # |z| = −b·ln(1 − u·(1 − e^{−B₀/b})), u ~ U[0,1): inverse CDF of Exp(1/b) conditioned on [0, B₀].
    mag = -b * jnp.log1p(-u * (-math.expm1(-bound / b)))
    sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, shape), 1.0, -1.0)
    return jnp.clip(sign * mag, -bound, bound).astype(dtype)
