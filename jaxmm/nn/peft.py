"""Parameter-efficient attention kinds for `jaxmm.nn.transformer.Attention`, chosen by `BlockConfig.attention`.

Importing this module registers two kinds with `register_attention_kind` (both work in the LLM and the ViT, with padding
masks, causal masks and the KV-cache decode path, since they receive the already projected, rotated and cached
q, k, v and the layer's mask):

"ntk"     NTK-Attention (arXiv 2406.14036, PAPERS.md §5): per head a trainable `ntk_z` [H, d, d] and `ntk_k` [H, d]
          (d² + d parameters per head) stand in for an infinitely long prefix:
              out = ( exp(S) V + φ(Q) Z ) / ( exp(S) 1 + φ(Q) |k| ),   S = Q Kᵀ/√d (masked),  φ(x) = ELU(x/d^¼) + 1
          computed by `jaxmm.attention.ntk_attention`. Argument `init` (BlockConfig.attention_args): "zeros"
          (the paper's choice: with Z = 0 and k = 0 the layer is exactly softmax attention, so a pre-trained
          model starts unchanged) or "normal" (N(0, 0.02²), breaks that symmetry).
"prefix"  P-Tuning v2 (Liu et al. 2022, "deep prompt tuning"): a trainable key/value prefix `prefix_k`,
          `prefix_v` [m, Hkv, d] (m = argument `length`, default 10) prepended to every layer's keys and values,
          visible to every query whatever the causal or padding mask. The prefix keys are used as stored (no
          rotary embedding): they have no position. Init N(0, 0.02²) [reconstruction: P-Tuning v2 trains the
          prefix directly or through an MLP reparameterisation; we train it directly].

The leaf names start with `ntk_` / `prefix_`, so the trainer puts them in the parameter groups `ntk` / `prefix`
(train/optim.py) and a PEFT run freezes everything else (see train/tasks/peft.py).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxmm import attention as attention_ops
from jaxmm.nn.transformer import register_attention_kind
from jaxmm.checks import check_positive, fail

NTK_INITS = {"zeros": nn.initializers.zeros, "normal": nn.initializers.normal(stddev=0.02)}
PREFIX_INIT = nn.initializers.normal(stddev=0.02)


def ntk_params(module: nn.Module, num_heads: int, head_dim: int, init: str = "zeros"):
    """Create (or fetch) `ntk_z` [H, d, d] and `ntk_k` [H, d] in `module`. The params are tiny (d² + d per head)
    and stay replicated (logical axis names None)."""
    if init not in NTK_INITS:
        fail("attention_args['init']", f"one of {sorted(NTK_INITS)} (ntk init)", repr(init))
    init_fn = NTK_INITS[init]
    z = module.param("ntk_z", nn.with_logical_partitioning(init_fn, (None, None, None)),
                     (num_heads, head_dim, head_dim), jnp.float32)
    k = module.param("ntk_k", nn.with_logical_partitioning(init_fn, (None, None)), (num_heads, head_dim), jnp.float32)
    return z, k


def ntk_attend(module, q, k, v, *, mask=None, is_causal=False):
    """ATTENTION_KINDS["ntk"]: NTK-Attention over projected q [B, L, H, d], k, v [B, Lk, Hkv, d]."""
    cfg = module.config
    h, d = q.shape[2], q.shape[3]
    z, kvec = ntk_params(module, h, d, cfg.kind_args()["init"])
    return attention_ops.ntk_attention(q, k, v, z, kvec, is_causal=is_causal, mask=mask,
                                       implementation=cfg.implementation)


def prefix_params(module: nn.Module, length: int, kv_heads: int, head_dim: int):
    """Create (or fetch) `prefix_k`, `prefix_v` [m, Hkv, d] in `module`."""
    check_positive("attention_args['length'] (prefix length)", length)
    init = nn.with_logical_partitioning(PREFIX_INIT, (None, None, None))
    pk = module.param("prefix_k", init, (length, kv_heads, head_dim), jnp.float32)
    pv = module.param("prefix_v", init, (length, kv_heads, head_dim), jnp.float32)
    return pk, pv


def prefix_attend(module, q, k, v, *, mask=None, is_causal=False):
    """ATTENTION_KINDS["prefix"]: softmax attention over [prefix; keys]. The causal rule (bottom-right aligned,
    as `dot_product_attention`'s) and the mask apply to the real keys only; every query sees the m prefix keys."""
    cfg = module.config
    pk, pv = prefix_params(module, cfg.kind_args()["length"], k.shape[2], q.shape[3])
    return attention_ops.prefix_attention(q, k, v, pk, pv, mask=mask, is_causal=is_causal,
                                          implementation=cfg.implementation)


def count_params(params, group: str) -> int:
    """Number of scalars in the leaves of `params` whose path holds a name of the trainer group `group`
    ("ntk": names starting ntk_, "prefix": prefix_, "lora": lora_a / lora_b)."""
    from flax import traverse_util

    prefixes = {"ntk": ("ntk_",), "prefix": ("prefix_",), "lora": ("lora_a", "lora_b")}[group]
    flat = traverse_util.flatten_dict(nn.unbox(params))
    return int(sum(jnp.size(v) for k, v in flat.items() if any(str(p).startswith(prefixes) for p in k)))


register_attention_kind("ntk", ntk_attend, defaults={"init": "zeros"})
register_attention_kind("prefix", prefix_attend, defaults={"length": 10})
