"""NTK-Attention (arXiv 2406.14036): attention with an infinitely long learned prefix compressed into per-head
`Z ∈ R^{d×d}` and `k ∈ R^d`.

    NTKAttn(Q, K, V) = ( exp(S) V + φ(Q) Z ) / ( exp(S) 1 + φ(Q) |k| ),   S = Q Kᵀ · scale   (masked entries: 0)
    φ(x) = ELU(x / d^{1/4}) + 1   (elementwise, > 0),   |k| elementwise.

Numerics. Write c = φ(q) Z and w = φ(q)·|k| > 0 for one query row. The prefix acts as one extra, query-dependent
virtual key with logit log w and value c / w. A flash-attention pass over the real keys returns the output `o`
and the log-sum-exp `lse`; the exact combine is
    lse' = logaddexp(lse, log w),   out = exp(lse − lse') o + exp(−lse') c
which never exponentiates a positive number (stable for logits of 1e4) and stays finite when w = 0
(zero-initialised k). In the backward, the real keys need exactly the standard flash backward given the NTK
output and lse' (P_ij = exp(S_ij − lse'_i), δ_i = dO_i·O_i); the prefix adds
    ∂L/∂c = exp(−lse') dO,   ∂L/∂w = −exp(−lse') δ,
pushed through φ, Z and |k| (O(L d²) work).

Here: `ntk_attention_reference` (dense, forms the L×L matrix; jax.grad through it is the ground truth for the
gradients) and `ntk_attention` (the XLA path: online softmax over key blocks, custom VJP). The Pallas and cuDNN
paths are in `jaxmm.kernels.ntk_attention`; `jaxmm.attention.ntk_attention` chooses between all four.
Prefix attention itself is `jaxmm.ops.attention.prefix_attention`.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxmm.checks import check_rank, check_scale, fail
from jaxmm.ops.attention import attention_mask, check_qkv
from jaxmm.ops.flash import flash_attention_xla, flash_attention_xla_bwd, group_mask


# ----------------------------------------------------------------------------------------------- checks
def check_prefix_params(z, kvec, h, d):
    check_rank("z", z, 3, "[heads, head_dim, head_dim]")
    if z.shape != (h, d, d):
        fail("z", f"shape ({h}, {d}, {d}) [heads, head_dim, head_dim]", f"shape {z.shape}")
    check_rank("kvec", kvec, 2, "[heads, head_dim]")
    if kvec.shape != (h, d):
        fail("kvec", f"shape ({h}, {d}) [heads, head_dim]", f"shape {kvec.shape}")


# ------------------------------------------------------------------------------------- shared pieces
def phi(x, head_dim: int | None = None):
    """φ(x) = ELU(x / d^{1/4}) + 1, d = head_dim (default: x's last dimension)."""
    d = x.shape[-1] if head_dim is None else head_dim
    return jax.nn.elu(x / d ** 0.25) + 1.0


def prefix_terms(q, z, kvec):
    """c = φ(q) Z [B, L, H, d] and w = φ(q)·|k| [B, L, H], in float32."""
    pq = phi(q.astype(jnp.float32))
    c = jnp.einsum("blhd,hde->blhe", pq, z.astype(jnp.float32))
    w = jnp.einsum("blhd,hd->blh", pq, jnp.abs(kvec.astype(jnp.float32)))
    return c, w


def combine(o, lse, c, w):
    """Exact merge of a flash result (o [B, L, H, d], lse [B, L, H]) with the virtual prefix key (c, w).
    Returns (out float32, lse' [B, L, H]). Rows with lse' = −inf (every key masked and w = 0) give 0; a NaN
    anywhere in a row's inputs stays NaN (it is not mistaken for an empty row)."""
    log_w = jnp.where(w == 0, -jnp.inf, jnp.log(jnp.where(w == 0, 1.0, w)))     # w >= 0; NaN stays NaN
    # shift by the (constant) augmented lse; w and c then enter linearly, so autodiff through this function is
    # also exact at w = 0 (zero-initialised k), where d log(w) would be cut off
    shift = jax.lax.stop_gradient(jnp.logaddexp(lse, log_w))
    empty = jnp.isneginf(shift)
    shift = jnp.where(empty, 0.0, shift)
    a = jnp.where(jnp.isneginf(lse), 0.0, jnp.exp(lse - shift))
    e = jnp.exp(-shift)
    den = jnp.where(empty, 1.0, a + e * w)                             # = 1 in value where not empty
    out = jnp.where(empty[..., None], 0.0, (a[..., None] * o.astype(jnp.float32) + e[..., None] * c) / den[..., None])
    lse2 = jnp.where(empty, -jnp.inf, shift + jnp.log(den))
    return out, lse2


def prefix_vjp(q, z, kvec, out, lse2, do):
    """Cotangents of the prefix path (through φ(q), Z and |k|) given the NTK output and lse'."""
    lse2 = lse2.astype(jnp.float32)   # every cotangent below is float32, whatever jax_enable_x64 says
    finite = jnp.isfinite(lse2)
    e = jnp.where(finite, jnp.exp(-jnp.where(finite, lse2, 0.0)), 0.0)
    do32 = do.astype(jnp.float32)
    delta = jnp.sum(do32 * out.astype(jnp.float32), -1)
    _, pull = jax.vjp(prefix_terms, q, z, kvec)
    dq, dz, dk = pull(((do32 * e[..., None]).astype(jnp.float32), (-delta * e).astype(jnp.float32)))
    return dq, dz.astype(z.dtype), dk.astype(kvec.dtype)


def low_rank_z(factors, heads: int, head_dim: int):
    """Z = Z_A Z_B from (z_a [H, d, s], z_b [H, s, d])."""
    if len(factors) != 2:
        fail("z", "an array [H, d, d] or a pair (z_a [H, d, s], z_b [H, s, d])", f"{len(factors)} arrays")
    z_a, z_b = factors
    check_rank("z_a", z_a, 3, "[heads, head_dim, rank]")
    if z_a.shape[:2] != (heads, head_dim):
        fail("z_a", f"shape ({heads}, {head_dim}, s) [heads, head_dim, rank]", f"shape {z_a.shape}")
    s = z_a.shape[2]
    check_rank("z_b", z_b, 3, "[heads, rank, head_dim]")
    if z_b.shape != (heads, s, head_dim):
        fail("z_b", f"shape ({heads}, {s}, {head_dim}) [heads, rank, head_dim]", f"shape {z_b.shape}")
    return jnp.einsum("hds,hse->hde", z_a, z_b)


# ------------------------------------------------------------------------------------------ reference
def ntk_attention_reference(q, k, v, z, kvec, *, is_causal=False, scale=None, mask=None):
    """Dense NTK-Attention (forms the L×L logits; float32 maths; output in q.dtype). GQA: query head h reads
    kv head h // (H / Hkv). Differentiable by jax.grad: the ground truth for every fast path."""
    b, lq, h, d, lk, hkv = check_qkv(q, k, v, is_causal=is_causal)
    check_prefix_params(z, kvec, h, d)
    mask = attention_mask(mask, b, h, lq, lk, bias_hint=False)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    g = h // hkv
    f32 = lambda x: x.astype(jnp.float32)
    qg = f32(q).reshape(b, lq, hkv, g, d)
    s = jnp.einsum("bqhgd,bkhd->bhgqk", qg, f32(k)) * scale
    allowed = jnp.ones((1, 1, 1, lq, lk), bool)
    if is_causal:
        allowed = allowed & jnp.tril(jnp.ones((lq, lk), bool), k=lk - lq)      # bottom-right aligned
    if mask is not None:
        allowed = allowed & group_mask(mask, b, h, hkv, lq, lk)
    s = jnp.where(allowed, s, -jnp.inf)
    c, w = prefix_terms(q, z, kvec)                                     # [B, L, H, d], [B, L, H]
    c = c.reshape(b, lq, hkv, g, d).transpose(0, 2, 3, 1, 4)            # [B, Hkv, G, L, d]
    w = w.reshape(b, lq, hkv, g).transpose(0, 2, 3, 1)
    log_w = jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)), -jnp.inf)
    m = jax.lax.stop_gradient(jnp.maximum(jnp.max(s, -1), log_w))     # the result does not depend on m
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(s - m[..., None])                                       # masked -> exactly 0
    em = jnp.exp(-m)
    num = jnp.einsum("bhgqk,bkhd->bhgqd", p, f32(v)) + em[..., None] * c
    den = jnp.sum(p, -1) + em * w
    out = num / jnp.where(den > 0, den, 1.0)[..., None]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, lq, h, d).astype(q.dtype)


