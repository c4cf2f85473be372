"""Losses."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmm.checks import fail


def masked_cross_entropy(logits, targets, mask=None):
    """Mean next-token cross-entropy over the positions where mask is 1 (answer tokens only).

    logits: [..., V]; targets: [...] int; mask: [...] (bool or 0/1; None = all). Returns (loss, n_tokens):
    loss = Σ mask·(−log softmax(logits)[target]) / max(Σ mask, 1), computed in float32.
    The caller aligns targets (usually inputs shifted left by one).
    """
    if logits.shape[:-1] != targets.shape:
        fail("targets", f"shape {logits.shape[:-1]} (logits without the vocab axis)", f"shape {targets.shape}")
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if mask is None:
        mask = jnp.ones_like(nll)
    elif mask.shape != targets.shape:
        fail("mask", f"shape {targets.shape} like targets", f"shape {mask.shape}")
    mask = mask.astype(jnp.float32)
    n = jnp.sum(mask)
    return jnp.sum(nll * mask) / jnp.maximum(n, 1.0), n
