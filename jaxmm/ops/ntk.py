"""NTK-Attention (arXiv 2406.14036): attention with an infinitely long learned prefix compressed into per-head
`Z ∈ R^{d×d}` and `k ∈ R^d`, and the explicit prefix attention it replaces.

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

Implementations (`implementation=`):
  "reference"  dense, forms the L×L matrix (jax.grad through it: the ground truth for the gradients);
  "xla"        online softmax over key blocks in plain JAX (never the L×L matrix), custom VJP; the CPU default;
  "pallas"     the Pallas kernel in jaxmm/kernels/ntk_attention.py (GPU: Triton lowering; CPU: interpret mode);
  "cudnn"      cuDNN flash attention for the real keys + the exact combine; the backward runs cuDNN's flash
               backward with the NTK output and lse' (NVIDIA only; the GPU default when no `mask` is given).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxmm.ops._checks import check_rank, check_scale, fail

IMPLEMENTATIONS = ("reference", "xla", "pallas", "cudnn")


# ----------------------------------------------------------------------------------------------- checks
def check_attention_args(q, k, v, *, is_causal=False, mask=None, q_name="q", k_name="k", v_name="v",
                         causal_equal_lengths=False):
    """Validate [B, L, H, d] attention tensors with GQA; returns (B, Lq, H, d, Lk, Hkv). With is_causal and
    different lengths the causal rule is bottom-right aligned (query i sees keys j <= i + Lk − Lq, as
    `jaxmm.ops.attention.causal_mask`); `causal_equal_lengths=True` (the Pallas kernels) requires Lq = Lk."""
    check_rank(q_name, q, 4, "[batch, length, heads, head_dim]")
    check_rank(k_name, k, 4, "[batch, length, kv_heads, head_dim]")
    check_rank(v_name, v, 4, "[batch, length, kv_heads, head_dim]")
    for name, x in ((q_name, q), (k_name, k), (v_name, v)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            fail(name, "a floating-point array (float32, bfloat16, float16, ...)", f"dtype {x.dtype}")
    b, lq, h, d = q.shape
    if k.shape[0] != b or k.shape[3] != d:
        fail(k_name, f"shape ({b}, *, *, {d}) (batch and head_dim of {q_name})", f"shape {k.shape}")
    if v.shape != k.shape:
        fail(v_name, f"the shape of {k_name} {k.shape}", f"shape {v.shape}")
    lk, hkv = k.shape[1], k.shape[2]
    if h % hkv:
        fail(k_name, f"a number of kv heads dividing the {h} query heads", f"{hkv} kv heads")
    if is_causal and causal_equal_lengths and lq != lk:
        fail(k_name, f"length {lq} (= query length, is_causal=True)", f"length {lk}")
    if mask is not None:
        shape = tuple(getattr(mask, "shape", ()))
        full = (b, h, lq, lk)
        if len(shape) != 4 or any(s not in (1, f) for s, f in zip(shape, full)):
            fail("mask", f"a boolean array broadcastable to [batch, heads, q_len, k_len] = {full}", f"shape {shape}")
    return b, lq, h, d, lk, hkv


def _check_prefix_params(z, kvec, h, d):
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


def _broadcast_mask(mask, b, h, hkv, lq, lk):
    """Boolean mask broadcastable to [B, H, Lq, Lk] -> [B|1, Hkv|1, G|1, Lq|1, Lk] (True = attend)."""
    mask = jnp.asarray(mask).astype(bool)
    mb, mh, mq, _ = mask.shape
    mask = jnp.broadcast_to(mask, (mb, mh, mq, lk))
    if mh == 1:
        return mask[:, :, None]
    return mask.reshape(mb, hkv, h // hkv, mq, lk)


# ------------------------------------------------------------------------------------------ reference
def ntk_attention_reference(q, k, v, z, kvec, *, is_causal=False, scale=None, mask=None):
    """Dense NTK-Attention (forms the L×L logits; float32 maths; output in q.dtype). GQA: query head h reads
    kv head h // (H / Hkv). Differentiable by jax.grad: the ground truth for every fast path."""
    b, lq, h, d, lk, hkv = check_attention_args(q, k, v, is_causal=is_causal, mask=mask)
    _check_prefix_params(z, kvec, h, d)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    g = h // hkv
    f32 = lambda x: x.astype(jnp.float32)
    qg = f32(q).reshape(b, lq, hkv, g, d)
    s = jnp.einsum("bqhgd,bkhd->bhgqk", qg, f32(k)) * scale
    allowed = jnp.ones((1, 1, 1, lq, lk), bool)
    if is_causal:
        allowed = allowed & jnp.tril(jnp.ones((lq, lk), bool), k=lk - lq)      # bottom-right aligned
    if mask is not None:
        allowed = allowed & _broadcast_mask(mask, b, h, hkv, lq, lk)
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


