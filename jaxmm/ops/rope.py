"""Rotary position embeddings (RoFormer), HF "rotate_half" convention, with Llama-3 frequency scaling."""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jaxmm.checks import fail


def rope_frequencies(head_dim: int, theta: float = 10000.0, scaling: dict | None = None) -> np.ndarray:
    """Inverse frequencies θ^{-2i/d}, i < d/2 (float64 numpy [d/2]).

    scaling: None, or an HF `rope_scaling` dict. Supported: {"rope_type": "default"}, {"rope_type": "linear",
    "factor"}, and {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"} (Llama 3.1: long wavelengths divided by `factor`, short kept, a smooth
    interpolation between).
    """
    if head_dim % 2:
        fail("head_dim", "an even number", head_dim)
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if not scaling:
        return inv
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(is_mid, mid, scaled)
    fail("scaling", "rope_type in {'default', 'linear', 'llama3'}", repr(kind))


def apply_rope(x, positions, inv_freq):
    """Rotate x [B, L, H, d] by angle positions·inv_freq (positions [B, L] or [L]); HF rotate_half layout:
    out = x·cos + rotate_half(x)·sin with rotate_half([x1, x2]) = [−x2, x1] and cos/sin repeated twice."""
    if x.shape[-1] != 2 * len(inv_freq):
        fail("x", f"head_dim {2 * len(inv_freq)} (2 x inv_freq)", f"shape {x.shape}")
    positions = jnp.asarray(positions)
    if positions.ndim == 1:
        positions = positions[None]
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq, jnp.float32)  # [B, L, d/2]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)
