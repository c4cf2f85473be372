"""Multi-head tensor (2-simplicial) attention layer (2405.16411) over jaxmm.ops.tensor_attention.

x [B, L, D] -> [B, L, D]. Params: q, k1, k2, v1, v2, o (jaxmm.nn.layers.Dense, flattened heads·head_dim, the
same logical axes as `Attention`). The transformer block builds it when `BlockConfig.attention == "tensor"`
(the kind "tensor", registered here) and calls it with Attention's signature.

Choices (not in the paper, which has no layer): no rotary embedding — RoPE's relative-position identity
⟨R_i q, R_j k⟩ = ⟨q, R_{j−i} k⟩ has no analogue for the trilinear form Σ_l q_l a_l b_l, so `positions` is
accepted and ignored; value width = head_dim. [reconstruction]
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxmm.attention import tensor_attention
from jaxmm.nn.transformer import BlockConfig, register_attention_kind
from jaxmm.checks import check_rank, fail
from jaxmm.ops.attention import attention_mask


def _key_mask(mask, b, h, length):
    """A key-padding mask (any form `attention_mask` accepts that reduces to [B|1, 1, 1, L]) as bool [B, L];
    pair masks (causal, per query) do not factor over (j, k) and are refused."""
    mask = attention_mask(mask, b, h, length, length)
    if mask is None:
        return None
    if mask.shape[1:3] != (1, 1):
        fail("mask", f"a key-padding mask of shape ({b}, {length}) or ({b}, 1, 1, {length}) for tensor attention",
             f"shape {mask.shape}")
    return jnp.broadcast_to(mask[:, 0, 0], (b, length))


class TensorAttention(nn.Module):
    """Tensor attention with `config.num_heads` heads of size `config.resolved_head_dim`.

    method / degree / scale: "exact" (default) or "poly" with Taylor degree `degree`; scale default 1/d. Inside a
    transformer `Block` (BlockConfig.attention = "tensor") they come from BlockConfig.attention_args.
    Backend: `config.implementation` (jaxmm.attention vocabulary).
    """

    config: BlockConfig
    method: str = "exact"
    degree: int = 2
    scale: float | None = None

    @nn.compact
    def __call__(self, x, *, mask=None, positions=None, is_causal: bool = False, deterministic: bool = True,
                 decode: bool = False, max_length: int | None = None):
        del positions, max_length  # no rotary embedding (module docstring)
        cfg = self.config
        check_rank("x", x, 3, "[batch, length, d_model]")
        if decode:
            fail("decode", "False (tensor attention keeps no KV cache)", decode)
        method, degree, scale = self.method, self.degree, self.scale
        b, length, _ = x.shape
        h, d = cfg.num_heads, cfg.resolved_head_dim
        qb, kb, vb = cfg.biases
        proj = {name: cfg.dense(name, h * d, bias, ("embed", "heads"))(x, deterministic).reshape(b, length, h, d)
                for name, bias in (("q", qb), ("k1", kb), ("k2", kb), ("v1", vb), ("v2", vb))}
        out = tensor_attention(proj["q"], proj["k1"], proj["k2"], proj["v1"], proj["v2"], scale=scale,
                                  method=method, degree=degree if method == "poly" else None,
                                  is_causal=is_causal, key_mask=_key_mask(mask, b, h, length),
                                  implementation=cfg.implementation)
        return cfg.dense("o", cfg.d_model, cfg.out_bias, ("heads", "embed"))(out.reshape(b, length, h * d),
                                                                          deterministic)


def _tensor_module(cfg: BlockConfig, name: str):
    args = cfg.kind_args()
    return TensorAttention(cfg, method=args["method"], degree=args["degree"], scale=args["scale"], name=name)


register_attention_kind("tensor", module=_tensor_module, defaults={"method": "exact", "degree": 2, "scale": None})
