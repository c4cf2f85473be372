"""NTK-Attention kernels (2406.14036); maths and reference in `jaxmm.ops.ntk`.

`ntk_attention_pallas`: the Pallas flash forward with the prefix epilogue (the virtual key c = φ(q)Z,
w = φ(q)·|k| merged into the online softmax state in-kernel) and, as custom VJP, the Pallas flash backward fed
with the NTK output and the augmented log-sum-exp lse', plus the O(L d²) prefix terms in XLA.

`ntk_attention_cudnn` (NVIDIA): cuDNN flash attention with its log-sum-exp, the exact combine in XLA, and in the
backward cuDNN's own flash backward given (NTK output, lse') — built on jax's private cuDNN module
(`jax._src.cudnn.fused_attention_stablehlo`), because `jax.nn.dot_product_attention`'s public VJP ignores the
lse cotangent (shared/gpu/README.md). If that private entry point is missing the backward falls back to the
Pallas (Triton) backward.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxmm.kernels.flash_attention import flash_backward, flash_forward
from jaxmm.ops.attention import check_qkv
from jaxmm.ops.ntk import check_prefix_params, combine, prefix_terms, prefix_vjp


def _lse_blh(lse_bhl):
    return jnp.transpose(lse_bhl, (0, 2, 1))


# ----------------------------------------------------------------------------------------------- Pallas
@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9))
def _ntk_pallas(q, k, v, z, kvec, scale, is_causal, block_q, block_k, interpret):
    return _ntk_pallas_fwd(q, k, v, z, kvec, scale, is_causal, block_q, block_k, interpret)[0]


def _ntk_pallas_fwd(q, k, v, z, kvec, scale, is_causal, block_q, block_k, interpret):
    out, lse2 = flash_forward(q, k, v, scale=scale, is_causal=is_causal, block_q=block_q, block_k=block_k,
                              interpret=interpret, z=z, kvec=kvec)
    return out, (q, k, v, z, kvec, out, lse2)


def _ntk_pallas_bwd(scale, is_causal, block_q, block_k, interpret, res, do):
    q, k, v, z, kvec, out, lse2 = res
    dq, dk, dv = flash_backward(q, k, v, out, lse2, do, scale=scale, is_causal=is_causal, block_q=block_q,
                                block_k=block_k, interpret=interpret)
    dq_p, dz, dkvec = prefix_vjp(q, z, kvec, out, _lse_blh(lse2), do)
    return (dq.astype(jnp.float32) + dq_p).astype(q.dtype), dk, dv, dz, dkvec


_ntk_pallas.defvjp(_ntk_pallas_fwd, _ntk_pallas_bwd)


def ntk_attention_pallas(q, k, v, z, kvec, *, is_causal=False, scale=None, block_q=128, block_k=128,
                         interpret=None):
    """NTK-Attention through the Pallas flash kernels (shapes as `jaxmm.ops.ntk_attention`; no general mask).
    interpret: None = interpret mode on CPU, compiled (Triton lowering) on GPU."""
    b, lq, h, d, lk, hkv = check_qkv(q, k, v, is_causal=is_causal, causal_equal_lengths=True)
    check_prefix_params(z, kvec, h, d)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    return _ntk_pallas(q, k, v, z, kvec, scale, bool(is_causal), int(block_q), int(block_k), interpret)


# ------------------------------------------------------------------------------------------------ cuDNN
def _cudnn_module():
    from jax._src.cudnn import fused_attention_stablehlo as fa   # private: see the module docstring
    return fa


def _cudnn_forward(q, k, v, scale, is_causal):
    """cuDNN flash attention: (o [B, L, H, d], lse [B, H, L] float32)."""
    fa = _cudnn_module()
    mask_type = fa.MaskType.CAUSAL if is_causal else fa.MaskType.NO_MASK
    o, lse = fa.dot_product_attention(q, k, v, scale=scale, mask_type=mask_type, qkv_layout="BTNH",
                                      return_residual=True)
    return o, lse.astype(jnp.float32)


def _cudnn_backward(q, k, v, out, lse_bhl, do, scale, is_causal):
    """cuDNN's flash backward given (out, lse): the rule jax registers for its fused attention, called with our
    residuals in place of its own (same tuple layout as `_dot_product_attention_fwd_rule` builds)."""
    fa = _cudnn_module()
    mask_type = fa.MaskType.CAUSAL if is_causal else fa.MaskType.NO_MASK
    unused = jnp.zeros(0, dtype=q.dtype)
    res = (q, k, v, unused, unused, unused, unused, unused, unused, unused, (), lse_bhl, out)
    grads = fa._dot_product_attention_bwd_rule(scale, 42, 0.0, (False, False), mask_type,
                                               fa.AttentionLayout.BTNH.value, None, None,
                                               fa.check_cudnn_version(), False, res, do)
    return grads[0], grads[1], grads[2]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _ntk_cudnn(q, k, v, z, kvec, scale, is_causal, backward):
    return _ntk_cudnn_fwd(q, k, v, z, kvec, scale, is_causal, backward)[0]


def _ntk_cudnn_fwd(q, k, v, z, kvec, scale, is_causal, backward):
    o, lse = _cudnn_forward(q, k, v, scale, is_causal)
    out, lse2 = combine(o, _lse_blh(lse), *prefix_terms(q, z, kvec))
    out = out.astype(q.dtype)
    return out, (q, k, v, z, kvec, out, lse2)


def _ntk_cudnn_bwd(scale, is_causal, backward, res, do):
    q, k, v, z, kvec, out, lse2 = res
    lse_bhl = _lse_blh(lse2)
    if backward == "cudnn":
        dq, dk, dv = _cudnn_backward(q, k, v, out, lse_bhl, do, scale, is_causal)
    else:
        dq, dk, dv = flash_backward(q, k, v, out, lse_bhl, do, scale=scale, is_causal=is_causal, block_q=64,
                                    block_k=64, interpret=False)
    dq_p, dz, dkvec = prefix_vjp(q, z, kvec, out, lse2, do)
    return (dq.astype(jnp.float32) + dq_p).astype(q.dtype), dk, dv, dz, dkvec


_ntk_cudnn.defvjp(_ntk_cudnn_fwd, _ntk_cudnn_bwd)


def cudnn_backward_available() -> bool:
    try:
        return hasattr(_cudnn_module(), "_dot_product_attention_bwd_rule")
    except ImportError:
        return False


def ntk_attention_cudnn(q, k, v, z, kvec, *, is_causal=False, scale=None, backward=None):
    """NTK-Attention on NVIDIA GPUs from cuDNN flash attention (fp16/bf16 inputs). backward: "cudnn" (default
    when jax's private cuDNN backward rule is importable) or "pallas" (the Triton flash backward)."""
    b, lq, h, d, lk, hkv = check_qkv(q, k, v, is_causal=is_causal, causal_equal_lengths=True)
    check_prefix_params(z, kvec, h, d)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if backward is None:
        backward = "cudnn" if cudnn_backward_available() else "pallas"
    if backward not in ("cudnn", "pallas"):
        raise ValueError(f"backward: expected 'cudnn' or 'pallas', got {backward!r}")
    return _ntk_cudnn(q, k, v, z, kvec, scale, bool(is_causal), backward)
