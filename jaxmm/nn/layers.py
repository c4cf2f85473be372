"""Basic Linen layers with logical axis names (for sharding rules) and LoRA on any Dense.

Logical axis names used across jaxmm (mapped to mesh axes by `nn.logical_axis_rules` in the trainer config):
  "vocab", "embed" (model width), "heads" (flattened heads·head_dim of q/k/v/o projections), "mlp" (MLP hidden),
  "norm" (norm scales), "lora" (LoRA rank; never sharded), "batch", "length" (activations).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmm.ops import norms
from jaxmm.checks import fail

Dtype = Any
default_init = nn.initializers.normal(stddev=0.02)


class Dense(nn.Module):
    """y = x·W (+ b) (+ LoRA: dropout(x)·A·B·alpha/rank). W is [in, out]; names: kernel, bias, lora_a, lora_b.

    LoRA (Hu et al. 2021): A ~ N(0, 1/rank) [in, rank], B = 0 [rank, out], so the layer starts as the base
    layer; only `lora_a`/`lora_b` go in the trainer's `lora` parameter group. `merge_lora` folds them into W.
    """

    features: int
    use_bias: bool = False
    axes: tuple[str, str] = ("embed", "mlp")
    dtype: Dtype | None = None  # compute dtype (None: the input's)
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = default_init
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        dtype = self.dtype or x.dtype
        kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.axes),
                            (x.shape[-1], self.features), self.param_dtype)
        x = x.astype(dtype)
        y = jnp.dot(x, kernel.astype(dtype))
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes[1:]),
                              (self.features,), self.param_dtype)
            y = y + bias.astype(dtype)
        if self.lora_rank > 0:
            a = self.param("lora_a", nn.with_logical_partitioning(
                nn.initializers.normal(stddev=self.lora_rank ** -0.5), (self.axes[0], "lora")),
                (x.shape[-1], self.lora_rank), self.param_dtype)
            b = self.param("lora_b", nn.with_logical_partitioning(nn.initializers.zeros, ("lora", self.axes[1])),
                           (self.lora_rank, self.features), self.param_dtype)
            h = nn.Dropout(self.lora_dropout)(x, deterministic=deterministic) if self.lora_dropout > 0 else x
            y = y + jnp.dot(jnp.dot(h, a.astype(dtype)), b.astype(dtype)) * (self.lora_alpha / self.lora_rank)
        return y


def merge_lora(params, *, alpha: float):
    """Fold every LoRA pair into its kernel: W ← W + A·B·alpha/rank; returns params without lora_a/lora_b
    (use with the same module built with lora_rank=0)."""
    params = nn.unbox(params)

    def walk(tree):
        if not isinstance(tree, dict):
            return tree
        out = {k: walk(v) for k, v in tree.items() if k not in ("lora_a", "lora_b")}
        if "lora_a" in tree:
            a, b = tree["lora_a"], tree["lora_b"]
            out["kernel"] = tree["kernel"] + (a @ b) * (alpha / a.shape[1])
        return out

    return walk(dict(params))


class Embed(nn.Module):
    """Token embedding [vocab, embed]; `attend(x)` = x·Eᵀ for tied output embeddings."""

    num_embeddings: int
    features: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    embedding_init: Any = default_init

    def setup(self):
        self.embedding = self.param("embedding", nn.with_logical_partitioning(self.embedding_init, ("vocab", "embed")),
                                    (self.num_embeddings, self.features), self.param_dtype)

    def __call__(self, ids):
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            fail("ids", "an integer array of token ids", f"dtype {ids.dtype}")
        out = jnp.take(self.embedding, ids, axis=0)
        return out.astype(self.dtype) if self.dtype else out

    def attend(self, x):
        dtype = self.dtype or x.dtype
        return jnp.dot(x.astype(dtype), self.embedding.astype(dtype).T)


class RMSNorm(nn.Module):
    eps: float = 1e-6
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                           (x.shape[-1],), self.param_dtype)
        return norms.rms_norm(x, scale, self.eps)


class LayerNorm(nn.Module):
    eps: float = 1e-5
    use_bias: bool = True
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                           (x.shape[-1],), self.param_dtype)
        bias = (self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
                           (x.shape[-1],), self.param_dtype) if self.use_bias else None)
        return norms.layer_norm(x, scale, bias, self.eps)


def make_norm(kind: str, eps: float, name: str | None = None, param_dtype: Dtype = jnp.float32):
    if kind == "rms":
        return RMSNorm(eps=eps, param_dtype=param_dtype, name=name)
    if kind == "layer":
        return LayerNorm(eps=eps, param_dtype=param_dtype, name=name)
    fail("norm", "'rms' or 'layer'", repr(kind))


ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}
