"""CLIP text tower (Radford et al. 2021): a causal transformer encoder over token ids.

ids [B, L] -> token embedding + learned positions -> causal pre-norm blocks (LayerNorm, quick-GELU MLP, biases
everywhere; padding keys masked by `attention_mask`) -> final LayerNorm -> outputs:
  last_hidden_state [B, L, D], hidden_states: list of 1+num_layers [B, L, D] (index 0 = embeddings; the last is
  before the final norm, as HF's), pooler_output [B, D] = last_hidden_state at each row's end-of-text token,
  text_embeds [B, projection_dim] = pooler_output·W when `projection_dim` is set (CLIPModel's text_projection).
End of text (as transformers): with `eos_token_id == 2` (configs written before transformers fixed it) the
position of the largest id in the row (CLIP's eot is its largest id); otherwise the first `eos_token_id`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxmm.checks import check_rank, fail
from jaxmm.nn.layers import Dense, Embed, LayerNorm, default_init
from jaxmm.nn.transformer import BlockConfig, Stack


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
    vocab_size: int = 49408
    max_positions: int = 77
    d_model: int = 512
    num_layers: int = 12
    num_heads: int = 8
    mlp_dim: int = 2048
    mlp: str = "quick_gelu"
    norm_eps: float = 1e-5
    eos_token_id: int = 2
    projection_dim: int | None = None
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q", "v")
    dtype: Any = None
    remat: bool = False

    def block(self) -> BlockConfig:
        return BlockConfig(d_model=self.d_model, num_heads=self.num_heads, mlp_dim=self.mlp_dim, mlp=self.mlp,
                           norm="layer", norm_eps=self.norm_eps, qkv_bias=True, out_bias=True, mlp_bias=True,
                           rope_theta=None, lora_rank=self.lora_rank, lora_alpha=self.lora_alpha,
                           lora_targets=self.lora_targets, dtype=self.dtype, remat=self.remat)


def end_of_text(input_ids, eos_token_id: int):
    """[B] index of each row's end-of-text token (module docstring); a row without eos_token_id gives 0."""
    if eos_token_id == 2:
        return jnp.argmax(input_ids, axis=-1)
    return jnp.argmax(input_ids == eos_token_id, axis=-1)


class TextEncoder(nn.Module):
    """ids [B, L] (L <= max_positions), attention_mask [B, L] (1 = real) -> dict (see module docstring).
    Params: token_embed, position_embedding, encoder/layers_i, final_norm, (projection)."""

    config: TextEncoderConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, *, deterministic: bool = True):
        cfg = self.config
        check_rank("input_ids", input_ids, 2, "[batch, length]")
        b, length = input_ids.shape
        if length > cfg.max_positions:
            fail("input_ids", f"length <= max_positions={cfg.max_positions}", f"shape {input_ids.shape}")
        x = Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, name="token_embed")(input_ids)
        pos = self.param("position_embedding", nn.with_logical_partitioning(default_init, (None, "embed")),
                         (cfg.max_positions, cfg.d_model))
        x = x + pos[:length].astype(x.dtype)
        mask = None
        if attention_mask is not None:
            check_rank("attention_mask", attention_mask, 2, "[batch, length] (1 = real token)")
            mask = attention_mask.astype(jnp.bool_)[:, None, None, :]
        last, hidden = Stack(cfg.block(), cfg.num_layers, name="encoder")(x, mask=mask, is_causal=True,
                                                                          deterministic=deterministic,
                                                                          return_hidden=True)
        last = LayerNorm(cfg.norm_eps, name="final_norm")(last)
        pooled = jnp.take_along_axis(last, end_of_text(input_ids, cfg.eos_token_id)[:, None, None], axis=1)[:, 0]
        out = {"last_hidden_state": last, "hidden_states": hidden, "pooler_output": pooled}
        if cfg.projection_dim:
            out["text_embeds"] = Dense(cfg.projection_dim, axes=("embed", None), dtype=cfg.dtype,
                                       name="projection")(pooled)
        return out
