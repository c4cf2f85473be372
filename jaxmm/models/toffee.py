"""Toffee's three diffusion models (arXiv 2406.09305) as one conditioned UNet: ToffeeNet, the Refiner, the View Generator.

    net = SubjectUNet(SubjectUNetConfig(unet=UNetConfig(in_channels=3 + 5, out_channels=3, ...), dino_dim=64))
    eps = net.apply({"params": p}, x_t, t, cond_image, subject_tokens, text_ids, view=None,
                    use_subject=mask_b, use_text=mask_b)

Every model is a `jaxmm.models.unet.UNet` whose input is the noisy image concatenated (channels) with a
condition image, and whose cross-attention context is
  [ Linear(DINO patch tokens of the subject) (or a learned null token row when use_subject is False) ;
    word embeddings + positions of the text (or the null row when use_text is False) ;
    one token from the target view (sin/cos of azimuth, elevation) when `view_token` ].
The three models differ only in the condition image and which conditions they use:
  ToffeeNet       cond = [source image (zeros for generation), edit mask, depth] (5 ch); subject + text;
  Refiner         cond = the detail-poor draft (3 ch); subject tokens of the ORIGINAL subject image + text; it
                  diffuses the residual (target − draft), not the image (train/tasks/toffee.py `residual_encode`);
  View Generator  cond = the subject's reference view (3 ch); subject tokens + the target view token.
The paper's models are Stable-Diffusion-scale latent UNets (ToffeeNet adds the mask/depth channels to the UNet
input as here); the token layout, the null rows and the λ knob below are our reconstruction (the paper does not
publish them).

λ (`lambda_guidance`): ε_λ = ε(text, ∅_subject) + λ·(ε(text, subject) − ε(text, ∅_subject)), optionally on top of
text classifier-free guidance. λ = 0 ignores the subject (pure text); λ = 1 is the plain conditional model; λ > 1
pushes identity at the cost of text alignment (our reading of the paper's "λ trades identity for text alignment";
its exact formula is unpublished).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmm.checks import check_rank, fail
from jaxmm.models.unet import UNet, UNetConfig


@dataclasses.dataclass(frozen=True)
class SubjectUNetConfig:
    unet: UNetConfig
    image_channels: int = 3        # channels of x_t (the UNet's in_channels = image_channels + cond_channels)
    dino_dim: int = 64
    vocab_size: int = 64
    text_len: int = 32
    view_token: bool = False

    @property
    def cond_channels(self) -> int:
        return self.unet.in_channels - self.image_channels

    def __post_init__(self):
        if self.unet.in_channels < self.image_channels or self.unet.out_channels != self.image_channels:
            fail("SubjectUNetConfig.unet", f"in_channels >= image_channels={self.image_channels} and out_channels "
                 f"= {self.image_channels}", (self.unet.in_channels, self.unet.out_channels))


def view_features(azimuth, elevation):
    """[B] degrees, [B] degrees -> [B, 4] (sin, cos of each): the View Generator's target-view input."""
    a, e = jnp.deg2rad(jnp.asarray(azimuth, jnp.float32)), jnp.deg2rad(jnp.asarray(elevation, jnp.float32))
    return jnp.stack([jnp.sin(a), jnp.cos(a), jnp.sin(e), jnp.cos(e)], -1)


class SubjectUNet(nn.Module):
    """See the module docstring. Shapes: x_t [B, H, W, image_channels]; t [B] or scalar; cond_image
    [B, H, W, cond_channels]; subject_tokens [B, N, dino_dim]; text_ids [B, text_len] int; view [B, 4];
    use_subject / use_text [B] bool (False: that condition replaced by its learned null row)."""
    config: SubjectUNetConfig

    @nn.compact
    def __call__(self, x_t, t, cond_image, subject_tokens, text_ids, view=None, use_subject=None, use_text=None):
        cfg = self.config
        b = x_t.shape[0]
        check_rank("cond_image", cond_image, 4, "[B, H, W, C]")
        if cond_image.shape[:3] != x_t.shape[:3] or cond_image.shape[-1] != cfg.cond_channels:
            fail("cond_image", f"shape {x_t.shape[:3] + (cfg.cond_channels,)}", f"shape {cond_image.shape}")
        check_rank("subject_tokens", subject_tokens, 3, "[B, N, dino_dim]")
        if subject_tokens.shape[0] != b or subject_tokens.shape[-1] != cfg.dino_dim:
            fail("subject_tokens", f"shape ({b}, N, {cfg.dino_dim})", f"shape {subject_tokens.shape}")
        if tuple(text_ids.shape) != (b, cfg.text_len):
            fail("text_ids", f"shape ({b}, {cfg.text_len})", f"shape {tuple(text_ids.shape)}")
        d = cfg.unet.cross_attention_dim
        subj = nn.Dense(d, name="subject_proj")(nn.LayerNorm(name="subject_norm")(subject_tokens))
        null_s = self.param("null_subject", nn.initializers.normal(0.02), (1, 1, d))
        if use_subject is not None:
            subj = jnp.where(jnp.asarray(use_subject)[:, None, None], subj, null_s)
        text = nn.Embed(cfg.vocab_size, d, name="word_embed")(text_ids)
        text = text + self.param("text_pos", nn.initializers.normal(0.02), (cfg.text_len, d))
        null_t = self.param("null_text", nn.initializers.normal(0.02), (1, 1, d))
        if use_text is not None:
            text = jnp.where(jnp.asarray(use_text)[:, None, None], text, null_t)
        parts = [subj, text]
        if cfg.view_token:
            if view is None or tuple(view.shape) != (b, 4):
                fail("view", f"shape ({b}, 4) (view_features of the target view)", None if view is None else view.shape)
            parts.append(nn.Dense(d, name="view_proj")(view)[:, None])
        context = jnp.concatenate(parts, 1)
        return UNet(cfg.unet, name="unet")(jnp.concatenate([x_t, cond_image.astype(x_t.dtype)], -1), t, context)


def lambda_guidance(model_fn, lam: float, text_scale: float = 1.0):
    """ε_λ as a sampler `model_fn(x, t)` from `model_fn(x, t, use_subject, use_text)` (batched over [x; x; x]):
    ε = ε(∅, ∅) + text_scale·(ε(text, ∅s) − ε(∅, ∅)) + λ·(ε(text, s) − ε(text, ∅s)). text_scale = 1 drops the
    unconditional term's effect on the text side; λ as in the module docstring."""
    def guided(x, t):
        b = x.shape[0]
        on, off = jnp.ones((b,), bool), jnp.zeros((b,), bool)
        xs = jnp.concatenate([x, x, x])
        ts = jnp.concatenate([t, t, t]) if jnp.ndim(t) else t
        out = model_fn(xs, ts, jnp.concatenate([on, off, off]), jnp.concatenate([on, on, off]))
        full, text_only, uncond = jnp.split(out, 3)
        return uncond + text_scale * (text_only - uncond) + lam * (full - text_only)
    return guided


def drop_flags(key, batch: int, p_subject: float, p_text: float):
    """(use_subject, use_text) [B] bool with each condition dropped independently with its probability (training
    for classifier-free and λ guidance)."""
    ks, kt = jax.random.split(key)
    return (~jax.random.bernoulli(ks, p_subject, (batch,)), ~jax.random.bernoulli(kt, p_text, (batch,)))
