"""A small contrastive image-text encoder trained from scratch: the CLIP stand-in of experiments that cannot load
a real CLIP (ARTIST's FID features and CLIP-score, Toffee's CLIP-I / CLIP-T and pair filter).

    model = ContrastiveEncoder(text_encoder=TextEncoderConfig(...), width=32, embed_dim=64)    # ARTIST's
    model = ContrastiveEncoder(vit=ViTConfig(..., projection_dim=64), vocab_size=V, width=64,   # Toffee's
                               embed_dim=64, temperature=0.07)
    img, txt, scale = model.apply({"params": p}, images, ids)     # images [B, H, W, 3] in [-1, 1]; ids [B, L]
    loss = contrastive_loss(img, txt, scale)                       # symmetric InfoNCE (CLIP's objective)

Towers, each chosen by which config is given (id 0 is padding in both text towers):
- image: `vit` a `ViTConfig` -> jaxmm's ViT with its projection head (`projection_dim` = `embed_dim`); otherwise a
  conv tower: three stride-2 3x3 convs (width, 2 width, 4 width) with GELU, mean pool, linear to `embed_dim`;
- text: `text_encoder` a `TextEncoderConfig` -> the transformer's state at the end-of-text token, linear; otherwise
  a bag of words: the mean of `width`-wide embeddings of the non-padding ids (`vocab_size` of them), linear.
Both embeddings are L2-normalised; the logit scale is learned (`logit_scale` param, log 10 at init) or fixed at
1 / `temperature`.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

from jaxmm.checks import check_rank, fail
from jaxmm.models.text_encoder import TextEncoder, TextEncoderConfig
from jaxmm.models.vit import ViT, ViTConfig

PAD = 0


def _normalise(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def contrastive_loss(image_embeds, text_embeds, logit_scale):
    """Symmetric InfoNCE (CLIP, Radford et al. 2021, eq. in Fig. 3): logits = logit_scale · image_embeds ·
    text_embedsᵀ [B, B]; the mean of the image->text and text->image cross-entropies with row i's positive at
    column i (captions that repeat within a batch are still negatives: duplicates are rare by construction)."""
    check_rank("image_embeds", image_embeds, 2, "[batch, dim]")
    if text_embeds.shape != image_embeds.shape:
        fail("text_embeds", f"the shape of image_embeds {image_embeds.shape}", text_embeds.shape)
    logits = logit_scale * image_embeds @ text_embeds.T
    labels = jnp.arange(logits.shape[0])
    return 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                  + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())


class ContrastiveEncoder(nn.Module):
    """__call__(images [B,H,W,3] in [-1,1], ids [B,L]) -> (image_embeds [B,E], text_embeds [B,E], logit_scale);
    `encode_image` / `encode_text` alone (e.g. `encode_image` as an FID feature space). See the module docstring."""
    text_encoder: TextEncoderConfig | None = None
    vocab_size: int = 0
    vit: ViTConfig | None = None
    width: int = 32
    embed_dim: int = 64
    temperature: float | None = None

    def setup(self):
        if self.vit is not None:
            if self.vit.projection_dim != self.embed_dim:
                fail("vit.projection_dim", f"embed_dim ({self.embed_dim})", self.vit.projection_dim)
            self.vision = ViT(self.vit)
        else:
            self.convs = [nn.Conv(c, (3, 3), strides=(2, 2)) for c in (self.width, 2 * self.width, 4 * self.width)]
            self.image_proj = nn.Dense(self.embed_dim)
        if self.text_encoder is not None:
            self.text = TextEncoder(self.text_encoder)
        elif self.vocab_size > 0:
            self.words = nn.Embed(self.vocab_size, self.width)
        else:
            fail("text_encoder / vocab_size", "a TextEncoderConfig or a vocab_size > 0", self.vocab_size)
        self.text_proj = nn.Dense(self.embed_dim)
        if self.temperature is None:
            self.log_scale = self.param("logit_scale", lambda k: jnp.asarray(np.log(10.0), jnp.float32))
        elif not self.temperature > 0:
            fail("temperature", "a positive float or None (learned)", self.temperature)

    def encode_image(self, images):
        check_rank("images", images, 4, "[batch, height, width, 3] in [-1, 1]")
        if self.vit is not None:
            return _normalise(self.vision(images)["image_embeds"])
        h = images
        for conv in self.convs:
            h = nn.gelu(conv(h))
        return _normalise(self.image_proj(h.mean(axis=(1, 2))))

    def encode_text(self, ids):
        check_rank("ids", ids, 2, "[batch, length]")
        if self.text_encoder is not None:
            pooled = self.text(ids, (ids != PAD).astype(jnp.int32))["pooler_output"]
        else:
            keep = (ids != PAD)[..., None]
            pooled = (self.words(ids) * keep).sum(1) / jnp.maximum(keep.sum(1), 1)
        return _normalise(self.text_proj(pooled))

    def logit_scale(self):
        if self.temperature is None:
            return jnp.exp(self.log_scale)
        return jnp.asarray(1.0 / self.temperature, jnp.float32)

    def __call__(self, images, ids):
        return self.encode_image(images), self.encode_text(ids), self.logit_scale()
