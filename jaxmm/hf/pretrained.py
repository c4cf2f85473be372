"""`from_pretrained(path)`: a local Hugging Face folder -> (jaxmm module, params), dispatching on
config.json's `architectures[0]`. Weights are read from safetensors only (jaxmm.hf.io refuses pickles).

  LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM -> jaxmm.models.llm.LLM;
    `module.apply({"params": params}, input_ids)` -> float32 logits [B, L, vocab].
  CLIPVisionModel(WithProjection), CLIPModel (vision tower), SiglipVisionModel, SiglipModel (vision tower) ->
    jaxmm.models.vit.ViT; `module.apply({"params": params}, pixel_values)` (NHWC) -> {"last_hidden_state",
    "pooler_output", "hidden_states", "features", ("image_embeds" for CLIPModel)}.
  CLIPTextModel(WithProjection), CLIPModel with tower="text" -> jaxmm.models.text_encoder.TextEncoder;
    `module.apply({"params": params}, input_ids, attention_mask)` -> {"last_hidden_state", "pooler_output",
    "hidden_states", ("text_embeds" for CLIPModel)}.
  WhisperForConditionalGeneration, WhisperModel (encoder), WhisperEncoder -> jaxmm.models.audio.AudioEncoder;
    `module.apply({"params": params}, mel)` (mel [B, frames, n_mels]) -> {"last_hidden_state", "features"}.
  UNet2DConditionModel, AutoencoderKL (diffusers folders: config.json's `_class_name`,
    diffusion_pytorch_model.safetensors) -> jaxmm.models.unet.UNet / jaxmm.models.vae.AutoencoderKL
    (jaxmm.hf.diffusers); `module.apply({"params": params}, x_nhwc, timesteps, context)` for the UNet.
  ConvNextModel, ConvNextForImageClassification (backbone only) -> jaxmm.models.convnext.ConvNeXt (NHWC)
    (jaxmm.hf.convnext); `module.apply({"params": params}, pixel_values)` -> {"last_hidden_state",
    "pooler_output", "hidden_states", "features"}.
  LlavaForConditionalGeneration (CLIP vision tower, 2-layer GELU projector, an LLM above) -> jaxmm.models.mllm.MLLM
    (jaxmm.hf.llava; what `jaxmm.hf.save_pretrained` writes for a trained MLLM).
  Dinov2Model -> jaxmm.models.dino.DinoViT (jaxmm.hf.dinov2); `module.apply({"params": params}, pixel_values)`
    (NHWC) -> {"last_hidden_state", "pooler_output", "patch_tokens", "hidden_states"}.
"""
from __future__ import annotations

import jax.numpy as jnp

from jaxmm.hf.io import load_safetensors, read_config
from jaxmm.checks import fail

LLM_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
CLIP_VISION_ARCHITECTURES = ("CLIPVisionModel", "CLIPVisionModelWithProjection", "CLIPModel")
SIGLIP_ARCHITECTURES = ("SiglipVisionModel", "SiglipModel")
VISION_ARCHITECTURES = CLIP_VISION_ARCHITECTURES + SIGLIP_ARCHITECTURES
TEXT_ARCHITECTURES = ("CLIPTextModel", "CLIPTextModelWithProjection")
AUDIO_ARCHITECTURES = ("WhisperForConditionalGeneration", "WhisperModel", "WhisperEncoder")
MLLM_ARCHITECTURES = ("LlavaForConditionalGeneration",)
CONVNEXT_ARCHITECTURES = ("ConvNextModel", "ConvNextForImageClassification")   # jaxmm.hf.convnext (issue 18)
DINO_ARCHITECTURES = ("Dinov2Model",)   # jaxmm.hf.dinov2 -> jaxmm.models.dino.DinoViT (issue 21)
DIFFUSERS_CLASSES = ("UNet2DConditionModel", "AutoencoderKL")   # config.json `_class_name`, not `architectures`
# One row per family: its architectures -> "module:function" of its `from_hf(config, tensors, dtype, **overrides)`,
# imported on first use (a new family is a new row here and a new file, nothing else; users add their own with
# `register_architecture`). Two-tower CLIPModel with tower="text" goes to TEXT_TOWER_LOADER.
FAMILIES = (
    (LLM_ARCHITECTURES, "jaxmm.models.llm:from_hf"),
    (CLIP_VISION_ARCHITECTURES, "jaxmm.hf.clip:from_hf"),
    (SIGLIP_ARCHITECTURES, "jaxmm.hf.siglip:from_hf"),
    (TEXT_ARCHITECTURES, "jaxmm.hf.clip:text_from_hf"),
    (AUDIO_ARCHITECTURES, "jaxmm.hf.whisper:from_hf"),
    (MLLM_ARCHITECTURES, "jaxmm.hf.llava:from_hf"),
    (DIFFUSERS_CLASSES, "jaxmm.hf.diffusers:from_hf"),
    (CONVNEXT_ARCHITECTURES, "jaxmm.hf.convnext:from_hf"),
    (DINO_ARCHITECTURES, "jaxmm.hf.dinov2:from_hf"),
)
TEXT_TOWER_LOADER = "jaxmm.hf.clip:text_from_hf"
TEXT_TOWER_ARCHITECTURES = ("CLIPModel",) + TEXT_ARCHITECTURES
# how a family's weights are read when not plain (sharded) safetensors: "module:function(folder) -> tensors"
WEIGHT_READERS = {a: "jaxmm.hf.diffusers:load_weights" for a in DIFFUSERS_CLASSES}

