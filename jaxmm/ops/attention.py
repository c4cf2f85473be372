"""Scaled dot-product attention: the reference maths, and the one q/k/v check, mask normaliser and causal rule
that every attention op, kernel and layer in jaxmm uses.

Layout everywhere: q [B, Lq, H, d], k and v [B, Lk, Hkv, d] with Hkv dividing H (MHA: Hkv = H; GQA; MQA: Hkv = 1).
Backend choice (cuDNN, Pallas) lives one layer up, in `jaxmm.attention`; this module is plain XLA maths.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmm.checks import check_rank, check_scale, fail


# ------------------------------------------------------------------------------------------- shared checks
def check_qkv(q, k, v, *, is_causal: bool = False, causal_equal_lengths: bool = False,
              names: tuple[str, str, str] = ("q", "k", "v")):
    """Validate [B, L, H, d] attention tensors (GQA allowed); returns (B, Lq, H, d, Lk, Hkv).

    With is_causal and different lengths the causal rule is bottom-right aligned (`causal_mask`);
    `causal_equal_lengths=True` (the Pallas kernels) requires Lq = Lk when is_causal."""
    qn, kn, vn = names
    check_rank(qn, q, 4, "[batch, q_length, heads, head_dim]")
    check_rank(kn, k, 4, "[batch, kv_length, kv_heads, head_dim]")
    check_rank(vn, v, 4, "[batch, kv_length, kv_heads, head_dim]")
    for name, x in ((qn, q), (kn, k), (vn, v)):   # integer inputs would silently give all-zero attention
        if not jnp.issubdtype(x.dtype, jnp.floating):
            fail(name, "a floating-point array (float32, bfloat16, float16, ...)", f"dtype {x.dtype}")
    b, lq, h, d = q.shape
    if k.shape[0] != b or k.shape[3] != d:
        fail(kn, f"shape ({b}, *, *, {d}) (batch and head_dim of {qn})", f"shape {k.shape}")
    if v.shape != k.shape:
        fail(vn, f"the shape of {kn} {k.shape}", f"shape {v.shape}")
    lk, hkv = k.shape[1], k.shape[2]
    if h % hkv:
        fail(kn, f"a number of kv heads dividing the {h} query heads", f"{hkv} kv heads")
    if is_causal and causal_equal_lengths and lq != lk:
        fail(kn, f"length {lq} (= query length, is_causal=True)", f"length {lk}")
    return b, lq, h, d, lk, hkv


def causal_mask(q_len: int, kv_len: int, q_offset=None):
    """Boolean [q_len, kv_len] (or [B, q_len, kv_len] if q_offset is [B]): query i attends key j iff
    j <= q_offset + i. Default offset kv_len - q_len aligns the last query with the last key."""
    offset = kv_len - q_len if q_offset is None else q_offset
    qi = jnp.arange(q_len)[:, None]
    kj = jnp.arange(kv_len)[None, :]
    if jnp.ndim(offset) == 0:
        return kj <= qi + offset
    return kj[None] <= qi[None] + jnp.asarray(offset)[:, None, None]


def attention_mask(mask, b: int, h: int, lq: int, lk: int, name: str = "mask", *, bias_hint: bool = True):
    """The one mask normaliser. Accepts None or a boolean mask (True = attend) of shape [B, Lk] (key padding),
    [Lq, Lk], [B, Lq, Lk] or [B|1, 1|H, Lq|1, Lk]; returns None or a boolean [B|1, 1|H, Lq|1, Lk] array.
    A float mask is refused: a 0/−inf additive mask read as boolean would invert it."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        hint = "; pass additive float masks as `bias`" if bias_hint else ""
        fail(name, f"a boolean array (True = attend){hint}", f"dtype {mask.dtype}")
    if mask.ndim == 2 and mask.shape == (b, lk) and (lq, lk) != (b, lk):
        mask = mask[:, None, None, :]
    elif mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None]
    if (mask.ndim != 4 or mask.shape[0] not in (1, b) or mask.shape[1] not in (1, h)
            or mask.shape[-2:] not in ((lq, lk), (1, lk))):
        fail(name, f"a mask broadcastable to [batch={b}, heads={h}, q_length={lq}, kv_length={lk}] "
                   f"(or a [batch, kv_length] key-padding mask)", f"shape {mask.shape}")
    return mask


def _attention_bias(bias, lq, lk):
    if bias is None:
        return None
    bias = jnp.asarray(bias)
    if bias.ndim == 2:
        bias = bias[None, None]
    if bias.ndim != 4:
        fail("bias", f"an array broadcastable to [batch, heads, {lq}, {lk}]", f"shape {bias.shape}")
    return bias


def prepare(q, k, v, *, bias=None, mask=None, is_causal=False, scale=None):
    """Check every argument once; returns (mask [B|1, 1|H, Lq|1, Lk] or None, bias or None, scale)."""
    b, lq, h, d, lk, _ = check_qkv(q, k, v)
    scale = d ** -0.5 if scale is None else check_scale(scale)
    return attention_mask(mask, b, h, lq, lk), _attention_bias(bias, lq, lk), scale


