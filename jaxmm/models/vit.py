"""CLIP-style vision tower (Radford et al. 2021), as LLaVA uses it, and SigLIP's (Zhai et al. 2023).

CLIP (the defaults): patch conv (no bias) -> [CLS] + patches + learned positions -> pre-LayerNorm -> pre-norm
transformer blocks (quick-GELU MLP, biases everywhere) -> outputs:
  last_hidden_state [B, 1+N, D] (the last block's output, no final norm — HF's `last_hidden_state`),
  pooler_output [B, D] = post_layernorm(last_hidden_state[:, 0]),
  hidden_states: list of 1+num_layers [B, 1+N, D] (index 0 = pre-normed embeddings, as HF),
  features [B, N, D] = hidden_states[feature_layer] without CLS (LLaVA: penultimate layer, CLS dropped),
  image_embeds [B, projection_dim] = pooler_output·W when `projection_dim` is set (CLIPModel's visual_projection).
SigLIP (`class_token=False, pre_norm=False, patch_bias=True, pool="map"`, tanh-GELU): no CLS, no pre-LayerNorm,
  last_hidden_state = post_layernorm(last block) on every token, pooler_output = the multihead attention-pooling
  head (a learned probe attends to last_hidden_state, then + MLP(LayerNorm(.))); `pool="none"`: the same
  without the head (HF `vision_use_head=False`; no pooler_output).
Images are NHWC float pixel values (already normalised).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxmm.nn.layers import Dense, LayerNorm, default_init
from jaxmm import attention
from jaxmm.nn.transformer import MLP, BlockConfig, Stack
from jaxmm.checks import check_rank, fail


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    image_size: int = 32
    patch_size: int = 8
    num_channels: int = 3
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 128
    mlp: str = "quick_gelu"
    norm_eps: float = 1e-5
    feature_layer: int = -2  # LLaVA's choice: the penultimate layer
    drop_cls: bool = True
    projection_dim: int | None = None
    class_token: bool = True  # SigLIP: False
    pre_norm: bool = True  # SigLIP: False
    patch_bias: bool = False  # SigLIP: True
    pool: str = "cls"  # "cls" (CLIP), "map" (SigLIP attention pooling), "none" (SigLIP without head)
    attention: str = "softmax"  # an attention kind (jaxmm.nn.ATTENTION_KINDS)
    attention_args: tuple = ()  # that kind's arguments as (name, value) pairs, e.g. (("length", 10),)
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q", "v")
    block_extra: tuple = ()  # further BlockConfig fields as (name, value) pairs (e.g. implementation)
    dtype: Any = None
    remat: bool = False

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_features(self) -> int:
        """Tokens handed to a projector."""
        return self.num_patches + (1 if self.class_token and not self.drop_cls else 0)

    def block(self) -> BlockConfig:
        return BlockConfig(d_model=self.d_model, num_heads=self.num_heads, mlp_dim=self.mlp_dim, mlp=self.mlp,
                           norm="layer", norm_eps=self.norm_eps, qkv_bias=True, out_bias=True, mlp_bias=True,
                           rope_theta=None, attention=self.attention, attention_args=self.attention_args,
                           lora_rank=self.lora_rank, lora_alpha=self.lora_alpha, lora_targets=self.lora_targets,
                           dtype=self.dtype,
                           remat=self.remat, **dict(self.block_extra))


class ViT(nn.Module):
    """pixel_values [B, H, W, C] -> dict (see module docstring). Params: patch_embed, class_embedding,
    position_embedding, pre_norm, layers_0.., post_norm, (projection); SigLIP: no class_embedding / pre_norm,
    patch_embed/bias, head (pool="map")."""

    config: ViTConfig

    @nn.compact
    def __call__(self, pixel_values, *, deterministic: bool = True, after_block=None):
        """after_block: optional (i, x [B, tokens, D]) -> x applied after block i (0-based), see Stack."""
        cfg = self.config
        check_rank("pixel_values", pixel_values, 4, "[batch, height, width, channels] (NHWC)")
        expected = (cfg.image_size, cfg.image_size, cfg.num_channels)
        if tuple(pixel_values.shape[1:]) != expected:
            fail("pixel_values", f"shape [batch, {expected[0]}, {expected[1]}, {expected[2]}]",
                 f"shape {pixel_values.shape}")
        if cfg.pool not in POOLS:
            fail("ViTConfig.pool", f"one of {POOLS}", repr(cfg.pool))
        x = nn.Conv(cfg.d_model, (cfg.patch_size, cfg.patch_size), strides=(cfg.patch_size, cfg.patch_size),
                    padding="VALID", use_bias=cfg.patch_bias, dtype=cfg.dtype, name="patch_embed",
                    kernel_init=nn.with_logical_partitioning(default_init, (None, None, None, "embed")))(pixel_values)
        b = x.shape[0]
        x = x.reshape(b, -1, cfg.d_model)
        if cfg.class_token:  # created before the positions: the params' RNG stream follows creation order
            cls = self.param("class_embedding", nn.with_logical_partitioning(default_init, ("embed",)),
                             (cfg.d_model,))
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, cfg.d_model)), x], axis=1)
        pos = self.param("position_embedding", nn.with_logical_partitioning(default_init, (None, "embed")),
                         (x.shape[1], cfg.d_model))
        x = x + pos.astype(x.dtype)
        if cfg.pre_norm:
            x = LayerNorm(cfg.norm_eps, name="pre_norm")(x)
        last, hidden = Stack(cfg.block(), cfg.num_layers, name="encoder")(x, deterministic=deterministic,
                                                                          return_hidden=True, after_layer=after_block)
        feats = hidden[cfg.feature_layer]
        out = {"hidden_states": hidden, "features": feats[:, 1:] if cfg.class_token and cfg.drop_cls else feats}
        if cfg.pool == "cls":
            out["last_hidden_state"] = last
            out["pooler_output"] = LayerNorm(cfg.norm_eps, name="post_norm")(last[:, 0])
        else:
            out["last_hidden_state"] = last = LayerNorm(cfg.norm_eps, name="post_norm")(last)
            if cfg.pool == "map":
                out["pooler_output"] = AttentionPool(cfg, name="head")(last)
        if cfg.projection_dim:
            out["image_embeds"] = Dense(cfg.projection_dim, axes=("embed", None), dtype=cfg.dtype,
                                        name="projection")(out["pooler_output"])
        return out


POOLS = ("cls", "map", "none")


class AttentionPool(nn.Module):
    """SigLIP's multihead attention pooling: a learned probe [1, 1, D] attends (num_heads, biased q/k/v/o) to the
    tokens x [B, N, D]; y = a + MLP(LayerNorm(a)); returns y [B, D]. Params: probe, q, k, v, o, norm, mlp."""

    config: ViTConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        b, _, d = x.shape
        h = cfg.num_heads
        probe = self.param("probe", nn.with_logical_partitioning(default_init, (None, None, "embed")), (1, 1, d))
        dense = lambda name: Dense(d, use_bias=True, axes=("embed", "embed"), dtype=cfg.dtype, name=name)  # noqa: E731
        q = dense("q")(jnp.broadcast_to(probe.astype(x.dtype), (b, 1, d))).reshape(b, 1, h, d // h)
        k = dense("k")(x).reshape(b, -1, h, d // h)
        v = dense("v")(x).reshape(b, -1, h, d // h)
        a = dense("o")(attention.dot_product_attention(q, k, v).reshape(b, 1, d))
        y = a + MLP(cfg.block(), name="mlp")(LayerNorm(cfg.norm_eps, name="norm")(a))
        return y[:, 0]
