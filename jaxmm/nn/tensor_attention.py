"""Multi-head tensor (2-simplicial) attention layer (2405.16411) over jaxmm.ops.tensor_attention.

x [B, L, D] -> [B, L, D]. Params: q, k1, k2, v1, v2, o (jaxmm.nn.layers.Dense, flattened heads·head_dim, the
same logical axes as `Attention`). The transformer block builds it when `BlockConfig.attention == "tensor"`
(jaxmm.nn.transformer.attention_module) and calls it with Attention's signature.

Choices (not in the paper, which has no layer): no rotary embedding — RoPE's relative-position identity
⟨R_i q, R_j k⟩ = ⟨q, R_{j−i} k⟩ has no analogue for the trilinear form Σ_l q_l a_l b_l, so `positions` is
accepted and ignored; value width = head_dim. [reconstruction]
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxmm.nn.transformer import BlockConfig
from jaxmm.ops.tensor import tensor_attention
from jaxmm.ops._checks import check_rank, fail


def _key_mask(mask, b, length):
    """Accept a key-padding mask ([B, L] or [B, 1, 1, L], True = attend); pair masks do not factor over (j, k)."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.ndim == 4 and mask.shape[1] == 1 and mask.shape[2] == 1:
        mask = mask[:, 0, 0]
    if mask.shape != (b, length):
        fail("mask", f"a key-padding mask of shape ({b}, {length}) or ({b}, 1, 1, {length}) for tensor attention",
             f"shape {mask.shape}")
    return mask.astype(bool)


class TensorAttention(nn.Module):
    """Tensor attention with `config.num_heads` heads of size `config.dim_head`.

    method / degree / scale: "exact" (default) or "poly" with Taylor degree `degree`; scale default 1/d. Inside a
    transformer `Block` (BlockConfig.attention = "tensor") they come from BlockConfig.tensor_method /
    tensor_degree / tensor_scale.
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
        h, d = cfg.num_heads, cfg.dim_head
        qb, kb, vb = cfg.biases
        proj = {name: cfg.dense(name, h * d, bias, ("embed", "heads"))(x, deterministic).reshape(b, length, h, d)
                for name, bias in (("q", qb), ("k1", kb), ("k2", kb), ("v1", vb), ("v2", vb))}
        out = tensor_attention(proj["q"], proj["k1"], proj["k2"], proj["v1"], proj["v2"], scale=scale,
                                  method=method, degree=degree if method == "poly" else None,
                                  is_causal=is_causal, key_mask=_key_mask(mask, b, length),
                                  implementation=cfg.tensor_implementation)
        return cfg.dense("o", cfg.d_model, cfg.out_bias, ("heads", "embed"))(out.reshape(b, length, h * d),
                                                                          deterministic)