# --------------------------------------------------------------- blocked flash attention in plain JAX
# Internal layout: queries as [B, Hkv, R, d] with R = G·Lq rows (the G query heads of a kv head stacked), keys as
# [nblk, B, Hkv, bk, d]: every product is a canonical batched matmul, which XLA:CPU runs much faster than einsums
# with several free dimensions.
def _rows(x, b, lq, hkv, g):
    """[B, Lq, H, ...] -> [B, Hkv, G·Lq, ...]."""
    x = x.reshape(b, lq, hkv, g, *x.shape[3:])
    return jnp.moveaxis(x, 1, 3).reshape(b, hkv, g * lq, *x.shape[4:])


def _unrows(x, b, lq, hkv, g):
    """[B, Hkv, G·Lq, ...] -> [B, Lq, H, ...]."""
    x = x.reshape(b, hkv, g, lq, *x.shape[3:])
    return jnp.moveaxis(x, 3, 1).reshape(b, lq, hkv * g, *x.shape[4:])


def _key_blocks(k, v, mask, *, b, h, hkv, lq, block_k):
    """Pad keys to a multiple of block_k and split into blocks along a leading axis (for lax.scan)."""
    lk = k.shape[1]
    g = h // hkv
    nblk = -(-lk // block_k)
    pad = nblk * block_k - lk
    kp = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
    vp = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
    split = lambda x: x.reshape(x.shape[0], nblk, block_k, *x.shape[2:]).transpose(1, 0, 3, 2, 4)
    mk = None
    if mask is not None:
        m5 = _broadcast_mask(mask, b, h, hkv, lq, lk)                       # [B|1, Hkv|1, G|1, Lq|1, Lk]
        m5 = jnp.broadcast_to(m5, (*m5.shape[:2], g, lq, lk)).reshape(*m5.shape[:2], g * lq, lk)
        m5 = jnp.pad(m5, ((0, 0), (0, 0), (0, 0), (0, pad)))
        mk = jnp.moveaxis(m5.reshape(*m5.shape[:3], nblk, block_k), 3, 0)   # [nblk, B|1, Hkv|1, R, bk]
    starts = jnp.arange(nblk) * block_k
    return split(kp), split(vp), mk, starts


def _block_allowed(start, mblk, *, rows, lq, lk, block_k, is_causal):
    cols = start + jnp.arange(block_k)
    allowed = jnp.broadcast_to(cols < lk, (rows, block_k))
    if is_causal:
        allowed = allowed & (cols[None, :] <= (jnp.arange(rows) % lq + (lk - lq))[:, None])
    allowed = allowed[None, None]                                         # [1, 1, R, bk]
    if mblk is not None:
        allowed = allowed & mblk
    return allowed


def flash_attention_xla(q, k, v, *, is_causal=False, scale=None, mask=None, block_k=512):
    """Softmax attention over key blocks with an online softmax (no L×L matrix). Returns (o float32
    [B, Lq, H, d], lse float32 [B, Lq, H]); fully masked rows give o = 0, lse = −inf. Not differentiable by
    itself on purpose: the callers own the VJP (see `flash_attention_xla_bwd`)."""
    b, lq, h, d, lk, hkv = check_attention_args(q, k, v, is_causal=is_causal, mask=mask)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    g, block_k = h // hkv, max(1, min(block_k, lk))
    rows = g * lq
    qr = _rows(q.astype(jnp.float32) * scale, b, lq, hkv, g)               # [B, Hkv, R, d]
    kb, vb, mk, starts = _key_blocks(k, v, mask, b=b, h=h, hkv=hkv, lq=lq, block_k=block_k)
    allowed_fn = functools.partial(_block_allowed, rows=rows, lq=lq, lk=lk, block_k=block_k, is_causal=is_causal)

    def step(carry, xs):
        m, l, acc = carry
        kj, vj, start, mj = xs
        s = jnp.einsum("bhrd,bhkd->bhrk", qr, kj.astype(jnp.float32))
        if is_causal or mj is not None or lk % block_k:
            s = jnp.where(allowed_fn(start, mj), s, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(s, -1))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        p = jnp.exp(s - m_safe[..., None])
        alpha = jnp.exp(m - m_safe)
        l = alpha * l + jnp.sum(p, -1)
        acc = alpha[..., None] * acc + jnp.einsum("bhrk,bhkd->bhrd", p, vj.astype(jnp.float32))
        return (m_new, l, acc), None

    f32 = jnp.float32   # explicit: under jax_enable_x64 a bare jnp.zeros is float64 and would leak into the VJP
    init = (jnp.full((b, hkv, rows), -jnp.inf, f32), jnp.zeros((b, hkv, rows), f32), jnp.zeros((b, hkv, rows, d), f32))
    (m, l, acc), _ = jax.lax.scan(step, init, (kb, vb, starts, mk))
    o = acc / jnp.where(l == 0, 1.0, l)[..., None]
    lse = jnp.where(l == 0, -jnp.inf, m + jnp.log(jnp.where(l == 0, 1.0, l)))   # a NaN row stays NaN
    return _unrows(o, b, lq, hkv, g), _unrows(lse, b, lq, hkv, g)


def flash_attention_xla_bwd(q, k, v, out, lse, do, *, is_causal=False, scale=None, mask=None, block_k=512):
    """The standard flash-attention backward over key blocks given the output `out` and the log-sum-exp `lse`
    that normalised it (for NTK-Attention: the NTK output and the augmented lse'). Returns dq, dk, dv."""
    b, lq, h, d, lk, hkv = check_attention_args(q, k, v, is_causal=is_causal, mask=mask)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    g, block_k = h // hkv, max(1, min(block_k, lk))
    rows = g * lq
    to_rows = lambda x: _rows(x.astype(jnp.float32), b, lq, hkv, g)
    qr, dor = to_rows(q), to_rows(do)
    delta = jnp.sum(to_rows(out) * dor, -1)                                 # [B, Hkv, R]
    lser = to_rows(lse)
    lser = jnp.where(jnp.isneginf(lser), jnp.inf, lser)                    # empty rows: P = 0
    kb, vb, mk, starts = _key_blocks(k, v, mask, b=b, h=h, hkv=hkv, lq=lq, block_k=block_k)
    allowed_fn = functools.partial(_block_allowed, rows=rows, lq=lq, lk=lk, block_k=block_k, is_causal=is_causal)

    def step(dq, xs):
        # keys-as-rows orientation (Pᵀ, dSᵀ [bk, R]): dK = dSᵀQ and dV = PᵀdO become plain matmuls; only dQ
        # contracts over the leading axis (measured ~1.4x faster than the [R, bk] orientation on XLA:CPU)
        kj, vj, start, mj = xs
        kj, vj = kj.astype(jnp.float32), vj.astype(jnp.float32)
        pt = jnp.exp(jnp.einsum("bhkd,bhrd->bhkr", kj, qr) * scale - lser[:, :, None, :])
        if is_causal or mj is not None or lk % block_k:
            pt = jnp.where(jnp.swapaxes(allowed_fn(start, mj), -1, -2), pt, 0.0)
        dpt = jnp.einsum("bhkd,bhrd->bhkr", vj, dor)
        dst = pt * (dpt - delta[:, :, None, :]) * scale
        dq = dq + jnp.einsum("bhkr,bhkd->bhrd", dst, kj)
        dk = jnp.einsum("bhkr,bhrd->bhkd", dst, qr)
        dv = jnp.einsum("bhkr,bhrd->bhkd", pt, dor)
        return dq, (dk, dv)

    dq, (dk, dv) = jax.lax.scan(step, jnp.zeros_like(qr), (kb, vb, starts, mk))
    unsplit = lambda x: x.transpose(1, 0, 3, 2, 4).reshape(b, -1, hkv, d)[:, :lk]   # [nblk, B, Hkv, bk, d] ->
    return (_unrows(dq, b, lq, hkv, g).astype(q.dtype), unsplit(dk).astype(k.dtype), unsplit(dv).astype(v.dtype))


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


def _default_implementation(mask, dtype, head_dim):
    # cuDNN flash attention: NVIDIA, fp16/bf16, head_dim a multiple of 8 up to 128; no general mask here
    if (jax.default_backend() == "gpu" and mask is None and dtype in (jnp.bfloat16, jnp.float16)
            and head_dim % 8 == 0 and head_dim <= 128):
        return "cudnn"
    return "xla"   # CPU, other GPU cases; TPU until the Pallas kernel's Mosaic-TPU lowering has run on a TPU


def ntk_attention(q, k, v, z, kvec, *, is_causal=False, scale=None, mask=None, implementation=None,
                  block_k=512):
    """NTK-Attention (2406.14036): ( exp(S)V + φ(Q)Z ) / ( exp(S)1 + φ(Q)|k| ), S = QKᵀ·scale.

    q [B, L, H, d]; k, v [B, L', Hkv, d] (Hkv divides H: grouped-query attention); z [H, d, d] or the rank-s
    factors (z_a [H, d, s], z_b [H, s, d]) with Z = Z_A Z_B (the paper's later low-rank version; formed here,
    O(H d² s), and differentiated through); kvec [H, d]; is_causal: causal mask on the real keys, bottom-right aligned when L' != L (query i sees keys
    j <= i + L' − L); the prefix is visible to every query; scale: default 1/√d;
    mask: optional boolean, broadcastable to [B, H, L, L'] (True = attend). Returns [B, L, H, d] in q.dtype.
    implementation: None (NVIDIA GPU, bf16/fp16, no mask: "cudnn"; otherwise "xla"), or one of IMPLEMENTATIONS.
    """
    b, lq, h, d, lk, hkv = check_attention_args(q, k, v, is_causal=is_causal, mask=mask)
    if isinstance(z, (tuple, list)):
        z = low_rank_z(z, h, d)
    _check_prefix_params(z, kvec, h, d)
    if mask is not None and jnp.asarray(mask).dtype != jnp.bool_:
        fail("mask", "a boolean array (True = attend)", f"dtype {jnp.asarray(mask).dtype}")
    impl = implementation
    if impl is None:
        impl = "xla" if (is_causal and lq != lk) else _default_implementation(mask, q.dtype, d)
    if impl not in IMPLEMENTATIONS:
        fail("implementation", f"None or one of {IMPLEMENTATIONS}", repr(implementation))
    scale = 1.0 / math.sqrt(d) if scale is None else float(check_scale(scale))
    if impl == "reference":
        return ntk_attention_reference(q, k, v, z, kvec, is_causal=is_causal, scale=scale, mask=mask)
    if impl == "xla":
        return _ntk_xla(q, k, v, z, kvec, mask, scale, is_causal, int(block_k))
    if mask is not None:
        fail("mask", f"None with implementation={impl!r} (use 'xla' or 'reference' for general masks)", "a mask")
    from jaxmm.kernels import ntk_attention as kernel    # kernels depend on ops, not the other way round
    if impl == "pallas":
        return kernel.ntk_attention_pallas(q, k, v, z, kvec, is_causal=is_causal, scale=scale)
    return kernel.ntk_attention_cudnn(q, k, v, z, kvec, is_causal=is_causal, scale=scale)


# --------------------------------------------------------------------------------- prefix attention
def prefix_attention(q, k, v, k_prefix, v_prefix, *, is_causal=False, scale=None):
    """Explicit prefix attention (what NTK-Attention replaces): softmax attention over [prefix keys; keys],
    the m prefix keys visible to every query, `is_causal` applying to the real keys only.

    q [B, L, H, d]; k, v [B, L, Hkv, d]; k_prefix, v_prefix [B or 1, m, Hkv, d]. Returns [B, L, H, d].
    Runs through jax.nn.dot_product_attention (XLA on CPU), cost O(L (m + L) d).
    """
    b, lq, h, d, lk, hkv = check_attention_args(q, k, v, is_causal=is_causal)
    check_rank("k_prefix", k_prefix, 4, "[batch or 1, prefix_len, kv_heads, head_dim]")
    if k_prefix.shape[0] not in (1, b) or k_prefix.shape[2:] != (hkv, d):
        fail("k_prefix", f"shape ({b} or 1, m, {hkv}, {d})", f"shape {k_prefix.shape}")
    if v_prefix.shape != k_prefix.shape:
        fail("v_prefix", f"the shape of k_prefix {k_prefix.shape}", f"shape {getattr(v_prefix, 'shape', None)}")
    m = k_prefix.shape[1]
    scale = check_scale(scale) if scale is not None else None
    bcast = lambda x: jnp.broadcast_to(x, (b, m, hkv, d)).astype(k.dtype)
    kk = jnp.concatenate([bcast(k_prefix), k], axis=1)
    vv = jnp.concatenate([bcast(v_prefix), v], axis=1)
    mask = None
    if is_causal:
        real = jnp.tril(jnp.ones((lq, lk), bool), k=lk - lq)
        mask = jnp.concatenate([jnp.ones((lq, m), bool), real], axis=1)[None, None]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    return jax.nn.dot_product_attention(q, kk, vv, scale=scale, mask=mask)
