"""HF SigLIP vision tower (`SiglipVisionModel`, or the vision half of `SiglipModel`) -> jaxmm.models.vit.ViT.

SigLIP differs from CLIP's tower: the patch conv has a bias, there is no class token and no pre-LayerNorm, the
post-LayerNorm normalises every token (HF's last_hidden_state), and pooler_output comes from a multihead
attention-pooling head (`vision_use_head`, default True). Name map (HF -> jaxmm), with an optional
`vision_model.` prefix (SiglipModel checkpoints, the usual LLaVA source):
  embeddings.patch_embedding.weight [D, C, p, p] / .bias -> patch_embed/kernel [p, p, C, D] / bias
  embeddings.position_embedding.weight [N, D]            -> position_embedding
  encoder.layers.i.*                                     -> encoder/layers_i/* (as CLIP)
  post_layernorm                                         -> post_norm
  head.probe [1, 1, D]                                   -> head/probe
  head.attention.in_proj_weight [3D, D] / in_proj_bias   -> head/q, head/k, head/v (split in thirds, transposed)
  head.attention.out_proj, head.layernorm, head.mlp.fc1/fc2 -> head/o, head/norm, head/mlp/fc1/fc2
SiglipModel's text tower (`text_model.*`), `logit_scale` and `logit_bias` are read and dropped.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxmm.checks import fail
from jaxmm.hf.clip import vision_name_map
from jaxmm.models.llm import add_fresh_lora, convert_tensors, param_shapes
from jaxmm.models.vit import ViT, ViTConfig

SIGLIP_ARCHITECTURES = ("SiglipVisionModel", "SiglipModel")
_ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu"}


def vit_config_from_hf(config: dict, **overrides) -> ViTConfig:
    """ViTConfig of a SiglipVisionModel config dict, or of a SiglipModel's `vision_config`."""
    arch = (config.get("architectures") or [None])[0]
    if arch not in SIGLIP_ARCHITECTURES:
        fail("config.architectures[0]", f"one of {SIGLIP_ARCHITECTURES}", repr(arch))
    vision = config.get("vision_config", {}) if arch == "SiglipModel" else config
    act = vision.get("hidden_act", "gelu_pytorch_tanh")
    if act not in _ACTIVATIONS:
        fail("config.hidden_act", f"one of {sorted(_ACTIVATIONS)}", repr(act))
    d, heads = int(vision.get("hidden_size", 768)), int(vision.get("num_attention_heads", 12))
    if d % heads:
        fail("config.hidden_size", f"a multiple of num_attention_heads={heads}", d)
    base = dict(image_size=int(vision.get("image_size", 224)), patch_size=int(vision.get("patch_size", 16)),
                num_channels=int(vision.get("num_channels", 3)), d_model=d,
                num_layers=int(vision.get("num_hidden_layers", 12)), num_heads=heads,
                mlp_dim=int(vision.get("intermediate_size", 3072)), mlp=_ACTIVATIONS[act],
                norm_eps=float(vision.get("layer_norm_eps", 1e-6)), class_token=False, pre_norm=False,
                patch_bias=True, pool="map" if vision.get("vision_use_head", True) else "none")
    base.update(overrides)
    return ViTConfig(**base)


def _split_in_proj(tensors: dict, prefix: str) -> dict:
    """torch MultiheadAttention's packed in_proj [3D, D] / [3D] -> q_proj/k_proj/v_proj weight and bias."""
    out = dict(tensors)
    h = f"{prefix}head.attention."
    for what in ("weight", "bias"):
        packed = out.pop(h + f"in_proj_{what}", None)
        if packed is None:
            continue
        for name, part in zip(("q_proj", "k_proj", "v_proj"), np.split(np.asarray(packed), 3, axis=0)):
            out[h + f"{name}.{what}"] = part
    return out


def _dropped(name: str) -> bool:
    return (name.startswith("text_model.") or name in ("logit_scale", "logit_bias")
            or name.endswith("embeddings.position_ids"))


def from_hf(config: dict, tensors: dict, dtype=jnp.float32, **overrides) -> tuple[ViT, dict]:
    """(ViT, params) from a SiglipVisionModel / SiglipModel config dict and its tensors {name: np.ndarray}.
    `ViT.apply({"params": params}, pixel_values_nhwc)` gives HF's last_hidden_state, pooler_output and
    hidden_states. Raises ValueError listing unmapped / missing tensor names."""
    cfg = vit_config_from_hf(config, **overrides)
    prefix = "vision_model." if any(n.startswith("vision_model.") for n in tensors) else ""
    model = ViT(cfg)
    shapes = param_shapes(model, jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32))
    params = convert_tensors(vision_name_map(cfg, prefix), _split_in_proj(tensors, prefix), ignore=_dropped,
                             expected_shapes=shapes, dtype=dtype)
    return model, add_fresh_lora(params, shapes, dtype=dtype)
