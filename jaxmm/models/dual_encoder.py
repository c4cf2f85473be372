"""LLaVA-Read's dual-resolution visual encoder (arXiv 2407.19185), fused LLaVA-HR style (Luo et al. 2024,
arXiv 2403.03003; PAPERS.md §2): a high-resolution ConvNeXt and a low-resolution ViT see the same image, and the
ConvNeXt's features are injected into the ViT's patch tokens after chosen blocks (LLaVA-Read: 1, 4 and 7):

    h     = avgpool(x_hr -> the ViT's patch grid)                         x_hr: ConvNeXt feature map [B, h, w, C]
    u     = proj(conv1x1(gelu(conv1x1(h))))                                [B, G*G, D], proj zero-initialised
    g     = MLP([mean_tokens(x_vit), mean_tokens(u)])                      [B, D], the gate from pooled features
    x_vit = x_vit + tanh(g) * u                                            (patch tokens; a CLS token is kept)

so at initialisation the dual encoder computes exactly the ViT's function on the low-resolution view, and the
projection (whose gradient is tanh(g) * the ConvNeXt branch, non-zero) learns how much high-res detail to add.

Input: ONE image at `image_size` (the high resolution) [B, S, S, C]; the ViT sees it average-pooled by
image_size / vit.image_size (as LLaVA-HR resizes one image for both branches). `low_res_only=True` is the
ablation without the ConvNeXt (same input, same ViT, no fusion params).

Reconstruction of unpublished details (ours): the high-res map is pooled to the ViT grid BEFORE the 1x1 convs
(cheaper; LLaVA-HR's exact resampling is not stated in LLaVA-Read); every injection reads the same ConvNeXt map
(`convnext.feature_stage`, default its last stage) with its own adapter; the gate MLP is Dense(D/4)-GELU-Dense(D)
plus a bias `gate_bias` starting at GATE_BIAS_INIT (not zero: a closed gate would leave the zero projection
without gradient); the 1x1 convs and gate layers use LeCun-normal init.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmm.checks import check_rank, fail
from jaxmm.models.convnext import ConvNeXt, ConvNeXtConfig
from jaxmm.models.vit import ViT, ViTConfig
from jaxmm.nn.layers import Dense

GATE_BIAS_INIT = 0.5   # [reconstruction] tanh(0.5) = 0.46: the gate starts open, so the zero projection gets a gradient at once


def _as_config(cls, value, **fixed):
    if isinstance(value, cls):
        return dataclasses.replace(value, **fixed) if fixed else value
    items = dict(value.items() if hasattr(value, "items") else value)
    for name in fixed:
        if name in items and items[name] != fixed[name]:
            fail(f"{cls.__name__}.{name}", f"{fixed[name]} (set by the dual encoder)", items[name])
    return cls(**{**items, **fixed})


@dataclasses.dataclass(frozen=True)
class DualEncoderConfig:
    image_size: int = 192                 # the high-resolution input (what the data delivers)
    low_res: int = 48                     # the ViT's input side; image_size must be a multiple of it
    vit: Any = ()                         # ViTConfig fields (a dict or ViTConfig; image_size is low_res)
    convnext: Any = ()                    # ConvNeXtConfig fields (image_size is image_size)
    fuse_after: tuple = (1, 4, 7)         # 1-based ViT blocks after which high-res features are injected
    fusion_dim: int = 0                   # hidden channels of the 1x1 convs (0: the ViT's d_model)
    low_res_only: bool = False            # ablation: the ViT alone on the low-res view
    dtype: Any = None
    remat: bool = False

    def __post_init__(self):
        if self.image_size % self.low_res:
            fail("DualEncoderConfig.image_size", f"a multiple of low_res={self.low_res}", self.image_size)
        vit = _as_config(ViTConfig, self.vit, image_size=self.low_res)
        vit = dataclasses.replace(vit, dtype=self.dtype, remat=self.remat)
        conv = _as_config(ConvNeXtConfig, self.convnext, image_size=self.image_size)
        conv = dataclasses.replace(conv, dtype=self.dtype)
        object.__setattr__(self, "vit", vit)
        object.__setattr__(self, "convnext", conv)
        object.__setattr__(self, "fuse_after", tuple(int(k) for k in self.fuse_after))
        bad = [k for k in self.fuse_after if not 1 <= k <= vit.num_layers]
        if bad or len(set(self.fuse_after)) != len(self.fuse_after):
            fail("DualEncoderConfig.fuse_after", f"distinct blocks in 1..{vit.num_layers} (vit.num_layers)",
                 self.fuse_after)
        grid = vit.image_size // vit.patch_size
        if not self.low_res_only and conv.grid() % grid:
            fail("DualEncoderConfig.convnext", f"a feature grid that is a multiple of the ViT's {grid}x{grid}",
                 f"{conv.grid()}x{conv.grid()}")

    @property
    def num_features(self) -> int:
        return self.vit.num_features

    @property
    def d_model(self) -> int:
        return self.vit.d_model


def avg_pool_to(x, side: int):
    """[B, H, W, C] -> [B, side, side, C] by averaging (H, W multiples of side)."""
    b, h, w, c = x.shape
    return x.reshape(b, side, h // side, side, w // side, c).mean(axis=(2, 4))


class FusionAdapter(nn.Module):
    """One injection: x_vit_patches [B, N, D] += tanh(g) * proj(conv1x1(gelu(conv1x1(h)))), h [B, N, C]."""

    d_model: int
    fusion_dim: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x, h):
        dense = functools.partial(Dense, use_bias=True, dtype=self.dtype, kernel_init=nn.initializers.lecun_normal())
        u = dense(self.fusion_dim, axes=(None, "mlp"), name="conv1")(h)
        u = dense(self.fusion_dim, axes=("mlp", "mlp"), name="conv2")(jax.nn.gelu(u))
        u = dense(self.d_model, axes=("mlp", "embed"), name="proj", kernel_init=nn.initializers.zeros)(u)
        pooled = jnp.concatenate([x.mean(axis=1), u.mean(axis=1)], axis=-1)
        g = dense(max(self.d_model // 4, 1), axes=("embed", "mlp"), name="gate1")(pooled)
        g = jax.nn.gelu(g)
        bias = self.param("gate_bias", nn.with_logical_partitioning(nn.initializers.constant(GATE_BIAS_INIT),
                                                                    ("embed",)), (self.d_model,))
        g = dense(self.d_model, axes=("mlp", "embed"), name="gate2")(g) + bias.astype(g.dtype)
        return x + jnp.tanh(g)[:, None, :].astype(x.dtype) * u.astype(x.dtype)


class DualEncoder(nn.Module):
    """image [B, S, S, C] (S = config.image_size) -> the ViT's outputs (features [B, N, D], ...) with high-res
    ConvNeXt features injected; plus "hr_features" (the ConvNeXt map) unless low_res_only. Params: vit, convnext,
    fusion_<k> (k in fuse_after)."""

    config: DualEncoderConfig

    @nn.compact
    def __call__(self, image, *, deterministic: bool = True):
        cfg = self.config
        check_rank("image", image, 4, "[batch, height, width, channels] (NHWC)")
        if tuple(image.shape[1:3]) != (cfg.image_size, cfg.image_size):
            fail("image", f"shape [batch, {cfg.image_size}, {cfg.image_size}, C] (DualEncoderConfig.image_size)",
                 f"shape {image.shape}")
        low = avg_pool_to(image, cfg.low_res)
        vit = ViT(cfg.vit, name="vit")
        if cfg.low_res_only:
            return vit(low, deterministic=deterministic)
        hr = ConvNeXt(cfg.convnext, name="convnext")(image)["hidden_states"][cfg.convnext.feature_stage]
        grid = cfg.vit.image_size // cfg.vit.patch_size
        h = avg_pool_to(hr, grid).reshape(hr.shape[0], grid * grid, hr.shape[-1])
        adapters = {k - 1: FusionAdapter(cfg.vit.d_model, cfg.fusion_dim or cfg.vit.d_model, cfg.dtype,
                                         name=f"fusion_{k}") for k in cfg.fuse_after}
        skip = 1 if cfg.vit.class_token else 0

        def inject(i, x):
            if i not in adapters:
                return x
            return jnp.concatenate([x[:, :skip], adapters[i](x[:, skip:], h)], axis=1)

        out = dict(vit(low, deterministic=deterministic, after_block=inject))
        out["hr_features"] = hr
        return out
