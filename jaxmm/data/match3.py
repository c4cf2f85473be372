"""Match3 (tensor attention, 2405.16411 Sec. 1 [reconstruction of the task's data]): sequences of ints in
[0, M); position i is positive iff x_i + x_j + x_k = 0 (mod M) for some other positions j, k."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def match3_labels(x, modulus, distinct=True):
    """x [..., n] ints in [0, M): label_i = 1 iff x_i + x_j + x_k ≡ 0 (mod M) for some positions j, k
    (distinct=True: i, j, k pairwise different, so no pair or single-token shortcut exists). NumPy or JAX."""
    xp = jnp if isinstance(x, jax.Array) else np
    n = x.shape[-1]
    s = (x[..., :, None, None] + x[..., None, :, None] + x[..., None, None, :]) % modulus
    hit = s == 0
    if distinct:
        i, j, k = np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij")
        hit = hit & xp.asarray((i != j) & (j != k) & (i != k))
    return xp.any(hit, axis=(-1, -2)).astype(xp.int32)


def pick_modulus(n, rng, distinct, target=0.5):
    """Smallest M whose positive rate is at or below `target` (estimated on 2000 random sequences)."""
    for m in range(3, 10 * n * n):
        x = rng.integers(0, m, size=(2000, n))
        if match3_labels(x, m, distinct).mean() <= target:
            return m
    raise AssertionError("no modulus found")


@functools.lru_cache(maxsize=4)
def eval_set(seq_len, modulus, distinct, eval_sequences, seed):
    rng = np.random.default_rng(seed)
    modulus = modulus or pick_modulus(seq_len, rng, distinct)
    eval_x = rng.integers(0, modulus, size=(eval_sequences, seq_len))
    return modulus, eval_x, match3_labels(eval_x, modulus, distinct)