_LOADERS: dict = {a: target for archs, target in FAMILIES for a in archs}
SUPPORTED_ARCHITECTURES = tuple(_LOADERS)   # the built-in ones (`register_architecture` adds to _LOADERS)


def register_architecture(architecture: str, from_hf, weights=None) -> None:
    """Make `from_pretrained` load folders whose config.json names `architecture` (in `architectures[0]` or, for
    diffusers-style folders, `_class_name`): `from_hf(config, tensors, dtype=..., **overrides) -> (module, params)`
    (a callable or a "module:function" string); `weights(folder) -> {name: array}` when the weights are not
    model.safetensors (default: jaxmm.hf.io.load_safetensors)."""
    if not isinstance(architecture, str) or not architecture:
        fail("architecture", "a non-empty class name string", repr(architecture))
    if architecture in _LOADERS:
        fail("architecture", f"a name not yet registered (registered: {sorted(_LOADERS)})", repr(architecture))
    _LOADERS[architecture] = from_hf
    if weights is not None:
        WEIGHT_READERS[architecture] = weights


def _resolve(target):
    if callable(target):
        return target
    module, name = target.split(":")
    import importlib

    return getattr(importlib.import_module(module), name)


def loader(arch: str, tower: str | None = None):
    """The `from_hf(config, tensors, dtype, **overrides)` of an architecture (and tower of a two-tower model:
    "vision" or "text" for CLIPModel; default vision)."""
    if arch not in _LOADERS:
        fail("config.json architectures[0]", f"one of {list(_LOADERS)}", repr(arch))
    if tower not in (None, "vision", "text") or (tower == "text" and arch not in TEXT_TOWER_ARCHITECTURES):
        fail("tower", "None, 'vision', or 'text' (CLIPModel / CLIPTextModel)", f"{tower!r} for {arch}")
    return _resolve(TEXT_TOWER_LOADER if tower == "text" else _LOADERS[arch])


def from_pretrained(path, dtype=jnp.float32, *, tower: str | None = None, **overrides):
    """(module, params) for the HF folder `path` (config.json + model.safetensors or a sharded index).

    dtype: the params' dtype; activations follow it (bf16 params -> bf16 compute, float32 logits).
    tower: for CLIPModel, "vision" (default) or "text".
    overrides: further config fields (e.g. lora_rank, remat, feature_layer).
    Raises ValueError for an unsupported architecture (listing the supported ones) or a pickle-only folder."""
    config = read_config(path)
    archs = config.get("architectures") or []
    arch = archs[0] if archs else config.get("_class_name")   # diffusers configs name their class there
    from_hf = loader(arch, tower)
    weights = _resolve(WEIGHT_READERS.get(arch, load_safetensors))
    return from_hf(config, weights(path), dtype=dtype, **overrides)
