"""ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s"), NHWC, as Hugging Face's `ConvNextModel`: LLaVA-Read's /
LLaVA-HR's high-resolution encoder (PAPERS.md §2).

    pixel_values [B, H, W, C]
    stem:   conv patch_size x patch_size, stride patch_size (bias) -> LayerNorm (eps 1e-6)          [B, H/p, W/p, C0]
    stage s (s > 0 first downsamples: LayerNorm (1e-6) -> conv 2x2 stride 2 (bias) to C_s), then depths[s] blocks:
      block:  y = dwconv7x7(x) (groups = C, bias) -> LayerNorm (1e-6) -> Dense(4C) -> GELU (erf) -> Dense(C)
              x = x + gamma * y          (gamma [C]: the layer scale, init `layer_scale_init`; none when 0)
    outputs:
      last_hidden_state [B, h, w, C_last]   the last stage's output (no norm; HF's, in NHWC)
      pooler_output     [B, C_last]         LayerNorm(norm_eps)(mean over h, w)
      hidden_states     list of 1 + num_stages NHWC maps: the stem's output, then every stage's
      features          [B, h_s * w_s, C_s] hidden_states[feature_stage] flattened row-major (tokens for an MLLM)

Params: stem_conv, stem_norm, stages_<s>_down_norm, stages_<s>_down_conv, stages_<s>_blocks_<j>/{dwconv, norm,
fc1, fc2, gamma}, norm (the pooled LayerNorm). jaxmm.hf.convnext maps HF checkpoints onto them.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmm.checks import check_rank, fail
from jaxmm.nn.layers import Dense, LayerNorm, default_init

INNER_EPS = 1e-6   # HF hard-codes the eps of every LayerNorm but the pooled one


@dataclasses.dataclass(frozen=True)
class ConvNeXtConfig:
    image_size: int = 64
    num_channels: int = 3
    patch_size: int = 4
    hidden_sizes: tuple = (32, 64)
    depths: tuple = (1, 1)
    layer_scale_init: float = 1e-6
    norm_eps: float = 1e-12            # HF `layer_norm_eps`: the pooled LayerNorm only
    feature_stage: int = -1            # which of hidden_states becomes `features`
    dtype: Any = None

    def __post_init__(self):
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        if not self.hidden_sizes or len(self.hidden_sizes) != len(self.depths):
            fail("ConvNeXtConfig.depths", f"one depth per hidden size ({len(self.hidden_sizes)})",
                 f"{len(self.depths)} depths")
        if not -len(self.hidden_sizes) - 1 <= self.feature_stage <= len(self.hidden_sizes):
            fail("ConvNeXtConfig.feature_stage", f"an index into {len(self.hidden_sizes) + 1} hidden states",
                 self.feature_stage)
        if self.image_size % self.stride:
            fail("ConvNeXtConfig.image_size", f"a multiple of patch_size * 2**(num_stages-1) = {self.stride}",
                 self.image_size)

    @property
    def num_stages(self) -> int:
        return len(self.hidden_sizes)

    @property
    def stride(self) -> int:
        """Pixels per cell of the last stage's grid."""
        return self.patch_size * 2 ** (self.num_stages - 1)

    def grid(self, stage: int | None = None) -> int:
        """Side of hidden_states[stage]'s grid (default feature_stage) for a square image_size input."""
        stage = self.feature_stage if stage is None else stage
        stage = stage % (self.num_stages + 1)
        return self.image_size // (self.patch_size * 2 ** max(stage - 1, 0))

    @property
    def d_model(self) -> int:
        """Channels of `features`."""
        stage = self.feature_stage % (self.num_stages + 1)
        return self.hidden_sizes[max(stage - 1, 0)]

    @property
    def num_features(self) -> int:
        return self.grid() ** 2


def _conv(features, size, name, groups=1, padding="VALID", dtype=None):
    return nn.Conv(features, (size, size), strides=(1, 1) if groups > 1 else (size, size), padding=padding,
                   feature_group_count=groups, dtype=dtype, name=name,
                   kernel_init=nn.with_logical_partitioning(default_init, (None, None, None, "embed")))


class ConvNeXtBlock(nn.Module):
    dim: int
    layer_scale_init: float
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        y = _conv(self.dim, 7, "dwconv", groups=self.dim, padding=((3, 3), (3, 3)), dtype=self.dtype)(x)
        y = LayerNorm(INNER_EPS, name="norm")(y)
        y = Dense(4 * self.dim, use_bias=True, axes=("embed", "mlp"), dtype=self.dtype, name="fc1")(y)
        y = jax.nn.gelu(y, approximate=False)
        y = Dense(self.dim, use_bias=True, axes=("mlp", "embed"), dtype=self.dtype, name="fc2")(y)
        if self.layer_scale_init > 0:
            gamma = self.param("gamma", nn.with_logical_partitioning(
                nn.initializers.constant(self.layer_scale_init), ("embed",)), (self.dim,))
            y = gamma.astype(y.dtype) * y
        return x + y


class ConvNeXt(nn.Module):
    """pixel_values [B, H, W, C] (H, W multiples of config.stride) -> dict (module docstring)."""

    config: ConvNeXtConfig

    @nn.compact
    def __call__(self, pixel_values, *, deterministic: bool = True):
        cfg = self.config
        check_rank("pixel_values", pixel_values, 4, "[batch, height, width, channels] (NHWC)")
        _, h, w, c = pixel_values.shape
        if c != cfg.num_channels or h % cfg.stride or w % cfg.stride:
            fail("pixel_values", f"[batch, H, W, {cfg.num_channels}] with H, W multiples of {cfg.stride}",
                 f"shape {pixel_values.shape}")
        x = _conv(cfg.hidden_sizes[0], cfg.patch_size, "stem_conv", dtype=cfg.dtype)(pixel_values)
        x = LayerNorm(INNER_EPS, name="stem_norm")(x)
        hidden = [x]
        for s, (dim, depth) in enumerate(zip(cfg.hidden_sizes, cfg.depths)):
            if s > 0:
                x = LayerNorm(INNER_EPS, name=f"stages_{s}_down_norm")(x)
                x = _conv(dim, 2, f"stages_{s}_down_conv", dtype=cfg.dtype)(x)
            for j in range(depth):
                x = ConvNeXtBlock(dim, cfg.layer_scale_init, cfg.dtype, name=f"stages_{s}_blocks_{j}")(x)
            hidden.append(x)
        feats = hidden[cfg.feature_stage]
        return {"last_hidden_state": x, "hidden_states": hidden,
                "pooler_output": LayerNorm(cfg.norm_eps, name="norm")(x.mean(axis=(1, 2))),
                "features": feats.reshape(feats.shape[0], -1, feats.shape[-1])}
