"""HF CLIP vision tower (`CLIPVisionModel`, or the vision half of `CLIPModel`) -> jaxmm.models.vit.ViT params.

Name map (HF -> jaxmm), with an optional `vision_model.` prefix (transformers < 5, CLIPModel and
CLIPVisionModelWithProjection use it):
  embeddings.patch_embedding.weight [D, C, p, p]  -> patch_embed/kernel [p, p, C, D]
  embeddings.class_embedding [D]                  -> class_embedding
  embeddings.position_embedding.weight [1+N, D]   -> position_embedding
  pre_layrnorm / post_layernorm .weight/.bias     -> pre_norm / post_norm .scale/.bias
  encoder.layers.i.layer_norm1 / layer_norm2      -> encoder/layers_i/attn_norm / mlp_norm
  encoder.layers.i.self_attn.{q,k,v,out}_proj     -> encoder/layers_i/attn/{q,k,v,o} (kernel = weightᵀ, bias)
  encoder.layers.i.mlp.fc1 / fc2                  -> encoder/layers_i/mlp/fc1 / fc2
  visual_projection.weight [P, D] (CLIPModel, CLIPVisionModelWithProjection) -> projection/kernel [D, P]
`from_hf` reads CLIPModel's vision tower (its text tower and `logit_scale` are read and dropped); `text_from_hf`
reads the text tower (`CLIPTextModel`, or CLIPModel's / CLIPTextModelWithProjection's `text_model.*` +
`text_projection.weight`) into
jaxmm.models.text_encoder.TextEncoder:
  embeddings.token_embedding.weight [V, D]      -> token_embed/embedding
  embeddings.position_embedding.weight [P, D]   -> position_embedding
  encoder.layers.i.*                            -> encoder/layers_i/* (as the vision tower)
  final_layer_norm                              -> final_norm
  text_projection.weight [P, D] (CLIPModel)     -> projection/kernel [D, P]
"""
from __future__ import annotations

import jax.numpy as jnp

from jaxmm.models.llm import add_fresh_lora, convert_tensors, param_shapes
from jaxmm.models.text_encoder import TextEncoder, TextEncoderConfig
from jaxmm.models.vit import ViT, ViTConfig
from jaxmm.checks import fail

CLIP_ARCHITECTURES = ("CLIPVisionModel", "CLIPVisionModelWithProjection", "CLIPModel")
CLIP_TEXT_ARCHITECTURES = ("CLIPTextModel", "CLIPTextModelWithProjection", "CLIPModel")
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
                projection_dim=(int(config.get("projection_dim", 512))
                                if arch in ("CLIPModel", "CLIPVisionModelWithProjection") else None))
    base.update(overrides)
    return ViTConfig(**base)


def encoder_layer_map(num_layers: int, hf_prefix: str, jx_prefix: tuple) -> dict:
    """HF CLIP/SigLIP encoder layers (`<hf_prefix>layers.i.`) -> jaxmm Stack blocks (`jx_prefix` + layers_i)."""
    m = {}
    for i in range(num_layers):
        hf, jx = f"{hf_prefix}layers.{i}.", (*jx_prefix, f"layers_{i}")
        for h, j in (("layer_norm1", "attn_norm"), ("layer_norm2", "mlp_norm")):
            m[hf + h + ".weight"] = ((*jx, j, "scale"), "")
            m[hf + h + ".bias"] = ((*jx, j, "bias"), "")
        for h, j in (("self_attn.q_proj", ("attn", "q")), ("self_attn.k_proj", ("attn", "k")),
                     ("self_attn.v_proj", ("attn", "v")), ("self_attn.out_proj", ("attn", "o")),
                     ("mlp.fc1", ("mlp", "fc1")), ("mlp.fc2", ("mlp", "fc2"))):
            m[hf + h + ".weight"] = ((*jx, *j, "kernel"), "T")
            m[hf + h + ".bias"] = ((*jx, *j, "bias"), "")
    return m


