"""HF DINOv2 (`Dinov2Model`) -> jaxmm.models.dino.DinoViT (issue 21: Toffee's subject encoder on real data).

Name map (HF -> jaxmm), accepting both transformers' on-disk names (what the Hub's facebook/dinov2-* files and
`save_pretrained` write) and its in-memory 5.x names, with an optional `dinov2.` prefix (classification
checkpoints; their `classifier.*` is dropped):
  embeddings.patch_embeddings.projection.weight [D, C, p, p] / .bias -> patch_embed/kernel [p, p, C, D] / bias
  embeddings.cls_token [1, 1, D] / mask_token [1, D]                 -> cls_token [D] / mask_token [D]
  embeddings.position_embeddings [1, 1+N, D]                         -> position_embedding [1+N, D]
  encoder.layer.i.norm1/norm2                                        -> layers_i/norm1, norm2
  encoder.layer.i.attention.attention.{query,key,value} | attention.{q,k,v}_proj -> layers_i/q, k, v
  encoder.layer.i.attention.output.dense | attention.o_proj          -> layers_i/o
  encoder.layer.i.layer_scale{1,2}.lambda1                           -> layers_i/layer_scale1, layer_scale2
  encoder.layer.i.mlp.fc1 / fc2                                      -> layers_i/fc1, fc2
  layernorm                                                          -> norm
Refused: `use_swiglu_ffn=True` (the giant model's SwiGLU MLP) and register tokens (Dinov2WithRegistersModel).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxmm.checks import fail
from jaxmm.models.dino import DinoConfig, DinoViT
from jaxmm.models.llm import convert_tensors, param_shapes

DINOV2_ARCHITECTURES = ("Dinov2Model",)
_RENAMES = {"attention.attention.query.": "attention.q_proj.", "attention.attention.key.": "attention.k_proj.",
            "attention.attention.value.": "attention.v_proj.", "attention.output.dense.": "attention.o_proj."}


def dino_config_from_hf(config: dict, **overrides) -> DinoConfig:
    arch = (config.get("architectures") or ["Dinov2Model"])[0]
    if arch not in DINOV2_ARCHITECTURES:
        fail("config.architectures[0]", f"one of {DINOV2_ARCHITECTURES}", repr(arch))
    if config.get("use_swiglu_ffn", False):
        fail("config.use_swiglu_ffn", "False (the SwiGLU MLP of dinov2-giant is not implemented)", True)
    if config.get("hidden_act", "gelu") != "gelu":
        fail("config.hidden_act", "'gelu'", repr(config.get("hidden_act")))
    base = dict(image_size=int(config.get("image_size", 518)), patch_size=int(config.get("patch_size", 14)),
                num_channels=int(config.get("num_channels", 3)), d_model=int(config.get("hidden_size", 768)),
                num_layers=int(config.get("num_hidden_layers", 12)),
                num_heads=int(config.get("num_attention_heads", 12)), mlp_ratio=float(config.get("mlp_ratio", 4)),
                norm_eps=float(config.get("layer_norm_eps", 1e-6)),
                layerscale_value=float(config.get("layerscale_value", 1.0)), qkv_bias=bool(config.get("qkv_bias", True)))
    base.update(overrides)
    return DinoConfig(**base)


def name_map(cfg: DinoConfig) -> dict:
    """{HF name (5.x in-memory spelling): (param path, transform)}."""
    m = {"embeddings.patch_embeddings.projection.weight": (("patch_embed", "kernel"), "conv"),
         "embeddings.patch_embeddings.projection.bias": (("patch_embed", "bias"), ""),
         "embeddings.cls_token": (("cls_token",), ""), "embeddings.mask_token": (("mask_token",), ""),
         "embeddings.position_embeddings": (("position_embedding",), ""),
         "layernorm.weight": (("norm", "scale"), ""), "layernorm.bias": (("norm", "bias"), "")}
    for i in range(cfg.num_layers):
        h, p = f"encoder.layer.{i}.", f"layers_{i}"
        for ours, theirs in (("q", "attention.q_proj"), ("k", "attention.k_proj"), ("v", "attention.v_proj"),
                             ("o", "attention.o_proj"), ("fc1", "mlp.fc1"), ("fc2", "mlp.fc2")):
            m[h + theirs + ".weight"] = ((p, ours, "kernel"), "T")
            if ours in ("q", "k", "v") and not cfg.qkv_bias:
                continue
            m[h + theirs + ".bias"] = ((p, ours, "bias"), "")
        for n in ("norm1", "norm2"):
            m[h + n + ".weight"] = ((p, n, "scale"), "")
            m[h + n + ".bias"] = ((p, n, "bias"), "")
        m[h + "layer_scale1.lambda1"] = ((p, "layer_scale1"), "")
        m[h + "layer_scale2.lambda1"] = ((p, "layer_scale2"), "")
    return m


def _canonical(tensors: dict) -> dict:
    """Strip a `dinov2.` prefix, rename the on-disk attention names, squeeze the leading 1 of cls/mask/positions."""
    out = {}
    for name, a in tensors.items():
        if name.startswith("classifier."):
            continue
        name = name.removeprefix("dinov2.")
        for old, new in _RENAMES.items():
            name = name.replace(old, new)
        a = np.asarray(a)
        if name in ("embeddings.cls_token", "embeddings.mask_token", "embeddings.position_embeddings"):
            a = a.reshape(a.shape[-2:] if name.endswith("position_embeddings") else a.shape[-1:])
        out[name] = a
    if any("register_tokens" in n for n in out):
        fail("tensors", "a Dinov2Model without register tokens", "embeddings.register_tokens")
    return out


def from_hf(config: dict, tensors: dict, dtype=jnp.float32, **overrides) -> tuple[DinoViT, dict]:
    """(DinoViT, params) from a Dinov2Model config dict and its tensors {name: np.ndarray}; `DinoViT.apply(
    {"params": params}, pixel_values_nhwc)` gives HF's last_hidden_state, pooler_output and hidden_states."""
    cfg = dino_config_from_hf(config, **overrides)
    model = DinoViT(cfg)
    shapes = param_shapes(model, jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32))
    params = convert_tensors(name_map(cfg), _canonical(tensors), expected_shapes=shapes, dtype=dtype)
    return model, params
