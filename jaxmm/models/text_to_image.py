"""Text-to-image denoiser: a CLIP-style text tower (jaxmm.models.text_encoder) whose last hidden states are the
cross-attention context of a conditional UNet (jaxmm.models.unet), as Stable Diffusion pairs them.

    model = TextToImage(TextEncoderConfig(...), UNetConfig(...))
    context = model.apply(v, ids, mask, method=TextToImage.encode)       # [B, L, d_text]
    eps = model.apply(v, x_t, t, context, method=TextToImage.denoise)    # [B, H, W, C]
    eps = model.apply(v, x_t, t, ids, mask)                               # both at once (init uses this)

Params: `text_encoder/...` (the CLIP text tower's layout: a `CLIPTextModel` folder loads into it) and `unet/...`
(diffusers' UNet2DConditionModel names). `UNetConfig.cross_attention_dim` must equal the text width.
"""
from __future__ import annotations

import flax.linen as nn

from jaxmm.checks import fail
from jaxmm.models.text_encoder import TextEncoder, TextEncoderConfig
from jaxmm.models.unet import UNet, UNetConfig


class TextToImage(nn.Module):
    text_config: TextEncoderConfig
    unet_config: UNetConfig

    def setup(self):
        if self.unet_config.cross_attention_dim != self.text_config.d_model:
            fail("unet_config.cross_attention_dim", f"the text width {self.text_config.d_model}",
                 self.unet_config.cross_attention_dim)
        self.text_encoder = TextEncoder(self.text_config)
        self.unet = UNet(self.unet_config)

    def encode(self, input_ids, attention_mask):
        """[B, L] ids and 0/1 mask -> context [B, L, d_text] (the final-norm hidden states, as SD uses CLIP's)."""
        return self.text_encoder(input_ids, attention_mask)["last_hidden_state"]

    def denoise(self, x, timesteps, context):
        return self.unet(x, timesteps, context)

    def __call__(self, x, timesteps, input_ids, attention_mask):
        return self.denoise(x, timesteps, self.encode(input_ids, attention_mask))
