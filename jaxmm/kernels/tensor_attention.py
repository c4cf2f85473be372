"""Pallas kernel for exact tensor attention (2405.16411), forward and backward; the reference is
`jaxmm.ops.tensor.tensor_attention(method="exact")` (same maths, see its docstring).

Every step is a 2-D tile, so the kernel lowers like a flash-attention kernel: for a block of queries and one key
j of K1, the scores against a block of K2 are S = (s·Q_blk ∘ K1_j) K2_blkᵀ ([block_q, block_k], one matmul), and
Σ_k P_ijk V1_j∘V2_k = V1_j ∘ (P V2_blk). The online softmax runs over all (j, k-block) steps.

Backward (Δ_i = ⟨dO_i, O_i⟩ and the forward's log-sum-exp as residuals):
  * dQ kernel, grid over query blocks: dS = P∘((dO∘V1_j) V2_blkᵀ − Δ), dQ += s·(dS K2_blk) ∘ K1_j.
  * dK/dV kernel, grid over key blocks of K2: dK2_blk += dSᵀ (s·Q∘K1_j), dV2_blk += Pᵀ (dO∘V1_j). The scores are
    symmetric under (K1, V1) ↔ (K2, V2) (softmax over the same pair set, causal mask j, k ≤ i symmetric), so
    dK1, dV1 come from the same kernel with the roles swapped.
FLOPs: 4·n³·d forward (d = dv), 6·n³·d for dQ and 2 × 8·n³·d for the key sides.

Dispatch: `jaxmm.attention.tensor_attention` calls this on NVIDIA GPUs (Triton lowering); on CPU run it with
interpret=True (tests). No Mosaic TPU variant: the dispatch uses the XLA path of `jaxmm.ops.tensor` on TPU.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jaxmm.checks import check_rank, check_shape, fail

_NEG = -1e30


def _dot(a, b, dt):
    """a·b with operands in the input dtype (tensor cores for bf16) and a float32 accumulator."""
    prec = lax.Precision.HIGHEST if dt == jnp.float32 else None
    return jnp.dot(a.astype(dt), b.astype(dt), preferred_element_type=jnp.float32, precision=prec)


def _causal_end(block_idx, size, n_valid, causal):
    """Exclusive end of the key indices a block of queries [block_idx·size, +size) can see."""
    if not causal:
        return n_valid
    return jnp.minimum(n_valid, (block_idx + 1) * size)


def _fwd_kernel(q_ref, k1_ref, k2_ref, v1_ref, v2_ref, o_ref, lse_ref, *, scale, causal, bq, bk, n_valid):
    f32, dt = jnp.float32, q_ref.dtype
    qi = pl.program_id(1)
    q = q_ref[...].astype(f32) * scale
    rows = qi * bq + jnp.arange(bq)
    j_end = _causal_end(qi, bq, n_valid, causal)
    kb_end = (j_end + bk - 1) // bk   # jnp, not lax.div: int32 with Python ints under x64 too
    dv = v1_ref.shape[-1]

    def jbody(j, carry):
        k1j = k1_ref[pl.ds(j, 1), :].astype(f32)  # [1, d]
        v1j = v1_ref[pl.ds(j, 1), :].astype(f32)  # [1, dv]
        qk1 = q * k1j  # [bq, d]

        def kbody(kb, carry):
            m_i, l_i, acc = carry
            k2b = k2_ref[pl.ds(kb * bk, bk), :]
            v2b = v2_ref[pl.ds(kb * bk, bk), :]
            cols = kb * bk + jnp.arange(bk)
            ok = cols[None, :] < n_valid
            if causal:
                ok = ok & (cols[None, :] <= rows[:, None]) & (j <= rows[:, None])
            s = jnp.where(ok, _dot(qk1, k2b.T, dt), _NEG)
            m_new = jnp.maximum(m_i, jnp.max(s, axis=1))
            p = jnp.where(ok, jnp.exp(s - m_new[:, None]), 0.0)
            alpha = jnp.exp(m_i - m_new)
            l_i = l_i * alpha + jnp.sum(p, axis=1)
            acc = acc * alpha[:, None] + _dot(p, v2b, dt) * v1j
            return m_new, l_i, acc

        return lax.fori_loop(0, kb_end, kbody, carry)

    init = (jnp.full((bq,), -jnp.inf, f32), jnp.zeros((bq,), f32), jnp.zeros((bq, dv), f32))
    m_i, l_i, acc = lax.fori_loop(0, j_end, jbody, init)
    l_safe = jnp.where(l_i > 0, l_i, 1.0)
    o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m_i + jnp.log(l_safe)


def _dq_kernel(q_ref, k1_ref, k2_ref, v1_ref, v2_ref, do_ref, lse_ref, delta_ref, dq_ref, *, scale, causal, bq, bk,
               n_valid):
    f32, dt = jnp.float32, q_ref.dtype
    qi = pl.program_id(1)
    q = q_ref[...].astype(f32) * scale
    do = do_ref[...].astype(f32)
    lse, delta = lse_ref[...], delta_ref[...]
    rows = qi * bq + jnp.arange(bq)
    j_end = _causal_end(qi, bq, n_valid, causal)
    kb_end = (j_end + bk - 1) // bk   # jnp, not lax.div: int32 with Python ints under x64 too

    def jbody(j, dq):
        k1j = k1_ref[pl.ds(j, 1), :].astype(f32)
        v1j = v1_ref[pl.ds(j, 1), :].astype(f32)
        qk1, dov1 = q * k1j, do * v1j

        def kbody(kb, dq_j):
            k2b = k2_ref[pl.ds(kb * bk, bk), :]
            v2b = v2_ref[pl.ds(kb * bk, bk), :]
            cols = kb * bk + jnp.arange(bk)
            ok = cols[None, :] < n_valid
            if causal:
                ok = ok & (cols[None, :] <= rows[:, None]) & (j <= rows[:, None])
            p = jnp.where(ok, jnp.exp(_dot(qk1, k2b.T, dt) - lse[:, None]), 0.0)
            ds = p * (_dot(dov1, v2b.T, dt) - delta[:, None])
            return dq_j + _dot(ds, k2b, dt)

        dq_j = lax.fori_loop(0, kb_end, kbody, jnp.zeros(q.shape, f32))
        return dq + dq_j * k1j

    dq = lax.fori_loop(0, j_end, jbody, jnp.zeros(q.shape, f32))
    dq_ref[...] = (scale * dq).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, ka_ref, kb_ref, va_ref, vb_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, scale,
                causal, bq, bk, n_valid):
    """Gradients of the "b" side (a block of K_b, V_b per program); the "a" side is looped over row by row."""
    f32, dt = jnp.float32, q_ref.dtype
    kbi = pl.program_id(1)
    k0 = kbi * bk
    kblk = kb_ref[...]
    vblk = vb_ref[...]
    cols = k0 + jnp.arange(bk)
    n_pad = q_ref.shape[0]
    nqb = n_pad // bq

    def jbody(j, carry):
        kaj = ka_ref[pl.ds(j, 1), :].astype(f32)
        vaj = va_ref[pl.ds(j, 1), :].astype(f32)
        qb_start = jnp.maximum(j, k0) // bq if causal else 0

        def qbody(qb, carry):
            dk, dv = carry
            sl = pl.ds(qb * bq, bq)
            qk = q_ref[sl, :].astype(f32) * scale * kaj  # [bq, d]
            dova = do_ref[sl, :].astype(f32) * vaj  # [bq, dv]
            lse, delta = lse_ref[sl], delta_ref[sl]
            rows = qb * bq + jnp.arange(bq)
            ok = (cols[None, :] < n_valid) & (rows[:, None] < n_valid)
            if causal:
                ok = ok & (cols[None, :] <= rows[:, None]) & (j <= rows[:, None])
            p = jnp.where(ok, jnp.exp(_dot(qk, kblk.T, dt) - lse[:, None]), 0.0)  # [bq, bk]
            ds = p * (_dot(dova, vblk.T, dt) - delta[:, None])
            return dk + _dot(ds.T, qk, dt), dv + _dot(p.T, dova, dt)

        return lax.fori_loop(qb_start, nqb, qbody, carry)

    dk0 = jnp.zeros((bk, ka_ref.shape[-1]), f32)
    dv0 = jnp.zeros((bk, va_ref.shape[-1]), f32)
    dk, dv = lax.fori_loop(0, n_valid, jbody, (dk0, dv0))
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _specs(bh_shape_rows, block, width):
    return pl.BlockSpec((None, block, width), lambda b, i: (b, i, 0))


def _full(n, width):
    return pl.BlockSpec((None, n, width), lambda b, i: (b, 0, 0))


def _rows(block):
    return pl.BlockSpec((None, block), lambda b, i: (b, i))


def _forward(q, k1, k2, v1, v2, scale, causal, bq, bk, n_valid, interpret):
    bh, n, d = q.shape
    dv = v1.shape[-1]
    kern = functools.partial(_fwd_kernel, scale=scale, causal=causal, bq=bq, bk=bk, n_valid=n_valid)
    return pl.pallas_call(
        kern, grid=(bh, n // bq),
        in_specs=[_specs(n, bq, d), _full(n, d), _full(n, d), _full(n, dv), _full(n, dv)],
        out_specs=[_specs(n, bq, dv), _rows(bq)],
        out_shape=[jax.ShapeDtypeStruct((bh, n, dv), q.dtype), jax.ShapeDtypeStruct((bh, n), jnp.float32)],
        interpret=interpret, name="tensor_attention_fwd")(q, k1, k2, v1, v2)


def _backward(q, k1, k2, v1, v2, o, lse, do, scale, causal, bq, bk, n_valid, interpret):
    bh, n, d = q.shape
    dv = v1.shape[-1]
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)
    common = dict(scale=scale, causal=causal, bq=bq, bk=bk, n_valid=n_valid)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, **common), grid=(bh, n // bq),
        in_specs=[_specs(n, bq, d), _full(n, d), _full(n, d), _full(n, dv), _full(n, dv), _specs(n, bq, dv),
                  _rows(bq), _rows(bq)],
        out_specs=_specs(n, bq, d), out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        interpret=interpret, name="tensor_attention_dq")(q, k1, k2, v1, v2, do, lse, delta)

    def side(ka, kb, va, vb):
        return pl.pallas_call(
            functools.partial(_dkv_kernel, **common), grid=(bh, n // bk),
            in_specs=[_full(n, d), _full(n, d), _specs(n, bk, d), _full(n, dv), _specs(n, bk, dv), _full(n, dv),
                      pl.BlockSpec((None, n), lambda b, i: (b, 0)), pl.BlockSpec((None, n), lambda b, i: (b, 0))],
            out_specs=[_specs(n, bk, d), _specs(n, bk, dv)],
            out_shape=[jax.ShapeDtypeStruct(kb.shape, kb.dtype), jax.ShapeDtypeStruct(vb.shape, vb.dtype)],
            interpret=interpret, name="tensor_attention_dkv")(q, ka, kb, va, vb, do, lse, delta)

    dk2, dv2 = side(k1, k2, v1, v2)
    dk1, dv1 = side(k2, k1, v2, v1)
    return dq, dk1, dk2, dv1, dv2


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9, 10))
def _attention(q, k1, k2, v1, v2, scale, causal, bq, bk, n_valid, interpret):
    return _forward(q, k1, k2, v1, v2, scale, causal, bq, bk, n_valid, interpret)[0]


def _attention_fwd(q, k1, k2, v1, v2, scale, causal, bq, bk, n_valid, interpret):
    o, lse = _forward(q, k1, k2, v1, v2, scale, causal, bq, bk, n_valid, interpret)
    return o, (q, k1, k2, v1, v2, o, lse)


def _attention_bwd(scale, causal, bq, bk, n_valid, interpret, res, do):
    return _backward(*res, do, scale, causal, bq, bk, n_valid, interpret)


_attention.defvjp(_attention_fwd, _attention_bwd)


def tensor_attention_pallas(q, k1, k2, v1, v2, *, scale: float | None = None, is_causal: bool = False,
                            block_q: int = 64, block_k: int = 64, interpret: bool = False):
    """Exact tensor attention as Pallas kernels (forward and custom-VJP backward).

    q, k1, k2: [B, n, H, d]; v1, v2: [B, n, H, dv] (same n for queries and keys). Returns [B, n, H, dv].
    n is padded to a multiple of the block sizes inside (the padding is masked). On GPU keep d, dv and the
    blocks powers of two >= 16 (Triton's dot).
    """
    check_rank("q", q, 4, "[batch, n, heads, d]")
    b, n, h, d = q.shape
    for name, x in (("k1", k1), ("k2", k2)):
        check_shape(name, x, q.shape, "[batch, n, heads, d] (like q)")
    check_rank("v1", v1, 4, "[batch, n, heads, dv]")
    check_shape("v1", v1, (b, n, h, None), "[batch, n, heads, dv]")
    check_shape("v2", v2, v1.shape, "[batch, n, heads, dv] (like v1)")
    for name, v in (("block_q", block_q), ("block_k", block_k)):
        if not (isinstance(v, int) and v > 0):
            fail(name, "a positive int", v)
    s = 1.0 / d if scale is None else float(scale)
    bq, bk = min(block_q, _next_pow2(n)), min(block_k, _next_pow2(n))
    multiple = max(bq, bk)
    if multiple % min(bq, bk):
        fail("block_q", f"a multiple or divisor of block_k={bk}", bq)
    pad = (-n) % multiple

    def prep(x):
        x = x.transpose(0, 2, 1, 3).reshape(b * h, n, x.shape[-1])
        return jnp.pad(x, ((0, 0), (0, pad), (0, 0))) if pad else x

    out = _attention(*(prep(x) for x in (q, k1, k2, v1, v2)), s, bool(is_causal), bq, bk, n, bool(interpret))
    return out[:, :n].reshape(b, h, n, -1).transpose(0, 2, 1, 3)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
