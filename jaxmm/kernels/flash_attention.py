"""Flash attention in Pallas (forward + backward) that returns the log-sum-exp; causal and grouped-query.

Layout [B, L, H, d] (k, v: [B, L', Hkv, d], Hkv divides H; query head h reads kv head h // (H / Hkv)).
Reference: `jaxmm.ops.flash.flash_attention_xla` (and `jaxmm.ops.attention.dot_product_attention`).

Forward (grid B × H × query blocks): online softmax over key blocks; causal runs stop at the diagonal. An
optional prefix epilogue merges NTK-Attention's virtual prefix key (c = φ(q)Z, w = φ(q)·|k|) into the running
softmax state before normalising, so NTK-Attention costs one extra [block_q, d] × [d, d] product per block.
Backward: the standard FA2 pair — a dq kernel (grid B × H × query blocks) and a dk/dv kernel (grid B × H × key
blocks; GQA groups summed afterwards) — driven by (out, lse, do), plus an lse cotangent: ∂lse_i/∂s_ij = p_ij, so
dS = P ∘ (dP − δ + dlse). With out = NTK output and lse = lse' this is also NTK-Attention's real-key backward.

Lengths that are not multiples of the blocks are zero-padded; padded keys are masked in the kernel.
Runs with interpret=True anywhere (the CPU tests); compiled through the Pallas Triton lowering on NVIDIA GPUs
(lowered for an abstract H100 in tests/kernels/test_lowering.py). Not for TPU: its blocks do not satisfy Mosaic
TPU's (8, 128) tiling; `jaxmm.attention` uses JAX's own Pallas TPU flash attention there.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jaxmm.checks import check_positive, fail
from jaxmm.ops.attention import check_qkv

_NEG = -1e30   # finite "minus infinity" for masked logits: every row sees key 0 first, so no row is all-masked


def _dot(a, b, contract_a: int, contract_b: int):
    return lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())), preferred_element_type=jnp.float32)


def _masked(s, q_start, k_start, *, block_q, block_k, is_causal, lk, pad_k):
    if not (is_causal or pad_k):
        return s
    rows = q_start + lax.broadcasted_iota(jnp.int32, (block_q, block_k), 0)
    cols = k_start + lax.broadcasted_iota(jnp.int32, (block_q, block_k), 1)
    keep = cols < lk
    if is_causal:
        keep = keep & (cols <= rows)
    return jnp.where(keep, s, _NEG)


def _num_k_blocks(i, *, block_q, block_k, nk, is_causal):
    if not is_causal:
        return nk
    # int32 throughout: under jax_enable_x64 a Python int becomes int64 and pl.cdiv's lax.div rejects the mix
    i = jnp.asarray(i, jnp.int32)
    return jnp.minimum(jnp.int32(nk), ((i + 1) * jnp.int32(block_q) + jnp.int32(block_k - 1)) // jnp.int32(block_k))


# --------------------------------------------------------------------------------------------- forward
def _fwd_kernel(*refs, scale, is_causal, block_q, block_k, lk, nk, pad_k, prefix, head_dim):
    if prefix:
        q_ref, k_ref, v_ref, z_ref, kvec_ref, o_ref, lse_ref = refs
    else:
        q_ref, k_ref, v_ref, o_ref, lse_ref = refs
    i = pl.program_id(2)
    q = q_ref[...]
    mask = functools.partial(_masked, q_start=i * block_q, block_q=block_q, block_k=block_k,
                             is_causal=is_causal, lk=lk, pad_k=pad_k)

    def body(j, carry):
        m, l, acc = carry
        k = k_ref[pl.ds(j * block_k, block_k), :]
        v = v_ref[pl.ds(j * block_k, block_k), :]
        s = mask(_dot(q, k, 1, 1) * scale, k_start=j * block_k)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        p = jnp.exp(s - m_new[:, None])
        alpha = jnp.exp(m - m_new)
        l = alpha * l + jnp.sum(p, axis=1)
        acc = alpha[:, None] * acc + _dot(p.astype(v.dtype), v, 1, 0)
        return m_new, l, acc

    init = (jnp.full((block_q,), _NEG, jnp.float32), jnp.zeros((block_q,), jnp.float32),
            jnp.zeros((block_q, head_dim), jnp.float32))
    m, l, acc = lax.fori_loop(0, _num_k_blocks(i, block_q=block_q, block_k=block_k, nk=nk, is_causal=is_causal),
                              body, init)
    if prefix:   # the virtual prefix key: logit log w, value c / w (exact, never exp of a positive number)
        x = q.astype(jnp.float32) / head_dim ** 0.25
        pq = jnp.where(x > 0, x + 1.0, jnp.exp(jnp.minimum(x, 0.0)))          # φ(q) = ELU(x) + 1
        c = _dot(pq, z_ref[...].astype(jnp.float32), 1, 0)
        w = jnp.sum(pq * jnp.abs(kvec_ref[...].astype(jnp.float32))[None, :], axis=1)
        m_new = jnp.maximum(m, jnp.log(w))
        alpha, e = jnp.exp(m - m_new), jnp.exp(-m_new)
        l = alpha * l + w * e
        acc = alpha[:, None] * acc + e[:, None] * c
        m = m_new
    o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log(l)


def _interpret_default(interpret):
    return jax.default_backend() == "cpu" if interpret is None else bool(interpret)


def _compiler_params(head_dim, interpret):
    if interpret:
        return None
    # compiled means the Triton (GPU) lowering: also when lowering for CUDA from a CPU host
    from jax.experimental.pallas import triton as pltriton
    return pltriton.CompilerParams(num_warps=4 if head_dim <= 64 else 8, num_stages=2)


def _pad_len(x, to):
    pad = to - x.shape[1]
    return x if pad == 0 else jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))


def _blocks(lq, lk, block_q, block_k):
    check_positive("block_q", block_q)
    check_positive("block_k", block_k)
    bq = min(block_q, max(16, pl.next_power_of_2(lq)))
    bk = min(block_k, max(16, pl.next_power_of_2(lk)))
    return bq, bk, pl.cdiv(lq, bq) * bq, pl.cdiv(lk, bk) * bk


def flash_forward(q, k, v, *, scale, is_causal, block_q, block_k, interpret, z=None, kvec=None):
    """Pallas forward: (o [B, Lq, H, d] in q.dtype, lse [B, H, Lq] float32). With z, kvec: NTK epilogue."""
    b, lq, h, d, lk, hkv = check_qkv(q, k, v, is_causal=is_causal, causal_equal_lengths=True)
    g = h // hkv
    interpret = _interpret_default(interpret)
    bq, bk, lq_p, lk_p = _blocks(lq, lk, block_q, block_k)
    qp, kp, vp = _pad_len(q, lq_p), _pad_len(k, lk_p), _pad_len(v, lk_p)
    prefix = z is not None
    kernel = functools.partial(_fwd_kernel, scale=scale, is_causal=is_causal, block_q=bq, block_k=bk, lk=lk,
                               nk=lk_p // bk, pad_k=lk_p != lk, prefix=prefix, head_dim=d)
    kv_spec = pl.BlockSpec((None, lk_p, None, d), lambda bi, hi, qi: (bi, 0, hi // g, 0))
    in_specs = [pl.BlockSpec((None, bq, None, d), lambda bi, hi, qi: (bi, qi, hi, 0)), kv_spec, kv_spec]
    args = [qp, kp, vp]
    if prefix:
        in_specs += [pl.BlockSpec((None, d, d), lambda bi, hi, qi: (hi, 0, 0)),
                     pl.BlockSpec((None, d), lambda bi, hi, qi: (hi, 0))]
        args += [z, kvec]
    o, lse = pl.pallas_call(
        kernel,
        grid=(b, h, lq_p // bq),
        in_specs=in_specs,
        out_specs=[pl.BlockSpec((None, bq, None, d), lambda bi, hi, qi: (bi, qi, hi, 0)),
                   pl.BlockSpec((None, None, bq), lambda bi, hi, qi: (bi, hi, qi))],
        out_shape=[jax.ShapeDtypeStruct((b, lq_p, h, d), q.dtype), jax.ShapeDtypeStruct((b, h, lq_p), jnp.float32)],
        compiler_params=_compiler_params(d, interpret),
        interpret=interpret,
        name="ntk_attention_fwd" if prefix else "flash_attention_fwd",
    )(*args)
    return o[:, :lq], lse[:, :, :lq]


# -------------------------------------------------------------------------------------------- backward
def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, *, scale, is_causal, block_q, block_k,
               lk, nk, pad_k, head_dim):
    i = pl.program_id(2)
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]

    def body(j, dq):
        k = k_ref[pl.ds(j * block_k, block_k), :]
        v = v_ref[pl.ds(j * block_k, block_k), :]
        s = _masked(_dot(q, k, 1, 1) * scale, i * block_q, j * block_k, block_q=block_q, block_k=block_k,
                    is_causal=is_causal, lk=lk, pad_k=pad_k)
        p = jnp.exp(s - lse[:, None])
        ds = p * (_dot(do, v, 1, 1) - delta[:, None])
        return dq + _dot(ds.astype(k.dtype), k, 1, 0)

    dq = lax.fori_loop(0, _num_k_blocks(i, block_q=block_q, block_k=block_k, nk=nk, is_causal=is_causal), body,
                       jnp.zeros((block_q, head_dim), jnp.float32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, scale, is_causal, block_q,
                block_k, lk, nq, pad_k, head_dim):
    j = pl.program_id(2)
    k, v = k_ref[...], v_ref[...]

    def body(i, carry):
        dk, dv = carry
        q = q_ref[pl.ds(i * block_q, block_q), :]
        do = do_ref[pl.ds(i * block_q, block_q), :]
        lse = lse_ref[pl.ds(i * block_q, block_q)]
        delta = delta_ref[pl.ds(i * block_q, block_q)]
        s = _masked(_dot(q, k, 1, 1) * scale, i * block_q, j * block_k, block_q=block_q, block_k=block_k,
                    is_causal=is_causal, lk=lk, pad_k=pad_k)
        p = jnp.exp(s - lse[:, None])
        dv = dv + _dot(p.astype(do.dtype), do, 0, 0)
        ds = p * (_dot(do, v, 1, 1) - delta[:, None])
        dk = dk + _dot(ds.astype(q.dtype), q, 0, 0)
        return dk, dv

    start = (j * block_k) // block_q if is_causal else 0
    zeros = jnp.zeros((block_k, head_dim), jnp.float32)
    dk, dv = lax.fori_loop(start, nq, body, (zeros, zeros))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def flash_backward(q, k, v, out, lse, do, *, scale, is_causal, block_q, block_k, interpret, dlse=None):
    """Standard flash backward given (out, lse [B, H, Lq]) and the output cotangent `do` (plus an optional
    lse cotangent `dlse` [B, H, Lq]). Returns dq, dk, dv in the input dtypes."""
    b, lq, h, d, lk, hkv = check_qkv(q, k, v, is_causal=is_causal, causal_equal_lengths=True)
    g = h // hkv
    interpret = _interpret_default(interpret)
    bq, bk, lq_p, lk_p = _blocks(lq, lk, block_q, block_k)
    delta = jnp.einsum("blhd,blhd->bhl", out.astype(jnp.float32), do.astype(jnp.float32))
    if dlse is not None:
        delta = delta - dlse.astype(jnp.float32)
    qp, dop, kp, vp = _pad_len(q, lq_p), _pad_len(do, lq_p), _pad_len(k, lk_p), _pad_len(v, lk_p)
    padrow = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, lq_p - lq)))
    lse_p, delta_p = padrow(lse.astype(jnp.float32)), padrow(delta)       # padded rows: do = 0 -> no effect
    common = dict(scale=scale, is_causal=is_causal, block_q=bq, block_k=bk, lk=lk, pad_k=lk_p != lk, head_dim=d)
    params = _compiler_params(d, interpret)

    kv_full = pl.BlockSpec((None, lk_p, None, d), lambda bi, hi, qi: (bi, 0, hi // g, 0))
    q_blk = pl.BlockSpec((None, bq, None, d), lambda bi, hi, qi: (bi, qi, hi, 0))
    row_blk = pl.BlockSpec((None, None, bq), lambda bi, hi, qi: (bi, hi, qi))
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, nk=lk_p // bk, **common),
        grid=(b, h, lq_p // bq),
        in_specs=[q_blk, kv_full, kv_full, q_blk, row_blk, row_blk],
        out_specs=q_blk,
        out_shape=jax.ShapeDtypeStruct((b, lq_p, h, d), q.dtype),
        compiler_params=params, interpret=interpret, name="flash_attention_dq",
    )(qp, kp, vp, dop, lse_p, delta_p)

    q_full = pl.BlockSpec((None, lq_p, None, d), lambda bi, hi, ki: (bi, 0, hi, 0))
    kv_blk = pl.BlockSpec((None, bk, None, d), lambda bi, hi, ki: (bi, ki, hi // g, 0))
    row_full = pl.BlockSpec((None, None, lq_p), lambda bi, hi, ki: (bi, hi, 0))
    dkv_blk = pl.BlockSpec((None, bk, None, d), lambda bi, hi, ki: (bi, ki, hi, 0))   # per query head
    acc_dtype = k.dtype if g == 1 else jnp.float32
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, nq=lq_p // bq, **common),
        grid=(b, h, lk_p // bk),
        in_specs=[q_full, kv_blk, kv_blk, q_full, row_full, row_full],
        out_specs=[dkv_blk, dkv_blk],
        out_shape=[jax.ShapeDtypeStruct((b, lk_p, h, d), acc_dtype)] * 2,
        compiler_params=params, interpret=interpret, name="flash_attention_dkv",
    )(qp, kp, vp, dop, lse_p, delta_p)
    if g > 1:   # sum the query heads of each kv group
        dk = dk.reshape(b, lk_p, hkv, g, d).sum(3)
        dv = dv.reshape(b, lk_p, hkv, g, d).sum(3)
    return dq[:, :lq], dk[:, :lk].astype(k.dtype), dv[:, :lk].astype(v.dtype)


# --------------------------------------------------------------------------------------- public op
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _flash(q, k, v, scale, is_causal, block_q, block_k, interpret):
    return _flash_fwd(q, k, v, scale, is_causal, block_q, block_k, interpret)[0]


def _flash_fwd(q, k, v, scale, is_causal, block_q, block_k, interpret):
    o, lse = flash_forward(q, k, v, scale=scale, is_causal=is_causal, block_q=block_q, block_k=block_k,
                           interpret=interpret)
    return (o, lse), (q, k, v, o, lse)


def _flash_bwd(scale, is_causal, block_q, block_k, interpret, res, cts):
    q, k, v, o, lse = res
    do, dlse = cts
    return flash_backward(q, k, v, o, lse, do, scale=scale, is_causal=is_causal, block_q=block_q,
                          block_k=block_k, interpret=interpret, dlse=dlse)


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q, k, v, *, is_causal=False, scale=None, return_lse=False, block_q=128, block_k=128,
                    interpret=None):
    """softmax(Q Kᵀ · scale [+ causal mask]) V for q [B, L, H, d], k, v [B, L', Hkv, d] (GQA).

    Returns o [B, L, H, d] (q.dtype), and with return_lse=True also lse [B, L, H] (float32, natural log of the
    scaled logits; differentiable). interpret: None = interpret mode on CPU, compiled elsewhere.
    """
    check_qkv(q, k, v, is_causal=is_causal, causal_equal_lengths=True)
    if not jnp.issubdtype(q.dtype, jnp.floating):
        fail("q", "a floating-point array", f"dtype {q.dtype}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    o, lse = _flash(q, k, v, scale, bool(is_causal), int(block_q), int(block_k), interpret)
    return (o, jnp.transpose(lse, (0, 2, 1))) if return_lse else o
