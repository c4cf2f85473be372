"""`from_pretrained(path)`: a local Hugging Face folder -> (jaxmm module, params), dispatching on
config.json's `architectures[0]`. Weights are read from safetensors only (jaxmm.hf.io refuses pickles).

  LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM -> jaxmm.models.llm.LLM;
    `module.apply({"params": params}, input_ids)` -> float32 logits [B, L, vocab].
  CLIPVisionModel, CLIPModel (vision tower) -> jaxmm.models.vit.ViT;
    `module.apply({"params": params}, pixel_values)` (NHWC) -> {"last_hidden_state", "pooler_output",
    "hidden_states", "features", ("image_embeds" for CLIPModel)}.
  LlavaForConditionalGeneration (CLIP vision tower, 2-layer GELU projector, an LLM above) -> jaxmm.models.mllm.MLLM
    (jaxmm.hf.llava; what `jaxmm.hf.save_pretrained` writes for a trained MLLM).
"""
from __future__ import annotations

import jax.numpy as jnp

from jaxmm.hf.io import load_safetensors, read_config
from jaxmm.checks import fail

LLM_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
VISION_ARCHITECTURES = ("CLIPVisionModel", "CLIPModel")
MLLM_ARCHITECTURES = ("LlavaForConditionalGeneration",)
SUPPORTED_ARCHITECTURES = LLM_ARCHITECTURES + VISION_ARCHITECTURES + MLLM_ARCHITECTURES


def from_pretrained(path, dtype=jnp.float32, **overrides):
    """(module, params) for the HF folder `path` (config.json + model.safetensors or a sharded index).

    dtype: the params' dtype; activations follow it (bf16 params -> bf16 compute, float32 logits).
    overrides: further config fields (e.g. lora_rank, remat, feature_layer).
    Raises ValueError for an unsupported architecture (listing the supported ones) or a pickle-only folder."""
    config = read_config(path)
    archs = config.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in SUPPORTED_ARCHITECTURES:
        fail("config.json architectures[0]", f"one of {list(SUPPORTED_ARCHITECTURES)}", repr(arch))
    tensors = load_safetensors(path)
    if arch in LLM_ARCHITECTURES:
        from jaxmm.models.llm import from_hf
    elif arch in MLLM_ARCHITECTURES:
        from jaxmm.hf.llava import from_hf
    else:
        from jaxmm.hf.clip import from_hf
    return from_hf(config, tensors, dtype=dtype, **overrides)
