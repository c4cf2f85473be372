"""AutoencoderKL (Rombach et al. 2022, "latent diffusion"), the equivalent of diffusers' `AutoencoderKL`, NHWC.

    vae = AutoencoderKL(VAEConfig(...))
    post = vae.apply({"params": p}, x, method="encode")        # DiagonalGaussian(mean, logvar) [B, H/f, W/f, z]
    z = post.sample(rng) * cfg.scaling_factor                   # latents for the UNet
    x_hat = vae.apply({"params": p}, z / cfg.scaling_factor, method="decode")
    x_hat = vae.apply({"params": p}, x)                         # decode(mean): the deterministic round trip

Encoder: conv_in -> per level layers_per_block ResNet blocks (no time embedding, GroupNorm eps 1e-6) and a stride-2
conv padded (0, 1) bottom/right (not at the last level) -> mid block (ResNet, single-head self-attention with a
GroupNorm and a residual, ResNet) -> GroupNorm, SiLU, conv_out to 2·latent_channels -> quant_conv (1x1).
Decoder: post_quant_conv (1x1) -> conv_in -> mid block -> per reversed level layers_per_block + 1 ResNets and a
nearest x2 + conv (not at the last level) -> GroupNorm, SiLU, conv_out. f = 2 ** (levels - 1).
Parameter names mirror diffusers' (see jaxmm.models.unet); `jaxmm.hf.diffusers` loads a checkpoint by name.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmm.checks import check_rank, fail
from jaxmm.models.unet import Attention, Downsample, ResnetBlock, Upsample, conv_layer, group_norm_layer


class DiagonalGaussian(NamedTuple):
    """N(mean, exp(logvar)) per latent element (logvar clipped to [-30, 20] as diffusers does). A pytree."""
    mean: jax.Array
    logvar: jax.Array

    @classmethod
    def from_moments(cls, moments):
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return cls(mean, jnp.clip(logvar, -30.0, 20.0))

    @property
    def std(self):
        return jnp.exp(0.5 * self.logvar)

    def sample(self, rng):
        return self.mean + self.std * jax.random.normal(rng, self.mean.shape, self.mean.dtype)

    def mode(self):
        return self.mean

    def kl(self):
        """KL(q || N(0, I)) per example [B], summed over H, W, C."""
        return 0.5 * jnp.sum(self.mean ** 2 + jnp.exp(self.logvar) - 1.0 - self.logvar, axis=(1, 2, 3))


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Field names follow diffusers' AutoencoderKL config."""
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: Sequence[int] = (16, 32)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 8
    scaling_factor: float = 0.18215
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    dtype: Any = None

    def __post_init__(self):
        if not self.block_out_channels:
            fail("block_out_channels", "at least one level", self.block_out_channels)
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                fail("block_out_channels", f"multiples of norm_num_groups={self.norm_num_groups}",
                     self.block_out_channels)


def _mid_block(cfg: VAEConfig, h):
    c = h.shape[-1]
    res = lambda name: ResnetBlock(c, cfg.norm_num_groups, 1e-6, dtype=cfg.dtype, name=name)  # noqa: E731
    h = res("mid_block_resnets_0")(h)
    if cfg.mid_block_add_attention:
        b, hh, ww, _ = h.shape
        a = Attention(1, c, qkv_bias=True, norm_groups=cfg.norm_num_groups, norm_eps=1e-6, dtype=cfg.dtype,
                      name="mid_block_attentions_0")(h.reshape(b, hh * ww, c))
        h = h + a.reshape(h.shape)
    return res("mid_block_resnets_1")(h)


def _out(cfg: VAEConfig, h, channels):
    h = nn.silu(group_norm_layer(cfg.norm_num_groups, 1e-6, "conv_norm_out", cfg.dtype)(h))
    return conv_layer(channels, 3, "conv_out", dtype=cfg.dtype)(h)


class Encoder(nn.Module):
    config: VAEConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        h = conv_layer(cfg.block_out_channels[0], 3, "conv_in", dtype=cfg.dtype)(x)
        for i, ch in enumerate(cfg.block_out_channels):
            for j in range(cfg.layers_per_block):
                h = ResnetBlock(ch, cfg.norm_num_groups, 1e-6, dtype=cfg.dtype, name=f"down_blocks_{i}_resnets_{j}")(h)
            if i < len(cfg.block_out_channels) - 1:
                h = Downsample(ch, pad=((0, 1), (0, 1)), dtype=cfg.dtype, name=f"down_blocks_{i}_downsamplers_0")(h)
        return _out(cfg, _mid_block(cfg, h), 2 * cfg.latent_channels)


class Decoder(nn.Module):
    config: VAEConfig

    @nn.compact
    def __call__(self, z):
        cfg = self.config
        rev = tuple(reversed(cfg.block_out_channels))
        h = _mid_block(cfg, conv_layer(rev[0], 3, "conv_in", dtype=cfg.dtype)(z))
        for i, ch in enumerate(rev):
            for j in range(cfg.layers_per_block + 1):
                h = ResnetBlock(ch, cfg.norm_num_groups, 1e-6, dtype=cfg.dtype, name=f"up_blocks_{i}_resnets_{j}")(h)
            if i < len(rev) - 1:
                h = Upsample(ch, dtype=cfg.dtype, name=f"up_blocks_{i}_upsamplers_0")(h)
        return _out(cfg, h, cfg.out_channels)


class AutoencoderKL(nn.Module):
    """encode(x [B,H,W,in]) -> DiagonalGaussian; decode(z [B,H/f,W/f,latent]) -> [B,H,W,out];
    __call__(x, rng=None): decode(sample) with an rng, else decode(mean)."""
    config: VAEConfig

    def setup(self):
        cfg = self.config
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        z2 = 2 * cfg.latent_channels
        self.quant_conv = conv_layer(z2, 1, "quant_conv", dtype=cfg.dtype) if cfg.use_quant_conv else None
        self.post_quant_conv = (conv_layer(cfg.latent_channels, 1, "post_quant_conv", dtype=cfg.dtype)
                                if cfg.use_post_quant_conv else None)

    def encode(self, x) -> DiagonalGaussian:
        cfg = self.config
        check_rank("x", x, 4, "[B, H, W, C] (NHWC)")
        f = 2 ** (len(cfg.block_out_channels) - 1)
        if x.shape[-1] != cfg.in_channels or x.shape[1] % f or x.shape[2] % f:
            fail("x", f"[B, H, W, {cfg.in_channels}] with H, W divisible by {f}", f"shape {x.shape}")
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian.from_moments(moments)

    def decode(self, z):
        cfg = self.config
        check_rank("z", z, 4, "[B, h, w, latent_channels] (NHWC)")
        if z.shape[-1] != cfg.latent_channels:
            fail("z", f"{cfg.latent_channels} channels (last axis)", f"shape {z.shape}")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def __call__(self, x, rng=None):
        post = self.encode(x)
        return self.decode(post.mode() if rng is None else post.sample(rng))
