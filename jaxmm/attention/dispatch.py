"""The attention dispatch layer: one place that chooses the backend of every attention op, per lowering platform.

Layers: `jaxmm.ops` (reference maths in plain XLA) <- `jaxmm.kernels` (Pallas) <- this module <- `jaxmm.nn`.

One `implementation` vocabulary for every attention kind:
  None         the best path for the platform being lowered, chosen at LOWERING time with
               `jax.lax.platform_dependent`, so one traced function lowers right for CPU, CUDA and TPU (CI lowers
               the TPU and CUDA paths from a CPU machine, tests/test_lowering.py):
                 cpu, rocm, other  XLA (`jaxmm.ops`);
                 cuda              cuDNN (softmax, NTK: fp16/bf16, no general mask) or jaxmm's Pallas kernel (tensor
                                   attention), XLA otherwise. cuDNN needs its library when tracing: on a host without
                                   it (a CPU machine lowering for CUDA) the CUDA path is XLA (softmax, NTK);
                 tpu               JAX's Pallas TPU flash attention (`jax.experimental.pallas.ops.tpu`) for softmax
                                   attention without mask/bias when the lengths are multiples of 128, XLA otherwise;
                                   NTK and tensor attention: XLA (jaxmm's Pallas kernels have no Mosaic TPU variant).
  "xla"        the plain-XLA path of `jaxmm.ops` (blocked with a custom VJP for NTK and tensor attention);
  "reference"  the dense reference maths (forms the full score matrix; the ground truth in tests);
  "cudnn"      cuDNN (NVIDIA only; softmax and NTK);
  "pallas"     the Pallas kernel for the platform: jaxmm's kernels (Triton lowering) on GPUs, JAX's TPU flash
               attention on TPU (softmax; NTK/tensor have no TPU kernel and fail to lower there), interpret mode on
               CPU (slow; for tests).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
# At import time on purpose, on every backend: imported lazily inside the first trace of a self-attention that fits
# it (the platform branches are all traced), this module adds a JAX config value to the tracing context, so that
# first jitted function missed its cache and compiled a second time on its second call (JAX_EXPLAIN_CACHE_MISSES:
# "number of tracing context values differs"; 16-150 CPU s per UNet step / init in the Toffee run).
# tests/attention/test_dispatch_compile.py.
from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash

from jaxmm.kernels import flash_attention as flash_kernel
from jaxmm.kernels import ntk_attention as ntk_kernel
from jaxmm.kernels import tensor_attention as tensor_kernel
from jaxmm.ops import attention as attn_ops
from jaxmm.ops import ntk as ntk_ops
from jaxmm.ops import tensor as tensor_ops
from jaxmm.checks import check_scale, fail

IMPLEMENTATIONS = (None, "xla", "reference", "cudnn", "pallas")
_SUPPORTED = {
    "softmax": IMPLEMENTATIONS,
    "ntk": IMPLEMENTATIONS,
    "tensor": (None, "xla", "reference", "pallas"),
}
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
TPU_FLASH_BLOCK = 128   # JAX's TPU flash attention: default blocks of 128 along both lengths


def _check_implementation(kind: str, implementation):
    allowed = _SUPPORTED[kind]
    if implementation not in allowed:
        fail("implementation", f"one of {allowed} for {kind} attention", repr(implementation))


@functools.cache
def cudnn_available() -> bool:
    """True when cuDNN's fused attention can be traced here (an NVIDIA host with the cuDNN library)."""
    try:
        from jax._src.cudnn.fused_attention_stablehlo import check_cudnn_version   # private, but the only probe
        check_cudnn_version()
        return True
    except Exception:   # noqa: BLE001 — ImportError, RuntimeError("cuDNN is not detected."), ...
        return False


def per_platform(args: tuple, **branches):
    """Run `branches[platform](*args)` for the platform being lowered; `default` covers the rest. Identical
    branches collapse to a direct call (nothing to choose)."""
    fns = set(branches.values())
    if len(fns) == 1:
        return next(iter(fns))(*args)
    default = branches.pop("default")
    return jax.lax.platform_dependent(*args, default=default, **branches)


# ---------------------------------------------------------------------------------------- softmax attention
def tpu_flash_fits(q, k, *, bias, mask, is_causal) -> bool:
    """Shapes JAX's TPU flash attention takes with its default blocks (checked at trace time by that kernel)."""
    lq, lk = q.shape[1], k.shape[1]
    return (bias is None and mask is None and (lq == lk or not is_causal) and lq % TPU_FLASH_BLOCK == 0
            and lk % TPU_FLASH_BLOCK == 0 and q.dtype in (jnp.float32, jnp.bfloat16)
            and (q.shape[-1] <= 128 or q.shape[-1] % 128 == 0))   # the kernel refuses e.g. SD-1.5's head dim 160


