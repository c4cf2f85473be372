"""The one-layer Match3 model of the tensor-attention experiments (arXiv 2405.16411; Sanford et al.'s Match3):
token ids [B, n] -> embedding -> pre-norm residual attention (softmax, exact tensor or polynomial tensor
attention) -> pre-norm residual MLP -> LayerNorm -> one logit per token [B, n]."""
from __future__ import annotations

import flax.linen as nn

from jaxmm.checks import fail

KINDS = ("softmax", "tensor", "tensor_poly")


class Match3Model(nn.Module):
    kind: str            # "softmax" | "tensor" (exact) | "tensor_poly" (polynomial method, `poly_degree`)
    vocab: int           # the modulus M (tokens are 0 … M−1)
    width: int = 32
    heads: int = 4
    mlp_dim: int = 64
    poly_degree: int = 3
    tensor_scale: float | None = None  # None: 1/head_dim (the paper)

    @nn.compact
    def __call__(self, tokens):
        from jaxmm.nn.layers import Embed
        from jaxmm.nn.tensor_attention import TensorAttention
        from jaxmm.nn.transformer import MLP, Attention, BlockConfig

        if self.kind not in KINDS:
            fail("kind", f"one of {KINDS}", repr(self.kind))
        cfg = BlockConfig(d_model=self.width, num_heads=self.heads, mlp_dim=self.mlp_dim, rope_theta=None,
                          norm="layer", mlp="gelu")
        h = Embed(self.vocab, self.width, name="embed")(tokens)
        a = nn.LayerNorm(name="attn_norm")(h)
        if self.kind == "softmax":
            h = h + Attention(cfg, name="attn")(a)
        else:
            method = "poly" if self.kind == "tensor_poly" else "exact"
            h = h + TensorAttention(cfg, method=method, degree=self.poly_degree, scale=self.tensor_scale,
                                    name="attn")(a)
        h = h + MLP(cfg, name="mlp")(nn.LayerNorm(name="mlp_norm")(h))
        return nn.Dense(1, name="head")(nn.LayerNorm(name="out_norm")(h))[..., 0]
