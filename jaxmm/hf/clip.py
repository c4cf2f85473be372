"""HF CLIP vision tower (`CLIPVisionModel`, or the vision half of `CLIPModel`) -> jaxmm.models.vit.ViT params.

Name map (HF -> jaxmm), with an optional `vision_model.` prefix (transformers < 5 and CLIPModel use it):
  embeddings.patch_embedding.weight [D, C, p, p]  -> patch_embed/kernel [p, p, C, D]
  embeddings.class_embedding [D]                  -> class_embedding
  embeddings.position_embedding.weight [1+N, D]   -> position_embedding
  pre_layrnorm / post_layernorm .weight/.bias     -> pre_norm / post_norm .scale/.bias
  encoder.layers.i.layer_norm1 / layer_norm2      -> encoder/layers_i/attn_norm / mlp_norm
  encoder.layers.i.self_attn.{q,k,v,out}_proj     -> encoder/layers_i/attn/{q,k,v,o} (kernel = weightᵀ, bias)
  encoder.layers.i.mlp.fc1 / fc2                  -> encoder/layers_i/mlp/fc1 / fc2
  visual_projection.weight [P, D] (CLIPModel)     -> projection/kernel [D, P]
CLIPModel's text tower (`text_model.*`, `text_projection.weight`) and `logit_scale` are read and dropped: jaxmm
imports the vision tower only.
"""
from __future__ import annotations

import jax.numpy as jnp

from jaxmm.models.llm import add_fresh_lora, convert_tensors, param_shapes
from jaxmm.models.vit import ViT, ViTConfig
from jaxmm.checks import fail

CLIP_ARCHITECTURES = ("CLIPVisionModel", "CLIPModel")
_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def vit_config_from_hf(config: dict, **overrides) -> ViTConfig:
    """ViTConfig of a CLIPVisionModel config dict, or of a CLIPModel's `vision_config` (with its projection)."""
    arch = (config.get("architectures") or [None])[0]
    if arch not in CLIP_ARCHITECTURES:
        fail("config.architectures[0]", f"one of {CLIP_ARCHITECTURES}", repr(arch))
    vision = config.get("vision_config", {}) if arch == "CLIPModel" else config
    act = vision.get("hidden_act", "quick_gelu")
    if act not in _ACTIVATIONS:
        fail("config.hidden_act", f"one of {sorted(_ACTIVATIONS)}", repr(act))
    base = dict(image_size=int(vision.get("image_size", 224)), patch_size=int(vision.get("patch_size", 32)),
                num_channels=int(vision.get("num_channels", 3)), d_model=int(vision.get("hidden_size", 768)),
                num_layers=int(vision.get("num_hidden_layers", 12)),
                num_heads=int(vision.get("num_attention_heads", 12)),
                mlp_dim=int(vision.get("intermediate_size", 3072)), mlp=_ACTIVATIONS[act],
                norm_eps=float(vision.get("layer_norm_eps", 1e-5)),
                projection_dim=int(config.get("projection_dim", 512)) if arch == "CLIPModel" else None)
    base.update(overrides)
    return ViTConfig(**base)


def _name_map(cfg: ViTConfig, prefix: str) -> dict:
    m = {f"{prefix}embeddings.patch_embedding.weight": (("patch_embed", "kernel"), "conv"),
         f"{prefix}embeddings.class_embedding": (("class_embedding",), ""),
         f"{prefix}embeddings.position_embedding.weight": (("position_embedding",), "")}
    for hf, jx in (("pre_layrnorm", "pre_norm"), ("post_layernorm", "post_norm")):
        m[f"{prefix}{hf}.weight"] = ((jx, "scale"), "")
        m[f"{prefix}{hf}.bias"] = ((jx, "bias"), "")
    for i in range(cfg.num_layers):
        hf, jx = f"{prefix}encoder.layers.{i}.", ("encoder", f"layers_{i}")
        for h, j in (("layer_norm1", "attn_norm"), ("layer_norm2", "mlp_norm")):
            m[hf + h + ".weight"] = ((*jx, j, "scale"), "")
            m[hf + h + ".bias"] = ((*jx, j, "bias"), "")
        for h, j in (("self_attn.q_proj", ("attn", "q")), ("self_attn.k_proj", ("attn", "k")),
                     ("self_attn.v_proj", ("attn", "v")), ("self_attn.out_proj", ("attn", "o")),
                     ("mlp.fc1", ("mlp", "fc1")), ("mlp.fc2", ("mlp", "fc2"))):
            m[hf + h + ".weight"] = ((*jx, *j, "kernel"), "T")
            m[hf + h + ".bias"] = ((*jx, *j, "bias"), "")
    if cfg.projection_dim:
        m["visual_projection.weight"] = (("projection", "kernel"), "T")
    return m


def _dropped(name: str) -> bool:
    """CLIPModel tensors outside the vision tower, and position-id buffers some checkpoints store."""
    return (name.startswith(("text_model.", "text_projection.")) or name == "logit_scale"
            or name.endswith("embeddings.position_ids"))


def from_hf(config: dict, tensors: dict, dtype=jnp.float32, **overrides) -> tuple[ViT, dict]:
    """(ViT, params) from a CLIPVisionModel / CLIPModel config dict and its tensors {name: np.ndarray}.
    `ViT.apply({"params": params}, pixel_values_nhwc)` gives HF's last_hidden_state, pooler_output, hidden_states
    (and image_embeds for CLIPModel). Raises ValueError listing unmapped / missing tensor names."""
    cfg = vit_config_from_hf(config, **overrides)
    prefix = "vision_model." if any(n.startswith("vision_model.") for n in tensors) else ""
    model = ViT(cfg)
    shapes = param_shapes(model, jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32))
    params = convert_tensors(_name_map(cfg, prefix), tensors, ignore=_dropped, expected_shapes=shapes, dtype=dtype)
    return model, add_fresh_lora(params, shapes, dtype=dtype)