def vision_name_map(cfg: ViTConfig, prefix: str) -> dict:
    """HF vision tower names -> ViT param paths, for CLIP (class token, pre-LayerNorm) and SigLIP (patch bias,
    attention-pooling head; its packed `in_proj` is split into q/k/v by jaxmm.hf.siglip before this map)."""
    m = {f"{prefix}embeddings.patch_embedding.weight": (("patch_embed", "kernel"), "conv"),
         f"{prefix}embeddings.position_embedding.weight": (("position_embedding",), "")}
    if cfg.patch_bias:
        m[f"{prefix}embeddings.patch_embedding.bias"] = (("patch_embed", "bias"), "")
    if cfg.class_token:
        m[f"{prefix}embeddings.class_embedding"] = (("class_embedding",), "")
    norms = [("post_layernorm", "post_norm")] + ([("pre_layrnorm", "pre_norm")] if cfg.pre_norm else [])
    for hf, jx in norms:
        m[f"{prefix}{hf}.weight"] = ((jx, "scale"), "")
        m[f"{prefix}{hf}.bias"] = ((jx, "bias"), "")
    m.update(encoder_layer_map(cfg.num_layers, f"{prefix}encoder.", ("encoder",)))
    if cfg.pool == "map":
        h = f"{prefix}head."
        m[h + "probe"] = (("head", "probe"), "")
        for hf, jx in (("attention.q_proj", "q"), ("attention.k_proj", "k"), ("attention.v_proj", "v"),
                       ("attention.out_proj", "o"), ("mlp.fc1", ("mlp", "fc1")), ("mlp.fc2", ("mlp", "fc2"))):
            jx = jx if isinstance(jx, tuple) else (jx,)
            m[h + hf + ".weight"] = (("head", *jx, "kernel"), "T")
            m[h + hf + ".bias"] = (("head", *jx, "bias"), "")
        m[h + "layernorm.weight"] = (("head", "norm", "scale"), "")
        m[h + "layernorm.bias"] = (("head", "norm", "bias"), "")
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
    params = convert_tensors(vision_name_map(cfg, prefix), tensors, ignore=_dropped, expected_shapes=shapes,
                             dtype=dtype)
    return model, add_fresh_lora(params, shapes, dtype=dtype)


def text_config_from_hf(config: dict, **overrides) -> TextEncoderConfig:
    """TextEncoderConfig of a CLIPTextModel config dict, or of a CLIPModel's `text_config` (with its projection)."""
    arch = (config.get("architectures") or [None])[0]
    if arch not in CLIP_TEXT_ARCHITECTURES:
        fail("config.architectures[0]", f"one of {CLIP_TEXT_ARCHITECTURES}", repr(arch))
    text = config.get("text_config", {}) if arch == "CLIPModel" else config
    act = text.get("hidden_act", "quick_gelu")
    if act not in _ACTIVATIONS:
        fail("config.hidden_act", f"one of {sorted(_ACTIVATIONS)}", repr(act))
    base = dict(vocab_size=int(text.get("vocab_size", 49408)),
                max_positions=int(text.get("max_position_embeddings", 77)),
                d_model=int(text.get("hidden_size", 512)), num_layers=int(text.get("num_hidden_layers", 12)),
                num_heads=int(text.get("num_attention_heads", 8)), mlp_dim=int(text.get("intermediate_size", 2048)),
                mlp=_ACTIVATIONS[act], norm_eps=float(text.get("layer_norm_eps", 1e-5)),
                eos_token_id=int(text.get("eos_token_id", 2)),
                projection_dim=(int(config.get("projection_dim", 512))
                                if arch in ("CLIPModel", "CLIPTextModelWithProjection") else None))
    base.update(overrides)
    return TextEncoderConfig(**base)


def text_name_map(cfg: TextEncoderConfig, prefix: str) -> dict:
    """HF CLIP text tower names (under `prefix`) -> TextEncoder param paths."""
    m = {f"{prefix}embeddings.token_embedding.weight": (("token_embed", "embedding"), ""),
         f"{prefix}embeddings.position_embedding.weight": (("position_embedding",), ""),
         f"{prefix}final_layer_norm.weight": (("final_norm", "scale"), ""),
         f"{prefix}final_layer_norm.bias": (("final_norm", "bias"), ""),
         **encoder_layer_map(cfg.num_layers, f"{prefix}encoder.", ("encoder",))}
    if cfg.projection_dim:
        m["text_projection.weight"] = (("projection", "kernel"), "T")
    return m


def text_from_hf(config: dict, tensors: dict, dtype=jnp.float32, **overrides) -> tuple[TextEncoder, dict]:
    """(TextEncoder, params) from a CLIPTextModel / CLIPModel config dict and its tensors. `TextEncoder.apply(
    {"params": params}, input_ids, attention_mask)` gives HF's last_hidden_state, pooler_output, hidden_states
    (and text_embeds for CLIPModel). Raises ValueError listing unmapped / missing tensor names."""
    cfg = text_config_from_hf(config, **overrides)
    prefix = "text_model." if any(n.startswith("text_model.") for n in tensors) else ""
    m = text_name_map(cfg, prefix)
    ignore = lambda n: (n.startswith(("vision_model.", "visual_projection.")) or n == "logit_scale"  # noqa: E731
                        or n.endswith("embeddings.position_ids"))
    model = TextEncoder(cfg)
    shapes = param_shapes(model, jnp.zeros((1, 1), jnp.int32))
    params = convert_tensors(m, tensors, ignore=ignore, expected_shapes=shapes, dtype=dtype)
    return model, add_fresh_lora(params, shapes, dtype=dtype)
