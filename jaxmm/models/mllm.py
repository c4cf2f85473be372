"""LLaVA-style multimodal LLM: encoder -> projector -> features spliced in at the placeholder -> LLM.

The encoder is picked by name from `jaxmm.models.encoders` ("vit", "audio", or any a paper registers).
Parameter groups (top-level subtrees): `encoder`, `projector`, `llm`
(LoRA params `lora_a`/`lora_b` inside any of them form the `lora` group), so each can be frozen, LoRA-tuned
or fully tuned by the trainer.

Token convention (jaxmm.data.conversation): each row holds at most ONE placeholder token (`<image>` or
`<audio>`); the model replaces it by the encoder's N projected features, so the LLM runs on L + N − 1
positions. Logits are gathered back to the L input positions — the logit at the placeholder is the one after
the last feature — so callers compute the loss on the original ids: CE(logits[:, :-1], ids[:, 1:]) weighted by
loss_mask[:, 1:]. A row without a placeholder gets N padding positions at its end instead.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from typing import Any

from jaxmm.models import encoders
from jaxmm.models.llm import LLM, LLMConfig, generate as llm_generate
from jaxmm.models.projector import Projector
from jaxmm.checks import check_rank, fail
from jaxmm.ops.losses import masked_cross_entropy


@dataclasses.dataclass(frozen=True)
class MLLMConfig:
    llm: LLMConfig
    placeholder_id: int
    encoder: str = "vit"  # a name registered in jaxmm.models.encoders
    encoder_config: Any = None  # that encoder's config dataclass
    projector: str = "mlp2x_gelu"

    def __post_init__(self):
        spec = encoders.get(self.encoder)
        if not isinstance(self.encoder_config, spec.config_cls):
            fail("encoder_config", f"a {getattr(spec.config_cls, '__name__', spec.config_cls)} for encoder "
                 f"{self.encoder!r}", type(self.encoder_config).__name__)

    @property
    def modality(self) -> str:
        """The batch key of the encoder's input (also its placeholder kind): "image", "audio", ..."""
        return encoders.get(self.encoder).input_key


def expand_placeholders(input_ids, attention_mask, placeholder_id: int, n: int):
    """Index maps for splicing N features at each row's single placeholder.

    Returns (src_token [B, L+N−1] index into the L tokens, src_feat [B, L+N−1] index into the N features or −1,
    mask [B, L+N−1], placeholder position p [B] (L when a row has none), has [B]).
    """
    b, length = input_ids.shape
    is_ph = input_ids == placeholder_id
    has = jnp.any(is_ph, axis=1)
    p = jnp.where(has, jnp.argmax(is_ph, axis=1), length)
    u = jnp.arange(length + n - 1)[None, :]
    pp = p[:, None]
    in_feat = (u >= pp) & (u < pp + n)
    src_token = jnp.where(u < pp, u, u - n + 1)
    src_token = jnp.clip(src_token, 0, length - 1)
    src_feat = jnp.where(in_feat, u - pp, -1)
    tok_mask = jnp.take_along_axis(attention_mask, src_token, axis=1).astype(bool)
    mask = jnp.where(in_feat, has[:, None], tok_mask & ~in_feat)
    return src_token, src_feat, mask.astype(jnp.int32), p, has


class MLLM(nn.Module):
    config: MLLMConfig

    def setup(self):
        cfg = self.config
        self.encoder = encoders.get(cfg.encoder).module(cfg.encoder_config)
        self.projector = Projector(cfg.llm.d_model, cfg.projector, dtype=cfg.llm.dtype)
        self.llm = LLM(cfg.llm)

    def encode(self, media, deterministic: bool = True):
        """media (the encoder's input, e.g. pixel_values NHWC or log-mel [B, T, n_mels]) -> projected features
        [B, N, D_llm]."""
        return self.projector(self.encoder(media, deterministic=deterministic)["features"])

    def embed_inputs(self, input_ids, media, attention_mask=None, deterministic: bool = True):
        """Spliced input embeddings [B, L+N−1, D], their mask and the placeholder positions."""
        check_rank("input_ids", input_ids, 2, "[batch, length]")
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        feats = self.encode(media, deterministic)
        if feats.shape[0] != input_ids.shape[0]:
            fail(self.config.modality, f"batch {input_ids.shape[0]} like input_ids", f"shape {media.shape}")
        n = feats.shape[1]
        src_tok, src_feat, mask, p, _ = expand_placeholders(input_ids, attention_mask, self.config.placeholder_id, n)
        tok = self.llm.embed(input_ids)
        tok = jnp.take_along_axis(tok, src_tok[..., None], axis=1)
        fe = jnp.take_along_axis(feats.astype(tok.dtype), jnp.maximum(src_feat, 0)[..., None], axis=1)
        embeds = jnp.where((src_feat >= 0)[..., None], fe, tok)
        return embeds, mask, p, n

    def __call__(self, input_ids, media, attention_mask=None, *, deterministic: bool = True):
        """Logits [B, L, vocab] aligned with input_ids (see module docstring)."""
        embeds, mask, p, n = self.embed_inputs(input_ids, media, attention_mask, deterministic)
        logits = self.llm(inputs_embeds=embeds, attention_mask=mask, deterministic=deterministic)
        t = jnp.arange(input_ids.shape[1])[None, :]
        back = jnp.where(t >= p[:, None], t + n - 1, t)
        return jnp.take_along_axis(logits, back[..., None], axis=1)


def mllm_loss(model: MLLM, params, batch, *, deterministic: bool = True, rngs=None):
    """Answer-token cross-entropy; batch has input_ids, loss_mask, attention_mask and the modality key."""
    media = batch[model.config.modality]
    logits = model.apply({"params": params}, batch["input_ids"], media, batch.get("attention_mask"),
                         deterministic=deterministic, rngs=rngs)
    return masked_cross_entropy(logits[:, :-1], batch["input_ids"][:, 1:], batch["loss_mask"][:, 1:])


def generate(model: MLLM, params, prompt_ids, prompt_mask, media, **kwargs):
    """Generate answers: prefill with the spliced multimodal embeddings (left-padded prompts), then decode.
    kwargs go to `jaxmm.models.llm.generate` (max_new_tokens, temperature, top_k, top_p, eos_id, rng)."""
    embeds, mask, _, _ = model.apply({"params": params}, prompt_ids, media, prompt_mask, method=MLLM.embed_inputs)
    return llm_generate(LLM(model.config.llm), params["llm"], None, mask, prefill_embeds=embeds, **kwargs)
