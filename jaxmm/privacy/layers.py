"""Linen cross-attention over a PRIVATE context (system prompt, retrieved documents) with (ε, δ)-DP
(2407.14717; maths in jaxmm.privacy.cross_attention).

The query side is public (the model's own tokens); the context's keys/values are projected, bounded and
released once per context through ``dp_cross_attention_init``; all query tokens read only that release.

Privacy accounting of the layer. One context = one private dataset whose rows are its tokens; neighbouring
contexts differ in one token. Each head releases its own feature sums, so the layer splits (ε, δ) evenly over
the heads (basic composition): every head gets (ε/h, δ/h). The key/value projections are parameters: they must
be trained on PUBLIC data (or with DP training) — this layer privatises inference over the context only.
Bounds: with ``squash=True`` (default) the projected keys/values pass through R·tanh(·/R) so the bounds hold
by construction; with ``squash=False`` they are clipped at init and the counts are sown into the
"intermediates" collection ("n_clipped_k", "n_clipped_v"), never silently. Those counts are a PRIVATE debug
report (noise-free statistics of the context): they are not part of the release; do not publish them.

Importing this module also registers the attention kind "dp" (`DPSelfAttention`) for
`BlockConfig(attention="dp", attention_args={...})`.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmm.nn.transformer import BlockConfig, register_attention_kind
from jaxmm.checks import fail
from jaxmm.privacy.cross_attention import clip_counts, dp_cross_attention, dp_cross_attention_init


class DPCrossAttention(nn.Module):
    """x [batch, lq, features] (public) × context [batch, n, context_features] (private) -> [batch, lq, out].

    Attributes: num_heads, head_dim; epsilon (math.inf = no noise: the polynomial-attention model, NOT
    private), delta; bound_qk (R, keys and queries), bound_v (R_w); degree (Taylor degree g); method
    ("release" = one-shot feature sums, "tree" = DPTreeSoftmax); scale (default 1/head_dim, PAPERS.md §3).
    The PRNG for the release comes from the "dp" stream (``apply(..., rngs={"dp": key})``).
    """

    num_heads: int = 1
    head_dim: int = 8
    out_features: int | None = None
    epsilon: float = 1.0
    delta: float = 1e-5
    bound_qk: float = 1.0
    bound_v: float = 1.0
    degree: int = 2
    method: str = "release"
    scale: float | None = None
    squash: bool = True
    n_bins: int | None = None

    @nn.compact
    def __call__(self, x, context):
        if x.ndim != 3 or context.ndim != 3 or x.shape[0] != context.shape[0]:
            raise ValueError(f"x, context: expected [batch, lq, features] and [batch, n, context_features] with "
                             f"the same batch, got shapes {x.shape} and {context.shape}")
        h, hd = self.num_heads, self.head_dim
        dense = lambda name: nn.DenseGeneral((h, hd), name=name)  # noqa: E731
        q = dense("query")(x)  # [b, lq, h, hd]
        k = dense("key")(context)  # [b, n, h, hd]
        v = dense("value")(context)
        # public queries: keep them inside the same bound the accuracy guarantee assumes (not a privacy step)
        q = self.bound_qk * jnp.tanh(q / self.bound_qk)
        if self.squash:
            k = self.bound_qk * jnp.tanh(k / self.bound_qk)
            v = self.bound_v * jnp.tanh(v / self.bound_v)
        eps = self.epsilon / h if math.isfinite(self.epsilon) else math.inf
        delta = self.delta / h
        b = x.shape[0]
        rng = self.make_rng("dp") if math.isfinite(self.epsilon) else jax.random.key(0)
        keys = jax.random.split(rng, b * h).reshape(b, h)

        def one(key, kk, vv, qq):  # kk [n, hd], vv [n, hd], qq [lq, hd]
            st = dp_cross_attention_init(key, kk, vv, epsilon=eps, delta=delta, bound_qk=self.bound_qk,
                                         bound_v=self.bound_v, degree=self.degree, scale=self.scale,
                                         method=self.method, n_bins=self.n_bins)
            ck, cv = clip_counts(kk, vv, bound_qk=self.bound_qk, bound_v=self.bound_v)  # private debug only
            return dp_cross_attention(st, qq), ck, cv

        per_head = jax.vmap(one, in_axes=(0, 1, 1, 1), out_axes=(1, 0, 0))  # over heads
        out, ck, cv = jax.vmap(per_head)(keys, k, v, q)  # out [b, lq, h, hd]
        self.sow("intermediates", "n_clipped_k", jnp.sum(ck))
        self.sow("intermediates", "n_clipped_v", jnp.sum(cv))
        return nn.DenseGeneral(self.out_features or x.shape[-1], axis=(-2, -1), name="out")(out)


DP_KIND_DEFAULTS = {"epsilon": 1.0, "delta": 1e-5, "bound_qk": 1.0, "bound_v": 1.0, "degree": 2, "method": "release",
                    "scale": None, "squash": True, "n_bins": None}


class DPSelfAttention(nn.Module):
    """The attention kind "dp": every token reads an (ε, δ)-DP release of the block's own keys and values
    (`DPCrossAttention` with context = x; arguments from BlockConfig.attention_args, defaults
    `DP_KIND_DEFAULTS`; heads and head size from the BlockConfig). x [B, L, D] -> [B, L, D].

    The release is one feature sum over all tokens: there is no causal rule, no pair mask and no KV cache, so
    `is_causal`, `mask` and `decode` are refused (use it in encoder blocks, e.g. the ViT). The "dp" PRNG stream
    is needed unless epsilon is infinite."""

    config: BlockConfig

    @nn.compact
    def __call__(self, x, *, mask=None, positions=None, is_causal: bool = False, deterministic: bool = True,
                 decode: bool = False, max_length: int | None = None):
        del positions, deterministic, max_length
        for name, value in (("is_causal", is_causal), ("decode", decode), ("mask", mask is not None)):
            if value:
                fail(name, "False/None for attention='dp' (one private release over all tokens)", value)
        cfg = self.config
        return DPCrossAttention(num_heads=cfg.num_heads, head_dim=cfg.resolved_head_dim, out_features=cfg.d_model,
                                name="dp", **cfg.kind_args())(x, x)


register_attention_kind("dp", module=lambda cfg, name: DPSelfAttention(cfg, name=name), defaults=DP_KIND_DEFAULTS)
