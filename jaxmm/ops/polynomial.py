"""Polynomial (truncated Taylor) features of exp: the low-rank trick behind DP cross-attention (2407.14717)
and fast tensor attention (2405.16411).

exp(s·⟨q,k⟩) = Σ_j (s⟨q,k⟩)^j / j! = Σ_α s^{|α|} q^α k^α / α!   (multinomial theorem, α ∈ ℕ^d)
Truncating at |α| ≤ g gives r = C(d+g, g) monomial features.
"""
from __future__ import annotations

import functools
import itertools
import math

import jax.numpy as jnp
import numpy as np

from jaxmm.checks import fail


@functools.lru_cache(maxsize=64)
def multi_indices(d: int, degree: int) -> np.ndarray:
    """All α ∈ ℕ^d with |α| ≤ degree, ordered by total degree: int32 array [r, d], r = C(d+degree, degree)."""
    if d < 1:
        fail("d", "a positive dimension", d)
    if degree < 0:
        fail("degree", "a non-negative integer", degree)
    rows = []
    for total in range(degree + 1):
        # compositions of `total` into d non-negative parts (stars and bars)
        for bars in itertools.combinations(range(total + d - 1), d - 1):
            parts, prev = [], -1
            for b in bars:
                parts.append(b - prev - 1)
                prev = b
            parts.append(total + d - 1 - prev - 1)
            rows.append(parts)
    out = np.asarray(rows, dtype=np.int32).reshape(-1, d)
    assert out.shape[0] == math.comb(d + degree, degree)
    return out


def monomials(x, exponents: np.ndarray):
    """x^α for every row α of `exponents`: x [..., d] -> [..., r]. Powers x^0..x^g come from repeated products
    (no power of a negative number is taken with a float exponent); each monomial gathers one power per
    coordinate and multiplies them: a handful of ops whatever r is (cheap to trace and to differentiate)."""
    exps = np.asarray(exponents)
    if x.shape[-1] != exps.shape[1]:
        fail("x", f"last dimension {exps.shape[1]} (the exponents' d)", f"shape {x.shape}")
    pows = [jnp.ones_like(x)]
    for _ in range(int(exps.max(initial=0))):
        pows.append(pows[-1] * x)
    table = jnp.stack(pows, axis=-1)  # [..., d, g+1]
    picked = table[..., np.arange(exps.shape[1])[None, :], exps]  # [..., r, d]
    return jnp.prod(picked, axis=-1)


def multinomial_weights(exponents: np.ndarray, scale: float) -> np.ndarray:
    """s^{|α|} / α! for each row α (float64 numpy)."""
    exps = np.asarray(exponents)
    fact = np.array([np.prod([math.factorial(int(p)) for p in row]) for row in exps], dtype=np.float64)
    return scale ** exps.sum(axis=1).astype(np.float64) / fact


def polynomial_features(x, degree: int, scale: float):
    """U(x)_α = sqrt(s^{|α|}/α!) · x^α, so that ⟨U(q), U(k)⟩ = Σ_{|α|≤g} s^{|α|} q^α k^α / α! ≈ exp(s·⟨q,k⟩).

    x: [..., d]; returns [..., r] with r = C(d+degree, degree). With β = |s·⟨q,k⟩| the relative error is at
    most the Taylor remainder bound ε_s = e^{2β}·β^{g+1}/(g+1)! (Lagrange form divided by exp(−β)).
    """
    if scale <= 0:
        fail("scale", "a positive number", scale)
    exps = multi_indices(x.shape[-1], degree)
    w = np.sqrt(multinomial_weights(exps, scale))
    return monomials(x, exps) * jnp.asarray(w, dtype=x.dtype)