def tpu_flash_attention(q, k, v, *, is_causal, scale):
    """JAX's Pallas TPU flash attention in jaxmm's layout ([B, L, H, d]; GQA by repeating the kv heads)."""
    g = q.shape[2] // k.shape[2]
    heads_first = lambda x: jnp.swapaxes(x, 1, 2)
    k, v = (jnp.repeat(x, g, axis=2) if g > 1 else x for x in (k, v))
    out = tpu_flash.flash_attention(heads_first(q), heads_first(k), heads_first(v), causal=is_causal,
                                    sm_scale=float(scale))
    return heads_first(out).astype(q.dtype)


def _cudnn_softmax(q, k, v, bias, mask, *, is_causal, scale):
    lq, lk = q.shape[1], k.shape[1]
    if is_causal and lq != lk:  # jax.nn's causal mask is top-left aligned; ours is bottom-right
        cm = attn_ops.causal_mask(lq, lk)[None, None]
        mask, is_causal = (cm if mask is None else mask & cm), False
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=is_causal, scale=scale,
                                        implementation="cudnn")


def _cudnn_softmax_fits(q):
    return cudnn_available() and q.dtype in (jnp.float16, jnp.bfloat16)


def dot_product_attention(q, k, v, *, bias=None, mask=None, is_causal: bool = False, scale: float | None = None,
                          implementation: str | None = None):
    """softmax(q kᵀ·scale + bias, masked) v with the backend chosen per platform (module docstring).

    Arguments, shapes and results as `jaxmm.ops.attention.dot_product_attention` (q [B, Lq, H, d]; k, v
    [B, Lk, Hkv, d]; boolean mask, True = attend; bottom-right aligned causal rule; rows that see no key give 0).
    implementation: None, "xla", "reference", "cudnn" or "pallas" ("pallas": no bias/mask, Lq = Lk).
    """
    _check_implementation("softmax", implementation)
    mask, bias, scale = attn_ops.prepare(q, k, v, bias=bias, mask=mask, scale=scale)
    lq, lk = q.shape[1], k.shape[1]
    args = (q, k, v, bias, mask)
    xla = functools.partial(attn_ops.xla_attention, is_causal=is_causal, scale=scale)
    xla_fn = lambda q, k, v, bias, mask: xla(q, k, v, bias=bias, mask=mask)  # noqa: E731
    cudnn_fn = functools.partial(_cudnn_softmax, is_causal=is_causal, scale=scale)
    tpu_fn = lambda q, k, v, bias, mask: tpu_flash_attention(q, k, v, is_causal=is_causal, scale=scale)  # noqa
    if implementation in ("xla", "reference"):
        return xla_fn(*args)
    if implementation == "cudnn":
        return cudnn_fn(*args)
    plain = bias is None and mask is None
    if implementation == "pallas":
        if not plain or lq != lk:
            fail("implementation", "'pallas' only without bias/mask and with q_length == kv_length "
                 "(use 'xla' or 'cudnn')", f"bias={bias is not None}, mask={mask is not None}, {lq=}, {lk=}")
        kernel = lambda interpret: (lambda q, k, v, bias, mask: flash_kernel.flash_attention(  # noqa: E731
            q, k, v, is_causal=is_causal, scale=scale, interpret=interpret))
        fits = tpu_flash_fits(q, k, bias=bias, mask=mask, is_causal=is_causal)
        return per_platform(args, cpu=kernel(True), tpu=tpu_fn if fits else kernel(False), cuda=kernel(False),
                            rocm=kernel(False), default=kernel(True))
    tpu_best = tpu_fn if tpu_flash_fits(q, k, bias=bias, mask=mask, is_causal=is_causal) else xla_fn
    cuda_best = cudnn_fn if _cudnn_softmax_fits(q) else xla_fn
    return per_platform(args, tpu=tpu_best, cuda=cuda_best, default=xla_fn)


def prefix_attention(q, k, v, k_prefix, v_prefix, *, mask=None, is_causal: bool = False, scale=None,
                     implementation: str | None = None):
    """Prefix attention (P-Tuning v2): softmax attention over [prefix; keys], the prefix visible to every query,
    mask and causal rule on the real keys only (`jaxmm.ops.attention.prefix_attention`), dispatched like
    `dot_product_attention`."""
    kk, vv, full = attn_ops.prefix_keys(q, k, v, k_prefix, v_prefix, mask=mask, is_causal=is_causal)
    return dot_product_attention(q, kk, vv, mask=full, scale=scale, implementation=implementation)


# ------------------------------------------------------------------------------------------------ NTK
def _cudnn_ntk_fits(q, k, mask, is_causal):
    d = q.shape[-1]
    return (cudnn_available() and mask is None and q.dtype in (jnp.bfloat16, jnp.float16) and d % 8 == 0
            and d <= 128 and not (is_causal and q.shape[1] != k.shape[1]))