# ------------------------------------------------------------------------------- NTK, XLA fast path
@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _ntk_xla(q, k, v, z, kvec, mask, scale, is_causal, block_k):
    return _ntk_xla_fwd(q, k, v, z, kvec, mask, scale, is_causal, block_k)[0]


def _ntk_xla_fwd(q, k, v, z, kvec, mask, scale, is_causal, block_k):
    o, lse = flash_attention_xla(q, k, v, is_causal=is_causal, scale=scale, mask=mask, block_k=block_k)
    out, lse2 = combine(o, lse, *prefix_terms(q, z, kvec))
    out = out.astype(q.dtype)
    return out, (q, k, v, z, kvec, mask, out, lse2)


def _ntk_xla_bwd(scale, is_causal, block_k, res, do):
    q, k, v, z, kvec, mask, out, lse2 = res
    dq, dk, dv = flash_attention_xla_bwd(q, k, v, out, lse2, do, is_causal=is_causal, scale=scale, mask=mask,
                                         block_k=block_k)
    dq_p, dz, dkvec = prefix_vjp(q, z, kvec, out, lse2, do)
    dmask = None if mask is None else jnp.zeros(mask.shape, jax.dtypes.float0)
    return ((dq.astype(jnp.float32) + dq_p).astype(q.dtype), dk, dv, dz, dkvec, dmask)


