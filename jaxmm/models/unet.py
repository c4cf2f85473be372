"""A conditional UNet for latent/pixel diffusion, the equivalent of diffusers' `UNet2DConditionModel`.

    unet = UNet(UNetConfig(...))
    eps = unet.apply({"params": p}, x, timesteps, context)              # x [B, H, W, C] NHWC, context [B, Lc, Dc]
    eps, feats = unet.apply({"params": p}, x, t, context, return_features=True)
    #   feats["mid"] [B, h, w, C_mid]; feats["up"]: one map per up block (after its upsampler), top-down order
    eps = unet.apply({"params": p}, x, t, context, mid_residual=r, up_residuals=[r0, None, ...],
                     down_residuals=[...])  # additive injection (ControlNet: down + mid; ARTIST: mid + up)

Structure (Rombach et al. 2022, as diffusers builds it): sinusoidal timestep embedding -> 2-layer SiLU MLP (temb);
conv_in; down blocks (ResNet blocks [GroupNorm, SiLU, conv, + Linear(SiLU(temb)), GroupNorm, SiLU, conv, skip],
optionally each followed by a spatial transformer, then a stride-2 conv except at the last level); a mid block
(ResNet, transformer, ResNet); up blocks (layers_per_block + 1 ResNets, each fed the channel concatenation of the
running map and the newest skip, optionally transformers; nearest x2 + conv except at the last level);
GroupNorm, SiLU, conv_out. A spatial transformer (diffusers' Transformer2DModel) is GroupNorm -> proj_in (1x1 conv
or Linear) -> BasicTransformerBlocks (LayerNorm + self-attention, LayerNorm + cross-attention to `context`,
LayerNorm + GEGLU feed-forward, each residual) -> proj_out, plus the input.

Parameter names mirror diffusers' (`down_blocks.0.resnets.1.norm1.weight` is `down_blocks_0/resnets_1/norm1/scale`)
so `jaxmm.hf.diffusers` maps a checkpoint by name. Attention goes through `jaxmm.attention.dot_product_attention`.
diffusers' naming quirk is kept in the loader, not here: its `attention_head_dim` is the number of HEADS;
`UNetConfig.num_attention_heads` is what it says.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmm import attention
from jaxmm.checks import check_rank, fail
from jaxmm.nn.layers import Dense

DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCKS = ("UNetMidBlock2DCrossAttn", None)


def timestep_embedding(timesteps, dim: int, *, flip_sin_to_cos: bool = True, freq_shift: float = 0.0,
                       max_period: float = 10000.0):
    """Sinusoidal embedding [B, dim] of timesteps [B] (DDPM / diffusers' `get_timestep_embedding`).

    freq_k = exp(-ln(max_period)·k / (dim/2 - freq_shift)), k < dim/2; emb = [sin(t·freq), cos(t·freq)], or
    [cos, sin] when flip_sin_to_cos (diffusers' UNet default); an odd dim gets a trailing zero column."""
    check_rank("timesteps", timesteps, 1, "[B]")
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    args = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    parts = (jnp.cos(args), jnp.sin(args)) if flip_sin_to_cos else (jnp.sin(args), jnp.cos(args))
    emb = jnp.concatenate(parts, axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def group_norm_layer(groups: int, eps: float, name: str, dtype=None):
    """diffusers' GroupNorm (two-pass variance, as torch) as a Flax layer; shared by the UNet and the VAE."""
    return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, dtype=dtype, name=name)


def conv_layer(features: int, kernel: int, name: str, *, stride: int = 1, padding: Any = "SAME", dtype=None):
    """A k x k NHWC conv with torch's symmetric `padding=k//2` for "SAME"; shared by the UNet and the VAE."""
    if padding == "SAME":
        padding = ((kernel // 2, kernel // 2),) * 2       # torch's symmetric padding=k//2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding, dtype=dtype, name=name)


class ResnetBlock(nn.Module):
    """diffusers' ResnetBlock2D ("default" time-scale-shift): x + conv2(SiLU(GN(conv1(SiLU(GN(x))) + Wt·SiLU(temb)))),
    the skip a 1x1 conv when channels change; the sum divided by output_scale_factor."""
    out_channels: int
    groups: int
    eps: float
    output_scale_factor: float = 1.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x, temb=None):
        h = nn.silu(group_norm_layer(self.groups, self.eps, "norm1", self.dtype)(x))
        h = conv_layer(self.out_channels, 3, "conv1", dtype=self.dtype)(h)
        if temb is not None:
            t = Dense(self.out_channels, use_bias=True, axes=(None, None), dtype=self.dtype,
                      name="time_emb_proj")(nn.silu(temb))
            h = h + t[:, None, None, :]
        h = nn.silu(group_norm_layer(self.groups, self.eps, "norm2", self.dtype)(h))
        h = conv_layer(self.out_channels, 3, "conv2", dtype=self.dtype)(h)
        if x.shape[-1] != self.out_channels:
            x = conv_layer(self.out_channels, 1, "conv_shortcut", dtype=self.dtype)(x)
        return (x + h) / self.output_scale_factor


class Attention(nn.Module):
    """Multi-head attention with diffusers' names (to_q, to_k, to_v, to_out_0); keys/values from `context` when
    given (cross-attention), else from x. x [B, L, D] -> [B, L, out_dim or D]. norm_groups: a GroupNorm
    ("group_norm", over L and channel groups) on x first (the VAE's mid-block attention)."""
    heads: int
    head_dim: int
    qkv_bias: bool = False
    out_dim: int | None = None
    norm_groups: int | None = None
    norm_eps: float = 1e-6
    dtype: Any = None

    @nn.compact
    def __call__(self, x, context=None):
        if self.norm_groups:
            x = group_norm_layer(self.norm_groups, self.norm_eps, "group_norm", self.dtype)(x)
        context = x if context is None else context
        inner = self.heads * self.head_dim
        proj = lambda name: Dense(inner, use_bias=self.qkv_bias, axes=("embed", "heads"), dtype=self.dtype,  # noqa
                                  name=name)
        split = lambda t: t.reshape(t.shape[0], t.shape[1], self.heads, self.head_dim)  # noqa: E731
        q, k, v = split(proj("to_q")(x)), split(proj("to_k")(context)), split(proj("to_v")(context))
        o = attention.dot_product_attention(q, k, v).reshape(x.shape[0], x.shape[1], inner)
        return Dense(self.out_dim or x.shape[-1], use_bias=True, axes=("heads", "embed"), dtype=self.dtype,
                     name="to_out_0")(o)


class GEGLU(nn.Module):
    """proj(x) split in (h, gate); h · GELU(gate) (exact GELU), Shazeer 2020."""
    features: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        h, gate = jnp.split(Dense(2 * self.features, use_bias=True, axes=("embed", "mlp"), dtype=self.dtype,
                                  name="proj")(x), 2, axis=-1)
        return h * jax.nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
    mult: int = 4
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        h = GEGLU(self.mult * x.shape[-1], dtype=self.dtype, name="net_0")(x)
        return Dense(x.shape[-1], use_bias=True, axes=("mlp", "embed"), dtype=self.dtype, name="net_2")(h)


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm block: self-attention, cross-attention to context, GEGLU feed-forward; all residual."""
    heads: int
    head_dim: int
    eps: float = 1e-5
    dtype: Any = None

    @nn.compact
    def __call__(self, x, context):
        ln = lambda name: nn.LayerNorm(epsilon=self.eps, use_fast_variance=False, dtype=self.dtype, name=name)  # noqa
        attn = lambda name: Attention(self.heads, self.head_dim, dtype=self.dtype, name=name)  # noqa: E731
        x = x + attn("attn1")(ln("norm1")(x))
        x = x + attn("attn2")(ln("norm2")(x), context)
        return x + FeedForward(dtype=self.dtype, name="ff")(ln("norm3")(x))


class Transformer2D(nn.Module):
    """diffusers' Transformer2DModel (continuous input): x + proj_out(blocks(proj_in(GroupNorm(x)))) on the
    H·W tokens; proj_in/out are 1x1 convs, or Linears when use_linear_projection."""
    heads: int
    head_dim: int
    groups: int
    num_layers: int = 1
    use_linear_projection: bool = False
    eps: float = 1e-5
    dtype: Any = None

    @nn.compact
    def __call__(self, x, context):
        b, hgt, wid, c = x.shape
        inner = self.heads * self.head_dim
        proj = (lambda f, name: Dense(f, use_bias=True, axes=(None, None), dtype=self.dtype, name=name)) \
            if self.use_linear_projection else (lambda f, name: conv_layer(f, 1, name, dtype=self.dtype))
        h = group_norm_layer(self.groups, 1e-6, "norm", self.dtype)(x)
        h = proj(inner, "proj_in")(h).reshape(b, hgt * wid, inner)
        for i in range(self.num_layers):
            h = BasicTransformerBlock(self.heads, self.head_dim, self.eps, dtype=self.dtype,
                                      name=f"transformer_blocks_{i}")(h, context)
        return x + proj(c, "proj_out")(h.reshape(b, hgt, wid, inner))


class Downsample(nn.Module):
    """Stride-2 3x3 conv; padding 1 on every side (UNet) or (0, 1) bottom/right (the VAE encoder's `padding=0`)."""
    channels: int
    pad: Any = ((1, 1), (1, 1))
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        return conv_layer(self.channels, 3, "conv", stride=2, padding=self.pad, dtype=self.dtype)(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""
    channels: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return conv_layer(self.channels, 3, "conv", dtype=self.dtype)(x)


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Field names follow diffusers' UNet2DConditionModel config where they mean the same thing.

    num_attention_heads / transformer_layers_per_block: one int, or one per down level (the up path reverses it,
    the mid block takes the last). Head dim = level channels // heads."""
    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: Sequence[int] = (32, 64)
    down_block_types: Sequence[str] = ("CrossAttnDownBlock2D", "DownBlock2D")
    up_block_types: Sequence[str] = ("UpBlock2D", "CrossAttnUpBlock2D")
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    layers_per_block: int = 1
    num_attention_heads: int | Sequence[int] = 8
    transformer_layers_per_block: int | Sequence[int] = 1
    cross_attention_dim: int = 16
    norm_num_groups: int = 8
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    use_linear_projection: bool = False
    mid_block_scale_factor: float = 1.0
    dtype: Any = None   # compute dtype (None: the input's); params stay float32

    def __post_init__(self):
        n = len(self.block_out_channels)
        if n < 1:
            fail("block_out_channels", "at least one level", self.block_out_channels)
        for name, types, allowed in (("down_block_types", self.down_block_types, DOWN_BLOCKS),
                                     ("up_block_types", self.up_block_types, UP_BLOCKS)):
            if len(types) != n or any(t not in allowed for t in types):
                fail(name, f"{n} entries (one per block_out_channels level) from {allowed}", tuple(types))
        if self.mid_block_type not in MID_BLOCKS:
            fail("mid_block_type", f"one of {MID_BLOCKS}", repr(self.mid_block_type))
        for name in ("num_attention_heads", "transformer_layers_per_block"):
            v = getattr(self, name)
            if not isinstance(v, int) and len(v) != n:
                fail(name, f"an int or {n} values (one per level)", v)
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                fail("block_out_channels", f"multiples of norm_num_groups={self.norm_num_groups}",
                     self.block_out_channels)

    def per_level(self, name: str) -> tuple[int, ...]:
        v = getattr(self, name)
        return (v,) * len(self.block_out_channels) if isinstance(v, int) else tuple(v)


class UNet(nn.Module):
    """See the module docstring. __call__(x [B,H,W,in_channels], timesteps [B] or scalar, context [B,Lc,Dc])."""
    config: UNetConfig

    def _transformer(self, channels, heads, layers, name):
        cfg = self.config
        if channels % heads:
            fail("num_attention_heads", f"a divisor of the level's channels {channels}", heads)
        return Transformer2D(heads, channels // heads, cfg.norm_num_groups, layers, cfg.use_linear_projection,
                             dtype=cfg.dtype, name=name)

    def _resnet(self, channels, name, scale=1.0):
        cfg = self.config
        return ResnetBlock(channels, cfg.norm_num_groups, cfg.norm_eps, scale, dtype=cfg.dtype, name=name)

    @nn.compact
    def __call__(self, x, timesteps, context, *, return_features: bool = False, mid_residual=None,
                 up_residuals: Sequence | None = None, down_residuals: Sequence | None = None):
        """Returns the prediction [B, H, W, out_channels] (and, with return_features, {"mid", "up"}).

        mid_residual: added to the mid block's output. up_residuals: one entry per up block (None = nothing),
        added to that block's output. down_residuals: one per skip connection (conv_in output, then every
        ResNet/transformer output and downsampler output of the down path; ControlNet's order), added to the
        skip before the up path reads it. The returned features are the maps after any residual was added."""
        cfg = self.config
        levels = len(cfg.block_out_channels)
        check_rank("x", x, 4, "[B, H, W, C] (NHWC)")
        if x.shape[-1] != cfg.in_channels:
            fail("x", f"{cfg.in_channels} channels (NHWC, last axis)", f"shape {x.shape}")
        factor = 2 ** (levels - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            fail("x", f"H and W divisible by {factor} (2 ** (levels - 1))", f"shape {x.shape}")
        check_rank("context", context, 3, "[B, Lc, cross_attention_dim]")
        if context.shape[-1] != cfg.cross_attention_dim or context.shape[0] != x.shape[0]:
            fail("context", f"shape ({x.shape[0]}, Lc, {cfg.cross_attention_dim})", f"shape {context.shape}")
        b = x.shape[0]
        timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (b,)) if jnp.ndim(timesteps) == 0 else timesteps
        check_rank("timesteps", timesteps, 1, "[B] or a scalar")
        if timesteps.shape[0] != b:
            fail("timesteps", f"shape ({b},) or a scalar", f"shape {timesteps.shape}")
        dtype = cfg.dtype or x.dtype
        c0 = cfg.block_out_channels[0]
        temb = timestep_embedding(timesteps, c0, flip_sin_to_cos=cfg.flip_sin_to_cos,
                                  freq_shift=cfg.freq_shift).astype(dtype)
        temb = Dense(4 * c0, use_bias=True, axes=(None, None), dtype=cfg.dtype, name="time_embedding_linear_1")(temb)
        temb = Dense(4 * c0, use_bias=True, axes=(None, None), dtype=cfg.dtype,
                     name="time_embedding_linear_2")(nn.silu(temb))
        context = context.astype(dtype)
        heads, layers = cfg.per_level("num_attention_heads"), cfg.per_level("transformer_layers_per_block")

        h = conv_layer(c0, 3, "conv_in", dtype=cfg.dtype)(x)
        skips = [h]
        for i, kind in enumerate(cfg.down_block_types):
            ch = cfg.block_out_channels[i]
            for j in range(cfg.layers_per_block):
                h = self._resnet(ch, f"down_blocks_{i}_resnets_{j}")(h, temb)
                if kind == "CrossAttnDownBlock2D":
                    h = self._transformer(ch, heads[i], layers[i], f"down_blocks_{i}_attentions_{j}")(h, context)
                skips.append(h)
            if i < levels - 1:
                h = Downsample(ch, dtype=cfg.dtype, name=f"down_blocks_{i}_downsamplers_0")(h)
                skips.append(h)
        if down_residuals is not None:
            if len(down_residuals) != len(skips):
                fail("down_residuals", f"{len(skips)} maps (one per skip connection)", f"{len(down_residuals)}")
            skips = [s if r is None else s + _checked(f"down_residuals[{k}]", r, s) for k, (s, r)
                     in enumerate(zip(skips, down_residuals))]

        top = cfg.block_out_channels[-1]
        if cfg.mid_block_type is not None:
            h = self._resnet(top, "mid_block_resnets_0", cfg.mid_block_scale_factor)(h, temb)
            h = self._transformer(top, heads[-1], layers[-1], "mid_block_attentions_0")(h, context)
            h = self._resnet(top, "mid_block_resnets_1", cfg.mid_block_scale_factor)(h, temb)
        if mid_residual is not None:
            h = h + _checked("mid_residual", mid_residual, h)
        features = {"mid": h, "up": []}

        if up_residuals is not None and len(up_residuals) != levels:
            fail("up_residuals", f"{levels} entries (one per up block; None for none)", len(up_residuals))
        rev_ch, rev_heads, rev_layers = (tuple(reversed(v)) for v in (cfg.block_out_channels, heads, layers))
        for i, kind in enumerate(cfg.up_block_types):
            ch = rev_ch[i]
            for j in range(cfg.layers_per_block + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = self._resnet(ch, f"up_blocks_{i}_resnets_{j}")(h, temb)
                if kind == "CrossAttnUpBlock2D":
                    h = self._transformer(ch, rev_heads[i], rev_layers[i], f"up_blocks_{i}_attentions_{j}")(h, context)
            if i < levels - 1:
                h = Upsample(ch, dtype=cfg.dtype, name=f"up_blocks_{i}_upsamplers_0")(h)
            if up_residuals is not None and up_residuals[i] is not None:
                h = h + _checked(f"up_residuals[{i}]", up_residuals[i], h)
            features["up"].append(h)

        h = nn.silu(group_norm_layer(cfg.norm_num_groups, cfg.norm_eps, "conv_norm_out", cfg.dtype)(h))
        out = conv_layer(cfg.out_channels, 3, "conv_out", dtype=cfg.dtype)(h)
        return (out, features) if return_features else out


def _checked(name, r, h):
    if tuple(r.shape) != tuple(h.shape):
        fail(name, f"shape {tuple(h.shape)} (the feature map it is added to)", f"shape {tuple(r.shape)}")
    return r.astype(h.dtype)