def ntk_attention(q, k, v, z, kvec, *, is_causal: bool = False, scale=None, mask=None,
                  implementation: str | None = None, block_k: int = 512):
    """NTK-Attention (2406.14036) with the backend chosen per platform (module docstring). Arguments, shapes and
    maths as `jaxmm.ops.ntk.ntk_attention`; "pallas" and "cudnn" take no mask (and Lq = Lk when causal)."""
    _check_implementation("ntk", implementation)
    b, lq, h, d, lk, _ = attn_ops.check_qkv(q, k, v, is_causal=is_causal)
    if isinstance(z, (tuple, list)):
        z = ntk_ops.low_rank_z(z, h, d)
    ntk_ops.check_prefix_params(z, kvec, h, d)
    mask = attn_ops.attention_mask(mask, b, h, lq, lk, bias_hint=False)
    scale = 1.0 / math.sqrt(d) if scale is None else float(check_scale(scale))
    args = (q, k, v, z, kvec, mask)
    xla_fn = lambda q, k, v, z, kvec, mask: ntk_ops.ntk_attention(  # noqa: E731
        q, k, v, z, kvec, is_causal=is_causal, scale=scale, mask=mask, block_k=block_k)
    if implementation == "xla":
        return xla_fn(*args)
    if implementation == "reference":
        return ntk_ops.ntk_attention_reference(q, k, v, z, kvec, is_causal=is_causal, scale=scale, mask=mask)
    cudnn_fn = lambda q, k, v, z, kvec, mask: ntk_kernel.ntk_attention_cudnn(  # noqa: E731
        q, k, v, z, kvec, is_causal=is_causal, scale=scale)
    if implementation in ("pallas", "cudnn") and mask is not None:
        fail("mask", f"None with implementation={implementation!r} (use 'xla' or 'reference' for general masks)",
             "a mask")
    if implementation == "cudnn":
        return cudnn_fn(*args)
    if implementation == "pallas":
        attn_ops.check_qkv(q, k, v, is_causal=is_causal, causal_equal_lengths=True)
        kernel = lambda interpret: (lambda q, k, v, z, kvec, mask: ntk_kernel.ntk_attention_pallas(  # noqa
            q, k, v, z, kvec, is_causal=is_causal, scale=scale, interpret=interpret))
        return per_platform(args, cpu=kernel(True), cuda=kernel(False), rocm=kernel(False), tpu=kernel(False),
                            default=kernel(True))
    cuda_best = cudnn_fn if _cudnn_ntk_fits(q, k, mask, is_causal) else xla_fn
    return per_platform(args, cuda=cuda_best, default=xla_fn)   # TPU: XLA (no Mosaic NTK kernel yet)


# --------------------------------------------------------------------------------------- tensor attention
def tensor_attention(q, k1, k2, v1, v2, *, scale: float | None = None, method: str = "exact",
                     degree: int | None = None, is_causal: bool = False, key_mask=None,
                     implementation: str | None = None, block_q: int = 64, block_k: int = 64):
    """Tensor (2-simplicial) attention (2405.16411) with the backend chosen per platform (module docstring).
    Arguments, shapes and maths as `jaxmm.ops.tensor.tensor_attention`. implementation (method "exact"): None,
    "xla", "reference" (the naive Θ(n³d) evaluation) or "pallas" (no key_mask, n = m); method "poly" runs the
    XLA feature path (implementation None or "xla")."""
    _check_implementation("tensor", implementation)
    b, n, m, h, d, dv = tensor_ops.check_tensor_inputs(q, k1, k2, v1, v2, key_mask, is_causal)
    s = tensor_ops.check_tensor_options(d, method=method, degree=degree, scale=scale, block_q=block_q,
                                        block_k=block_k)
    if method == "poly" and implementation not in (None, "xla"):
        fail("implementation", "None or 'xla' for method='poly' (no kernel needed)", repr(implementation))
    xla_fn = lambda q, k1, k2, v1, v2: tensor_ops.tensor_attention(  # noqa: E731
        q, k1, k2, v1, v2, scale=scale, method=method, degree=degree, is_causal=is_causal, key_mask=key_mask,
        block_q=block_q, block_k=block_k)
    args = (q, k1, k2, v1, v2)
    if method != "exact" or implementation == "xla":
        return xla_fn(*args)
    if implementation == "reference":
        return tensor_ops.tensor_attention_reference(q, k1, k2, v1, v2, scale=s, is_causal=is_causal,
                                                     key_mask=key_mask)
    kernel_fits = key_mask is None and n == m
    kernel = lambda interpret: (lambda q, k1, k2, v1, v2: tensor_kernel.tensor_attention_pallas(  # noqa: E731
        q, k1, k2, v1, v2, scale=s, is_causal=bool(is_causal), interpret=interpret))
    if implementation == "pallas":
        if not kernel_fits:
            fail("implementation", "'pallas' only without key_mask and with n == m",
                 f"key_mask={key_mask is not None}, {n=}, {m=}")
        return per_platform(args, cpu=kernel(True), cuda=kernel(False), rocm=kernel(False), tpu=kernel(False),
                            default=kernel(True))
    return per_platform(args, cuda=kernel(False) if kernel_fits else xla_fn, default=xla_fn)  # TPU: XLA