_ntk_xla.defvjp(_ntk_xla_fwd, _ntk_xla_bwd)


def ntk_attention(q, k, v, z, kvec, *, is_causal=False, scale=None, mask=None, block_k=512):
    """NTK-Attention (2406.14036): ( exp(S)V + φ(Q)Z ) / ( exp(S)1 + φ(Q)|k| ), S = QKᵀ·scale, in plain XLA
    (online softmax over key blocks of `block_k`, custom VJP; never the L×L matrix).

    q [B, L, H, d]; k, v [B, L', Hkv, d] (Hkv divides H: grouped-query attention); z [H, d, d] or the rank-s
    factors (z_a [H, d, s], z_b [H, s, d]) with Z = Z_A Z_B (the paper's later low-rank version; formed here,
    O(H d² s), and differentiated through); kvec [H, d]; is_causal: causal mask on the real keys, bottom-right
    aligned when L' != L (query i sees keys j <= i + L' − L); the prefix is visible to every query; scale:
    default 1/√d; mask: optional boolean (True = attend), any form `jaxmm.ops.attention.attention_mask` accepts.
    Returns [B, L, H, d] in q.dtype. The backend-dispatching version (cuDNN, Pallas) is
    `jaxmm.attention.ntk_attention`.
    """
    b, lq, h, d, lk, hkv = check_qkv(q, k, v, is_causal=is_causal)
    if isinstance(z, (tuple, list)):
        z = low_rank_z(z, h, d)
    check_prefix_params(z, kvec, h, d)
    mask = attention_mask(mask, b, h, lq, lk, bias_hint=False)
    scale = 1.0 / math.sqrt(d) if scale is None else float(check_scale(scale))
    return _ntk_xla(q, k, v, z, kvec, mask, scale, is_causal, int(block_k))
