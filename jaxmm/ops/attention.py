"""Scaled dot-product attention with backend dispatch.

Layout everywhere: q [B, Lq, H, d], k and v [B, Lk, Hkv, d] with Hkv dividing H (MHA: Hkv = H; GQA; MQA: Hkv = 1).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmm.ops._checks import check_rank, check_scale, fail

IMPLEMENTATIONS = (None, "xla", "cudnn", "pallas")


def _check_qkv(q, k, v):
    check_rank("q", q, 4, "[batch, q_length, heads, head_dim]")
    check_rank("k", k, 4, "[batch, kv_length, kv_heads, head_dim]")
    check_rank("v", v, 4, "[batch, kv_length, kv_heads, head_dim]")
    for name, x in (("q", q), ("k", k), ("v", v)):   # integer inputs would silently give all-zero attention
        if not jnp.issubdtype(x.dtype, jnp.floating):
            fail(name, "a floating-point array (float32, bfloat16, float16, ...)", f"dtype {x.dtype}")
    b, _, h, d = q.shape
    if k.shape[0] != b or k.shape[3] != d:
        fail("k", f"batch {b} and head_dim {d} like q {q.shape}", f"shape {k.shape}")
    if v.shape[:3] != k.shape[:3]:
        fail("v", f"[batch, kv_length, kv_heads] = {k.shape[:3]} like k", f"shape {v.shape}")
    if h % k.shape[2]:
        fail("k", f"a number of kv heads dividing the {h} query heads", f"{k.shape[2]} kv heads")


def causal_mask(q_len: int, kv_len: int, q_offset=None):
    """Boolean [q_len, kv_len] (or [B, q_len, kv_len] if q_offset is [B]): query i attends key j iff
    j <= q_offset + i. Default offset kv_len - q_len aligns the last query with the last key."""
    offset = kv_len - q_len if q_offset is None else q_offset
    qi = jnp.arange(q_len)[:, None]
    kj = jnp.arange(kv_len)[None, :]
    if jnp.ndim(offset) == 0:
        return kj <= qi + offset
    return kj[None] <= qi[None] + jnp.asarray(offset)[:, None, None]


def _broadcast_mask(mask, b, h, lq, lk, name):
    """Accept [Lq, Lk], [B, Lk] (key padding), [B, 1|H, Lq, Lk] or [B, Lq, Lk]; return [B, 1|H, Lq, Lk]."""
    mask = jnp.asarray(mask)
    if mask.ndim == 2 and mask.shape == (b, lk) and (lq, lk) != (b, lk):
        mask = mask[:, None, None, :]
    elif mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[-2:] not in ((lq, lk), (1, lk)) or mask.shape[1] not in (1, h):
        fail(name, f"a mask broadcastable to [batch={b}, heads={h}, q_length={lq}, kv_length={lk}] "
                   f"(or a [batch, kv_length] key-padding mask)", f"shape {mask.shape}")
    return mask


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


def default_implementation() -> str:
    """The best attention that runs on the current default backend: cuDNN on NVIDIA, Pallas on TPU, XLA else."""
    backend = jax.default_backend()
    if backend == "gpu":
        kind = str(getattr(jax.devices()[0], "device_kind", "")).lower()
        return "xla" if ("amd" in kind or "radeon" in kind or "instinct" in kind) else "cudnn"
    if backend == "tpu":
        return "pallas"
    return "xla"


def dot_product_attention(q, k, v, *, bias=None, mask=None, is_causal: bool = False, scale: float | None = None,
                          implementation: str | None = None):
    """softmax(q kᵀ·scale + bias, masked) v.

    q: [B, Lq, H, d]; k, v: [B, Lk, Hkv, d] (Hkv divides H: MHA, GQA, MQA). Returns [B, Lq, H, d].
    bias: broadcastable to [B, H, Lq, Lk] (float, added to the logits).
    mask: boolean, True = attend; [B, Lk] key padding, [Lq, Lk], [B, Lq, Lk] or [B, 1|H, Lq, Lk]. A float
      mask is refused (an additive 0/−inf mask goes in `bias`). q, k, v must be floating point.
    is_causal: query i sees keys j <= i + (Lk - Lq) (bottom-right aligned, which is what a KV cache needs).
    scale: default 1/sqrt(d); a given scale must be finite and > 0.
    implementation: None (best for the backend), "xla" (portable; logits and softmax in float32), "cudnn"
      (`jax.nn.dot_product_attention` cuDNN path; NVIDIA GPUs, fp16/bf16), "pallas" (jaxmm's flash kernel on
      GPU/TPU; on CPU it runs in interpret mode, slowly, for testing).
    A query row that sees no key returns zeros.
    """
    _check_qkv(q, k, v)
    if implementation not in IMPLEMENTATIONS:
        fail("implementation", f"one of {IMPLEMENTATIONS}", repr(implementation))
    b, lq, h, d = q.shape
    lk = k.shape[1]
    scale = d ** -0.5 if scale is None else check_scale(scale)
    if mask is not None:
        if jnp.asarray(mask).dtype != jnp.bool_:   # a 0/-inf float mask read as boolean would invert it
            fail("mask", "a boolean array (True = attend); pass additive float masks as `bias`",
                 f"dtype {jnp.asarray(mask).dtype}")
        mask = _broadcast_mask(mask, b, h, lq, lk, "mask")
    if bias is not None:
        bias = jnp.asarray(bias)
        if bias.ndim == 2:
            bias = bias[None, None]
        if bias.ndim != 4:
            fail("bias", f"an array broadcastable to [batch, heads, {lq}, {lk}]", f"shape {bias.shape}")
    impl = implementation or default_implementation()
    if impl == "pallas":
        if bias is not None or mask is not None or lq != lk:
            if implementation == "pallas":
                fail("implementation", "'pallas' only without bias/mask and with q_length == kv_length "
                     "(use 'xla' or 'cudnn')", f"bias={bias is not None}, mask={mask is not None}, {lq=}, {lk=}")
            impl = "xla"  # automatic choice: the kernel does not cover this case
        else:
            from jaxmm.kernels.flash_attention import flash_attention

            return flash_attention(q, k, v, is_causal=is_causal, scale=scale)
    if impl == "cudnn" and implementation is None and q.dtype not in (jnp.float16, jnp.bfloat16):
        impl = "xla"  # automatic choice: cuDNN's fused attention takes only fp16/bf16 (float32 models use XLA)
    if impl == "cudnn":
        if is_causal and lq != lk:  # jax.nn's causal mask is top-left aligned; ours is bottom-right
            cm = causal_mask(lq, lk)[None, None]
            mask, is_causal = (cm if mask is None else mask & cm), False
        return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=is_causal, scale=scale,
                                            implementation="cudnn")
    if is_causal:
        cm = causal_mask(lq, lk)[None, None]
        mask = cm if mask is None else mask & cm
    return _xla_attention(q, k, v, bias, mask, scale)
