"""LLaVA layout (`LlavaForConditionalGeneration`) <-> jaxmm.models.mllm.MLLM with the "vit" (CLIP) encoder.

Tensor names, as transformers 5.24 writes them (checked in the side env) and as the Hub's llava-hf folders hold:
  vision_tower.<CLIPVisionModel names>       -> encoder/...     (an inner `vision_model.` prefix is accepted)
  multi_modal_projector.linear_{1,2}.weight/.bias  -> projector/linear_{1,2}/kernel (weightᵀ), bias
  language_model.model.* / language_model.lm_head.weight  -> llm/... (the LLM families' names)
transformers 5's in-memory names (`model.language_model.*`, `model.vision_tower.*`,
`model.multi_modal_projector.*`, `lm_head.weight`) are accepted on import too. config.json: `text_config` (an LLM
family's config with `model_type`), `vision_config` (CLIP vision, `model_type` "clip_vision_model"),
`image_token_index` (the placeholder id), `projector_hidden_act` "gelu" (jaxmm's mlp2x_gelu), `vision_feature_layer`
(ViTConfig.feature_layer) and `vision_feature_select_strategy` ("default": CLS dropped = drop_cls).
"""
from __future__ import annotations

import re

import jax.numpy as jnp

from jaxmm.checks import fail
from jaxmm.hf import clip
from jaxmm.models import llm as llm_lib
from jaxmm.models.mllm import MLLM, MLLMConfig

TEXT_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
VISION_PREFIX = "vision_tower."
TEXT_PREFIX = "language_model."
PROJECTOR_PREFIX = "multi_modal_projector."
_V5_NAMES = ((r"^model\.language_model\.", "language_model.model."), (r"^lm_head\.", "language_model.lm_head."),
             (r"^model\.vision_tower\.", "vision_tower."), (r"^model\.multi_modal_projector\.",
                                                            "multi_modal_projector."))


def canonical_names(tensors: dict) -> dict:
    """transformers-5 in-memory names -> the saved (legacy) names above."""
    out = {}
    for name, value in tensors.items():
        for pattern, repl in _V5_NAMES:
            name = re.sub(pattern, repl, name)
        out[name] = value
    return out


def name_map(cfg: MLLMConfig, vision_prefix: str = VISION_PREFIX) -> dict:
    """{HF name: (MLLM param path, transform)}: the CLIP and LLM families' maps under their LLaVA prefixes."""
    if cfg.encoder != "vit":
        fail("MLLMConfig.encoder", "'vit' (CLIP vision) for the LLaVA layout", repr(cfg.encoder))
    if cfg.projector != "mlp2x_gelu":
        fail("MLLMConfig.projector", "'mlp2x_gelu' (LLaVA's two-layer GELU projector)", repr(cfg.projector))
    m = {vision_prefix + k: (("encoder", *p), t) for k, (p, t) in clip._name_map(cfg.encoder_config, "").items()}
    m.update({TEXT_PREFIX + k: (("llm", *p), t) for k, (p, t) in llm_lib._hf_name_map(cfg.llm).items()})
    for i in (1, 2):
        m[f"{PROJECTOR_PREFIX}linear_{i}.weight"] = (("projector", f"linear_{i}", "kernel"), "T")
        m[f"{PROJECTOR_PREFIX}linear_{i}.bias"] = (("projector", f"linear_{i}", "bias"), "")
    return m


def mllm_config_from_hf(config: dict, **llm_overrides) -> MLLMConfig:
    text, vision = dict(config.get("text_config") or {}), dict(config.get("vision_config") or {})
    arch = TEXT_MODEL_TYPES.get(text.get("model_type", "llama"))
    if arch is None:
        fail("config.text_config.model_type", f"one of {sorted(TEXT_MODEL_TYPES)}", repr(text.get("model_type")))
    if vision.get("model_type", "clip_vision_model") != "clip_vision_model":
        fail("config.vision_config.model_type", "'clip_vision_model'", repr(vision.get("model_type")))
    if config.get("projector_hidden_act", "gelu") != "gelu" or not config.get("multimodal_projector_bias", True):
        fail("config.projector_hidden_act", "'gelu' with biases (jaxmm's mlp2x_gelu)",
             repr(config.get("projector_hidden_act")))
    strategy = config.get("vision_feature_select_strategy", "default")
    if strategy not in ("default", "full"):
        fail("config.vision_feature_select_strategy", "'default' or 'full'", repr(strategy))
    layer = config.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        fail("config.vision_feature_layer", "one layer index (several layers are not supported)", repr(layer))
    vit = clip.vit_config_from_hf({**vision, "architectures": ["CLIPVisionModel"]}, feature_layer=layer,
                                  drop_cls=strategy == "default")
    text.setdefault("tie_word_embeddings", config.get("tie_word_embeddings", False))
    llm = llm_lib.llm_config_from_hf({**text, "architectures": [arch]}, **llm_overrides)
    return MLLMConfig(llm=llm, placeholder_id=int(config["image_token_index"]), encoder="vit", encoder_config=vit,
                      projector="mlp2x_gelu")


def from_hf(config: dict, tensors: dict, dtype=jnp.float32, **llm_overrides) -> tuple[MLLM, dict]:
    """(MLLM, params) from a LlavaForConditionalGeneration config dict and its tensors."""
    cfg = mllm_config_from_hf(config, **llm_overrides)
    tensors = canonical_names(tensors)
    if cfg.llm.tie_embeddings:
        tensors.pop(TEXT_PREFIX + "lm_head.weight", None)
    inner = any(n.startswith(VISION_PREFIX + "vision_model.") for n in tensors)
    model = MLLM(cfg)
    img = jnp.zeros((1, cfg.encoder_config.image_size, cfg.encoder_config.image_size, 3), jnp.float32)
    shapes = llm_lib.param_shapes(model, jnp.zeros((1, 2), jnp.int32), img)
    params = llm_lib.convert_tensors(name_map(cfg, VISION_PREFIX + ("vision_model." if inner else "")), tensors,
                                     ignore=lambda n: n.endswith(("position_ids", "rotary_emb.inv_freq")),
                                     expected_shapes=shapes, dtype=dtype)
    return model, llm_lib.add_fresh_lora(params, shapes, dtype=dtype)
