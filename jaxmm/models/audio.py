"""Whisper-style audio encoder (Radford et al. 2022).

log-mel [B, T, n_mels] (frames last-but-one; `jaxmm.ops.audio.log_mel_spectrogram` makes them) ->
conv1d(k=3, pad 1) + GELU -> conv1d(k=3, stride 2, pad 1) + GELU -> + fixed sinusoidal positions ->
pre-norm blocks (LayerNorm, GELU MLP, q/v/out biases, no k bias) -> final LayerNorm -> [B, ceil(T/2), D],
optionally average-pooled by `pool` along time to shorten what an MLLM receives.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmm.nn.layers import LayerNorm, default_init
from jaxmm.nn.transformer import BlockConfig, Stack
from jaxmm.checks import check_rank, fail


@dataclasses.dataclass(frozen=True)
class AudioConfig:
    n_mels: int = 80
    max_frames: int = 3000  # input frames; positions exist for max_frames // 2 outputs
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 128
    norm_eps: float = 1e-5
    pool: int = 1
    attention: str = "softmax"  # an attention kind (jaxmm.nn.ATTENTION_KINDS)
    attention_args: tuple = ()  # that kind's arguments as (name, value) pairs, e.g. (("length", 10),)
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q", "v")
    block_extra: tuple = ()  # further BlockConfig fields as (name, value) pairs
    dtype: Any = None
    remat: bool = False

    def num_features(self, frames: int) -> int:
        return math.ceil(frames / 2) // self.pool

    def block(self) -> BlockConfig:
        return BlockConfig(d_model=self.d_model, num_heads=self.num_heads, mlp_dim=self.mlp_dim, mlp="gelu",
                           norm="layer", norm_eps=self.norm_eps, qkv_bias=(True, False, True), out_bias=True,
                           mlp_bias=True, rope_theta=None, attention=self.attention,
                           attention_args=self.attention_args, lora_rank=self.lora_rank, lora_alpha=self.lora_alpha,
                           lora_targets=self.lora_targets, dtype=self.dtype,
                           remat=self.remat, **dict(self.block_extra))


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's fixed positional embedding [length, channels]: [sin(t·τ_i), cos(t·τ_i)],
    τ_i = exp(−i·ln(max_timescale)/(channels/2 − 1))."""
    inc = math.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(-inc * np.arange(channels // 2))
    t = np.arange(length)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


class AudioEncoder(nn.Module):
    """mel [B, T, n_mels] -> {"last_hidden_state": [B, ceil(T/2), D], "features": pooled [B, ceil(T/2)//pool, D]}."""

    config: AudioConfig

    @nn.compact
    def __call__(self, mel, *, deterministic: bool = True):
        cfg = self.config
        check_rank("mel", mel, 3, "[batch, frames, n_mels]")
        if mel.shape[2] != cfg.n_mels or mel.shape[1] > cfg.max_frames:
            fail("mel", f"shape [batch, frames <= {cfg.max_frames}, {cfg.n_mels}]", f"shape {mel.shape}")
        conv = lambda name, stride: nn.Conv(cfg.d_model, (3,), strides=(stride,), padding=((1, 1),), dtype=cfg.dtype,
                                            name=name, kernel_init=nn.with_logical_partitioning(
                                                default_init, (None, None, "embed")))
        x = jax.nn.gelu(conv("conv1", 1)(mel), approximate=False)
        x = jax.nn.gelu(conv("conv2", 2)(x), approximate=False)
        x = x + jnp.asarray(sinusoids(cfg.max_frames // 2 + 1, cfg.d_model)[: x.shape[1]], x.dtype)
        x = Stack(cfg.block(), cfg.num_layers, name="encoder")(x, deterministic=deterministic)
        x = LayerNorm(cfg.norm_eps, name="final_norm")(x)
        feats = x
        if cfg.pool > 1:
            n = x.shape[1] // cfg.pool
            feats = x[:, : n * cfg.pool].reshape(x.shape[0], n, cfg.pool, -1).mean(axis=2)
        return {"last_hidden_state": x, "features": feats}