# ------------------------------------------------------------------------------------------- reference maths
def _xla_attention(q, k, v, bias, mask, scale):
    b, lq, h, d = q.shape
    hkv = k.shape[2]
    g = h // hkv
    qg = q.reshape(b, lq, hkv, g, d)
    logits = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=jnp.float32) * scale
    logits = logits.reshape(b, h, lq, k.shape[1])
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    if mask is not None:  # rows with no visible key give zeros, not a uniform average
        probs = jnp.where(jnp.any(mask, axis=-1, keepdims=True), probs, 0.0)
    probs = probs.reshape(b, hkv, g, lq, k.shape[1]).astype(v.dtype)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, lq, h, d).astype(q.dtype)


def xla_attention(q, k, v, *, bias=None, mask=None, is_causal: bool = False, scale=None):
    """`dot_product_attention` on already prepared arguments (mask normalised, scale set): no checks."""
    lq, lk = q.shape[1], k.shape[1]
    if is_causal:
        cm = causal_mask(lq, lk)[None, None]
        mask = cm if mask is None else mask & cm
    return _xla_attention(q, k, v, bias, mask, scale)


def dot_product_attention(q, k, v, *, bias=None, mask=None, is_causal: bool = False, scale: float | None = None):
    """softmax(q kᵀ·scale + bias, masked) v, in plain XLA (logits and softmax in float32).

    q: [B, Lq, H, d]; k, v: [B, Lk, Hkv, d] (Hkv divides H: MHA, GQA, MQA). Returns [B, Lq, H, d].
    bias: broadcastable to [B, H, Lq, Lk] (float, added to the logits).
    mask: boolean, True = attend; [B, Lk] key padding, [Lq, Lk], [B, Lq, Lk] or [B, 1|H, Lq, Lk]. A float
      mask is refused (an additive 0/−inf mask goes in `bias`). q, k, v must be floating point.
    is_causal: query i sees keys j <= i + (Lk - Lq) (bottom-right aligned, which is what a KV cache needs).
    scale: default 1/sqrt(d); a given scale must be finite and > 0.
    A query row that sees no key returns zeros. The backend-dispatching version (cuDNN, Pallas) with the same
    signature plus `implementation=` is `jaxmm.attention.dot_product_attention`.
    """
    mask, bias, scale = prepare(q, k, v, bias=bias, mask=mask, scale=scale)
    return xla_attention(q, k, v, bias=bias, mask=mask, is_causal=is_causal, scale=scale)


# ------------------------------------------------------------------------------------------- prefix attention
def prefix_keys(q, k, v, k_prefix, v_prefix, *, mask=None, is_causal: bool = False):
    """Prepend a key/value prefix visible to every query: returns (keys [B, m + Lk, Hkv, d], values, mask
    [B|1, 1|H, Lq, m + Lk] or None). `mask` and `is_causal` (bottom-right aligned) apply to the real keys only.
    k_prefix, v_prefix: [m, Hkv, d] or [B or 1, m, Hkv, d]."""
    b, lq, h, d, lk, hkv = check_qkv(q, k, v, is_causal=is_causal)
    if getattr(k_prefix, "ndim", None) == 3:
        k_prefix = k_prefix[None]
    if getattr(v_prefix, "ndim", None) == 3:
        v_prefix = v_prefix[None]
    check_rank("k_prefix", k_prefix, 4, "[batch or 1, prefix_len, kv_heads, head_dim]")
    if k_prefix.shape[0] not in (1, b) or k_prefix.shape[2:] != (hkv, d):
        fail("k_prefix", f"shape ({b} or 1, m, {hkv}, {d})", f"shape {k_prefix.shape}")
    if getattr(v_prefix, "shape", None) != k_prefix.shape:
        fail("v_prefix", f"the shape of k_prefix {k_prefix.shape}", f"shape {getattr(v_prefix, 'shape', None)}")
    m = k_prefix.shape[1]
    kk = jnp.concatenate([jnp.broadcast_to(k_prefix, (b, m, hkv, d)).astype(k.dtype), k], axis=1)
    vv = jnp.concatenate([jnp.broadcast_to(v_prefix, (b, m, hkv, d)).astype(v.dtype), v], axis=1)
    real = attention_mask(mask, b, h, lq, lk)
    if is_causal:
        cm = causal_mask(lq, lk)[None, None]
        real = cm if real is None else real & cm
    if real is None:
        return kk, vv, None
    real = jnp.broadcast_to(real, (real.shape[0], real.shape[1], lq, lk))
    return kk, vv, jnp.concatenate([jnp.ones((*real.shape[:3], m), bool), real], axis=-1)


def prefix_attention(q, k, v, k_prefix, v_prefix, *, mask=None, is_causal: bool = False, scale=None):
    """Explicit prefix attention (P-Tuning v2; what NTK-Attention replaces): softmax attention over
    [prefix keys; keys], the m prefix keys visible to every query; `mask` and `is_causal` apply to the real keys.

    q [B, L, H, d]; k, v [B, L', Hkv, d]; k_prefix, v_prefix [m, Hkv, d] or [B or 1, m, Hkv, d].
    Returns [B, L, H, d]; cost O(L (m + L') d)."""
    kk, vv, full = prefix_keys(q, k, v, k_prefix, v_prefix, mask=mask, is_causal=is_causal)
    return dot_product_attention(q, kk, vv, mask=full, scale=scale)
