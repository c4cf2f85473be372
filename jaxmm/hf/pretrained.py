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
VISION_ARCHITECTURES = ("CLIPVisionModel", "CLIPVisionModelWithProjection", "CLIPModel", "SiglipVisionModel",
                        "SiglipModel")
TEXT_ARCHITECTURES = ("CLIPTextModel", "CLIPTextModelWithProjection")
AUDIO_ARCHITECTURES = ("WhisperForConditionalGeneration", "WhisperModel", "WhisperEncoder")
MLLM_ARCHITECTURES = ("LlavaForConditionalGeneration",)
CONVNEXT_ARCHITECTURES = ("ConvNextModel", "ConvNextForImageClassification")   # jaxmm.hf.convnext (issue 18)
DINO_ARCHITECTURES = ("Dinov2Model",)   # jaxmm.hf.dinov2 -> jaxmm.models.dino.DinoViT (issue 21)
DIFFUSERS_CLASSES = ("UNet2DConditionModel", "AutoencoderKL")   # config.json `_class_name`, not `architectures`
SUPPORTED_ARCHITECTURES = (LLM_ARCHITECTURES + VISION_ARCHITECTURES + TEXT_ARCHITECTURES + AUDIO_ARCHITECTURES
                           + MLLM_ARCHITECTURES + DIFFUSERS_CLASSES + CONVNEXT_ARCHITECTURES + DINO_ARCHITECTURES)


def loader(arch: str, tower: str | None = None):
    """The `from_hf(config, tensors, dtype, **overrides)` of an architecture (and tower of a two-tower model:
    "vision" or "text" for CLIPModel; default vision)."""
    if arch not in SUPPORTED_ARCHITECTURES:
        fail("config.json architectures[0]", f"one of {list(SUPPORTED_ARCHITECTURES)}", repr(arch))
    if tower not in (None, "vision", "text") or (tower == "text" and arch not in ("CLIPModel",) + TEXT_ARCHITECTURES):
        fail("tower", "None, 'vision', or 'text' (CLIPModel / CLIPTextModel)", f"{tower!r} for {arch}")
    if arch in LLM_ARCHITECTURES:
        from jaxmm.models.llm import from_hf
    elif arch in MLLM_ARCHITECTURES:
        from jaxmm.hf.llava import from_hf
    elif arch in DIFFUSERS_CLASSES:
        from jaxmm.hf.diffusers import from_hf
    elif arch in DINO_ARCHITECTURES:
        from jaxmm.hf.dinov2 import from_hf
    elif arch in TEXT_ARCHITECTURES or tower == "text":
        from jaxmm.hf.clip import text_from_hf as from_hf
    elif arch.startswith("Siglip"):
        from jaxmm.hf.siglip import from_hf
    elif arch in AUDIO_ARCHITECTURES:
        from jaxmm.hf.whisper import from_hf
    elif arch in CONVNEXT_ARCHITECTURES:
        from jaxmm.hf.convnext import from_hf
    else:
        from jaxmm.hf.clip import from_hf
    return from_hf


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
    if arch in DIFFUSERS_CLASSES:
        from jaxmm.hf.diffusers import load_weights
        return from_hf(config, load_weights(path), dtype=dtype, **overrides)
    return from_hf(config, load_safetensors(path), dtype=dtype, **overrides)
