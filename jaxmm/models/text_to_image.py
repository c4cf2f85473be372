"""Text-to-image denoiser: a CLIP-style text tower (jaxmm.models.text_encoder) whose last hidden states are the
cross-attention context of a conditional UNet (jaxmm.models.unet), as Stable Diffusion pairs them.

    model = TextToImage(TextEncoderConfig(...), UNetConfig(...))
    context = model.apply(v, ids, mask, method=TextToImage.encode)       # [B, L, d_text]
    eps = model.apply(v, x_t, t, context, method=TextToImage.denoise)    # [B, H, W, C]
    eps = model.apply(v, x_t, t, ids, mask)                               # both at once (init uses this)

`coord_channels=True` appends two constant maps to the UNet's input, the pixel's x and y in [-1, 1] (CoordConv,
Liu et al. 2018; `unet_config.in_channels` = image channels + 2): a UNet is translation-equivariant up to its
zero padding, so absolute position ("on the left") is otherwise only learnable from border effects.
`text_channels=k > 0` appends k more maps: a Dense projection of the context's mean over all L token positions,
padding included (`denoise` sees the context only, as guidance's null context needs; the causal text tower's
padding states still depend on the caption), the same at every pixel (the input layer then sees caption and
position together, and its nonlinear successors can place an object by the caption; a reconstruction of concatenation conditioning, not Stable Diffusion's design, which conditions
through cross-attention only). Both are functions of (x, context) only, so condition dropout and classifier-free
guidance act on them as on the cross-attention.

Params: `text_encoder/...` (the CLIP text tower's layout: a `CLIPTextModel` folder loads into it) and `unet/...`
(diffusers' UNet2DConditionModel names). `UNetConfig.cross_attention_dim` must equal the text width.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxmm.checks import fail
from jaxmm.models.text_encoder import TextEncoder, TextEncoderConfig
from jaxmm.models.unet import UNet, UNetConfig
from jaxmm.nn.layers import Dense


class TextToImage(nn.Module):
    text_config: TextEncoderConfig
    unet_config: UNetConfig
    coord_channels: bool = False
    text_channels: int = 0

    def setup(self):
        if self.unet_config.cross_attention_dim != self.text_config.d_model:
            fail("unet_config.cross_attention_dim", f"the text width {self.text_config.d_model}",
                 self.unet_config.cross_attention_dim)
        self.text_encoder = TextEncoder(self.text_config)
        self.unet = UNet(self.unet_config)
        if self.text_channels:
            self.text_to_channels = Dense(self.text_channels, use_bias=True, axes=("embed", None),
                                          dtype=self.unet_config.dtype)

    def encode(self, input_ids, attention_mask):
        """[B, L] ids and 0/1 mask -> context [B, L, d_text] (the final-norm hidden states, as SD uses CLIP's)."""
        return self.text_encoder(input_ids, attention_mask)["last_hidden_state"]

    def denoise(self, x, timesteps, context):
        if self.coord_channels:
            x = add_coord_channels(x)
        if self.text_channels:
            t = self.text_to_channels(jnp.mean(context, axis=1)).astype(x.dtype)        # [B, k]
            x = jnp.concatenate([x, jnp.broadcast_to(t[:, None, None, :], x.shape[:3] + t.shape[-1:])], axis=-1)
        return self.unet(x, timesteps, context)

    def __call__(self, x, timesteps, input_ids, attention_mask):
        return self.denoise(x, timesteps, self.encode(input_ids, attention_mask))


def add_coord_channels(x):
    """[B, H, W, C] -> [B, H, W, C + 2]: x then the pixel centres' column and row coordinates, each linear in
    [-1, 1] (left / top = -1)."""
    b, h, w, _ = x.shape
    col = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w * 2 - 1
    row = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h * 2 - 1
    grid = jnp.stack(jnp.broadcast_arrays(col[None, :], row[:, None]), axis=-1).astype(x.dtype)   # [H, W, 2]
    return jnp.concatenate([x, jnp.broadcast_to(grid, (b, h, w, 2))], axis=-1)
