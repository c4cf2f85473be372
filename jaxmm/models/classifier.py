"""Classifiers on a jaxmm backbone: a linear head on pooled features.

`Classifier`: a ViT (pooled [CLS] output) or an LLM (the last real token's final hidden state; right padding)
with a `head` Dense to `num_classes`; with `objective="lm"` the LLM's next-token logits instead (pre-training).
Params: `backbone/...`, `head/kernel` — the PEFT experiments' layout (a PEFT method adds its own params inside
the backbone: LoRA, prefix, NTK).
`PooledViTClassifier`: a ViT's patch features (`features`, no [CLS]) mean-pooled or attention-pooled with one
learned query, then a Dense; params `encoder/...` (the MLLM's encoder subtree layout, so a trained probe's
encoder can be loaded into an MLLM).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxmm.checks import fail


class Classifier(nn.Module):
    """`arch` "vit" (inputs: images [B, H, W, C]) or "llm" (inputs: token ids [B, L] with `attention_mask`);
    `backbone_config` its ViTConfig / LLMConfig. Returns logits [B, num_classes] (float32), or [B, L, vocab] for
    objective "lm"."""

    arch: str
    backbone_config: Any
    num_classes: int
    objective: str = "classify"

    @nn.compact
    def __call__(self, inputs, attention_mask=None):
        from jaxmm.models.llm import LLM
        from jaxmm.models.vit import ViT
        from jaxmm.nn.layers import Dense

        if self.arch not in ("vit", "llm"):
            fail("arch", "'vit' or 'llm'", repr(self.arch))
        if self.arch == "vit":
            feats = ViT(self.backbone_config, name="backbone")(inputs)["pooler_output"]
        else:
            if attention_mask is None:
                fail("attention_mask", "a [B, L] 0/1 mask for arch 'llm'", "None")
            logits, hidden = LLM(self.backbone_config, name="backbone")(inputs, attention_mask=attention_mask,
                                                                         return_hidden=True)
            if self.objective == "lm":
                return logits
            last = jnp.sum(attention_mask.astype(jnp.int32), axis=1) - 1  # right padding: the last real token
            feats = jnp.take_along_axis(hidden[-1], last[:, None, None], axis=1)[:, 0]
        return Dense(self.num_classes, axes=("embed", None), name="head")(feats).astype(jnp.float32)


class PooledViTClassifier(nn.Module):
    """images [B, H, W, C] -> ViT patch features -> mean (`pool="mean"`) or one-query attention pooling
    (`pool="attn"`, 4 heads) -> Dense -> logits [B, classes]."""

    config: Any  # jaxmm.models.vit.ViTConfig
    classes: int
    pool: str = "mean"

    @nn.compact
    def __call__(self, image):
        from jaxmm.models.vit import ViT

        if self.pool not in ("mean", "attn"):
            fail("pool", "'mean' or 'attn'", repr(self.pool))
        f = ViT(self.config, name="encoder")(image)["features"]
        if self.pool == "attn":
            d = self.config.d_model
            q = self.param("query", nn.initializers.normal(0.02), (1, 1, d))
            f = nn.MultiHeadDotProductAttention(num_heads=4)(jnp.broadcast_to(q, (f.shape[0], 1, d)), f)[:, 0]
        else:
            f = f.mean(1)
        return nn.Dense(self.classes)(f)
