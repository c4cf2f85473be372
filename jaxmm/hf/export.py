"""`save_pretrained(module, params, folder)`: a jaxmm model as a Hugging Face folder (config.json + safetensors).

The inverse of `from_pretrained`: each exportable module class has one `Family` entry holding the SAME name map
its importer uses ({HF name: (param path, transform)}) and a config.json writer; the weights are that map run
backwards (transform "T": kernelᵀ, "conv": [kh, kw, in, out] -> [out, in, kh, kw], "conv1d": [k, in, out] ->
[out, in, k]), then the family's `finish` adds what HF stores outside that map (SigLIP's packed in_proj, Whisper's
fixed sinusoid positions). Adding a family is one `register(Family(...))`.

| module | written as | config.json |
|---|---|---|
| `jaxmm.models.llm.LLM` | LlamaForCausalLM (default), Qwen2ForCausalLM (q/k/v bias without o bias), MistralForCausalLM (a sliding window); `architecture=` chooses (LLMConfig does not record the HF family: a Mistral without sliding window is written as Llama unless `architecture=` says otherwise -- the same function) | legacy rope form (`rope_theta` + `rope_scaling`), read by transformers 4 and 5; `max_position_embeddings` 4096 (LLMConfig does not hold a context length; pass `extra_config=`) |
| `jaxmm.models.vit.ViT`, `class_token=True` (CLIP) | CLIPVisionModel, keys without `vision_model.` (what transformers 5 writes); with `projection_dim`: CLIPVisionModelWithProjection (`vision_model.*` + `visual_projection`) | clip_vision_model |
| `jaxmm.models.vit.ViT`, `class_token=False` (SigLIP) | SiglipVisionModel (`vision_use_head` = `pool == "map"`; the head's q/k/v packed into torch's `in_proj_weight`/`in_proj_bias`) | siglip_vision_model |
| `jaxmm.models.text_encoder.TextEncoder` | CLIPTextModel; with `projection_dim`: CLIPTextModelWithProjection (`text_model.*` + `text_projection`) | clip_text_model |
| `jaxmm.models.audio.AudioEncoder` (`pool=1`) | WhisperEncoder (keys without prefix + `embed_positions.weight` = the fixed sinusoids), what transformers' own `WhisperEncoder.save_pretrained` writes; load it with `transformers.models.whisper.modeling_whisper.WhisperEncoder.from_pretrained` (AutoModel maps model_type whisper to WhisperModel, whose decoder the folder lacks) | whisper (encoder fields; decoder fields left at WhisperConfig's defaults) |
| `jaxmm.models.mllm.MLLM` ("vit" encoder, mlp2x_gelu projector) | LlavaForConditionalGeneration, transformers 5.24's saved names (see jaxmm.hf.llava) | llava |
| `jaxmm.models.unet.UNet` / `jaxmm.models.vae.AutoencoderKL` | UNet2DConditionModel / AutoencoderKL in diffusers' folder layout (config.json + diffusion_pytorch_model.safetensors, one file), through `jaxmm.hf.diffusers.save_diffusers` | diffusers' model config |

LoRA pairs are merged into their kernels (W + A·B·alpha/rank, each submodule with its own alpha) before
writing; a param the map does not write (e.g. NTK-attention or prefix params) is an error naming it. Tied
embeddings write no lm_head. Weights go to `model.safetensors`, or, above `max_shard_size`, to
`model-0000i-of-0000n.safetensors` shards with `model.safetensors.index.json` (transformers' names and greedy
packing in name order). Tensors keep the params' dtype (float32, bfloat16 via ml_dtypes, float16).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np

from jaxmm.checks import fail
from jaxmm.hf import clip, llava, whisper
from jaxmm.models import llm as llm_lib
from jaxmm.models.audio import AudioEncoder, sinusoids
from jaxmm.models.mllm import MLLM
from jaxmm.models.text_encoder import TextEncoder
from jaxmm.models.vit import ViT
from jaxmm.nn.layers import merge_lora

SAFETENSORS_METADATA = {"format": "pt"}  # what transformers expects in the header


@dataclasses.dataclass(frozen=True)
class Family:
    """How instances of `module` are written. name_map(cfg) -> the importer's {HF name: (path, transform)};
    hf_config(cfg, architecture) -> config.json dict; lora_alphas(cfg) -> {param subtree path: LoRA alpha};
    finish(cfg, tensors) -> the HF tensors (for names the map cannot express one to one)."""
    module: type
    name_map: Callable[[Any], dict]
    hf_config: Callable[[Any, str | None], dict]
    lora_alphas: Callable[[Any], dict]
    finish: Callable[[Any, dict], dict] = lambda cfg, tensors: tensors


FAMILIES: dict[type, Family] = {}


def register(family: Family) -> Family:
    FAMILIES[family.module] = family
    return family


# ------------------------------------------------------------------------------------------- config writers
_MODEL_TYPES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}


def llm_hf_config(cfg: llm_lib.LLMConfig, architecture: str | None = None) -> dict:
    """config.json of an LLMConfig; architecture None: Qwen2 when q/k/v have biases and o has none, Mistral with a
    sliding window, Llama otherwise. A config the chosen family cannot express is an error naming the field."""
    if architecture is None:
        architecture = ("Qwen2ForCausalLM" if cfg.qkv_bias and not cfg.out_bias else
                        "MistralForCausalLM" if cfg.sliding_window else "LlamaForCausalLM")
    if architecture not in _MODEL_TYPES:
        fail("architecture", f"one of {sorted(_MODEL_TYPES)}", repr(architecture))
    if cfg.attention != "softmax":
        fail("LLMConfig.attention", "'softmax' (HF LLMs have no other attention kind)", repr(cfg.attention))
    if architecture == "Qwen2ForCausalLM":
        if not cfg.qkv_bias or cfg.out_bias or cfg.mlp_bias:
            fail("LLMConfig", "qkv_bias=True, out_bias=False, mlp_bias=False for Qwen2ForCausalLM",
                 f"qkv_bias={cfg.qkv_bias}, out_bias={cfg.out_bias}, mlp_bias={cfg.mlp_bias}")
    elif cfg.qkv_bias != cfg.out_bias or (architecture == "MistralForCausalLM" and (cfg.qkv_bias or cfg.mlp_bias)):
        fail("LLMConfig", f"q/k/v and o biases together (attention_bias) for {architecture}",
             f"qkv_bias={cfg.qkv_bias}, out_bias={cfg.out_bias}, mlp_bias={cfg.mlp_bias}")
    scaling = dict(cfg.rope_scaling) if cfg.rope_scaling else None
    out = {
        "architectures": [architecture], "model_type": _MODEL_TYPES[architecture],
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads or cfg.num_heads,
        "head_dim": cfg.head_dim or cfg.d_model // cfg.num_heads, "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta, "rope_scaling": scaling,
        "tie_word_embeddings": cfg.tie_embeddings, "max_position_embeddings": 4096, "attention_dropout": 0.0,
    }
    if architecture == "Qwen2ForCausalLM":
        out.update(use_sliding_window=False, sliding_window=None)
    else:
        out.update(attention_bias=cfg.out_bias, mlp_bias=cfg.mlp_bias)
    if architecture == "MistralForCausalLM":
        out["sliding_window"] = cfg.sliding_window
    return out


_CLIP_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
_SIGLIP_ACTS = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}


def vit_family(cfg) -> str:
    """"clip" or "siglip" for a ViTConfig, decided by `class_token` (CLIP's towers have a class token, SigLIP's do
    not); the other fields that differ between the two must agree with it (else an error naming them)."""
    kind = "clip" if cfg.class_token else "siglip"
    want = (dict(pre_norm=True, patch_bias=False, pool="cls") if kind == "clip"
            else dict(pre_norm=False, patch_bias=True))
    got = {k: getattr(cfg, k) for k in want}
    if got != want or (kind == "siglip" and cfg.pool not in ("map", "none")):
        fail("ViTConfig", f"a CLIP tower (class_token=True, {want}) or a SigLIP tower (class_token=False, "
             "pre_norm=False, patch_bias=True, pool 'map' or 'none')",
             f"class_token={cfg.class_token}, pre_norm={cfg.pre_norm}, patch_bias={cfg.patch_bias}, pool={cfg.pool!r}")
    return kind


def _vit_arch(cfg) -> str:
    if vit_family(cfg) == "siglip":
        return "SiglipVisionModel"
    return "CLIPVisionModelWithProjection" if cfg.projection_dim else "CLIPVisionModel"


def clip_vision_hf_config(cfg, architecture: str | None = None) -> dict:
    """config.json of a ViTConfig: CLIPVisionModel(WithProjection) or SiglipVisionModel (see `vit_family`)."""
    arch = _vit_arch(cfg)
    if architecture not in (None, arch):
        fail("architecture", f"{arch!r} for this ViT (the family follows ViTConfig.class_token)", repr(architecture))
    acts = _CLIP_ACTS if arch.startswith("CLIP") else _SIGLIP_ACTS
    if cfg.attention != "softmax" or cfg.mlp not in acts:
        fail("ViTConfig", f"softmax attention and an mlp among {sorted(acts)}", f"{cfg.attention}, {cfg.mlp}")
    if arch == "SiglipVisionModel" and cfg.projection_dim:
        fail("ViTConfig.projection_dim", "None for a SigLIP tower (SiglipVisionModel has no projection)",
             cfg.projection_dim)
    out = {"architectures": [arch], "hidden_size": cfg.d_model,
           "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.num_layers,
           "num_attention_heads": cfg.num_heads, "image_size": cfg.image_size, "patch_size": cfg.patch_size,
           "num_channels": cfg.num_channels, "hidden_act": acts[cfg.mlp], "layer_norm_eps": cfg.norm_eps,
           "attention_dropout": 0.0}
    if arch == "SiglipVisionModel":
        out.update(model_type="siglip_vision_model", vision_use_head=cfg.pool == "map")
    else:
        out["model_type"] = "clip_vision_model"
        if cfg.projection_dim:
            out["projection_dim"] = cfg.projection_dim
    return out


def _vit_name_map(cfg) -> dict:
    prefix = "vision_model." if _vit_arch(cfg) == "CLIPVisionModelWithProjection" else ""
    return clip.vision_name_map(cfg, prefix)


def _pack_in_proj(cfg, tensors: dict) -> dict:
    """SigLIP's pooling head: q/k/v -> torch MultiheadAttention's packed in_proj_weight [3D, D] / in_proj_bias."""
    if vit_family(cfg) != "siglip" or cfg.pool != "map":
        return tensors
    h = "head.attention."
    for what in ("weight", "bias"):
        tensors[h + f"in_proj_{what}"] = np.concatenate([tensors.pop(h + f"{n}_proj.{what}")
                                                         for n in ("q", "k", "v")], axis=0)
    return tensors


def clip_text_hf_config(cfg, architecture: str | None = None) -> dict:
    """config.json of a TextEncoderConfig: CLIPTextModel, or CLIPTextModelWithProjection with a projection."""
    arch = "CLIPTextModelWithProjection" if cfg.projection_dim else "CLIPTextModel"
    if architecture not in (None, arch):
        fail("architecture", f"{arch!r} for this TextEncoder", repr(architecture))
    if cfg.mlp not in _CLIP_ACTS:
        fail("TextEncoderConfig.mlp", f"one of {sorted(_CLIP_ACTS)}", repr(cfg.mlp))
    out = {"architectures": [arch], "model_type": "clip_text_model", "vocab_size": cfg.vocab_size,
           "max_position_embeddings": cfg.max_positions, "hidden_size": cfg.d_model,
           "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.num_layers,
           "num_attention_heads": cfg.num_heads, "hidden_act": _CLIP_ACTS[cfg.mlp], "layer_norm_eps": cfg.norm_eps,
           "eos_token_id": cfg.eos_token_id, "attention_dropout": 0.0,
           "bos_token_id": None, "pad_token_id": None}  # unknown to jaxmm (CLIP's forward uses only eos)
    if cfg.projection_dim:
        out["projection_dim"] = cfg.projection_dim
    return out


def _clip_text_name_map(cfg) -> dict:
    return clip.text_name_map(cfg, "text_model." if cfg.projection_dim else "")


def whisper_hf_config(cfg, architecture: str | None = None) -> dict:
    """config.json of an AudioConfig as transformers' WhisperEncoder (model_type whisper; decoder fields are
    WhisperConfig's defaults, unused by the encoder)."""
    if architecture not in (None, "WhisperEncoder"):
        fail("architecture", "'WhisperEncoder' for an AudioEncoder (WhisperModel needs a decoder jaxmm does not "
             "hold)", repr(architecture))
    if cfg.pool != 1 or cfg.attention != "softmax" or cfg.norm_eps != 1e-5 or cfg.max_frames % 2:
        fail("AudioConfig", "pool=1, attention='softmax', norm_eps=1e-5 (torch LayerNorm's) and an even max_frames "
             "(Whisper's encoder)", f"pool={cfg.pool}, attention={cfg.attention!r}, norm_eps={cfg.norm_eps}, "
             f"max_frames={cfg.max_frames}")
    return {"architectures": ["WhisperEncoder"], "model_type": "whisper", "num_mel_bins": cfg.n_mels,
            "max_source_positions": cfg.max_frames // 2, "d_model": cfg.d_model, "encoder_layers": cfg.num_layers,
            "encoder_attention_heads": cfg.num_heads, "encoder_ffn_dim": cfg.mlp_dim,
            "activation_function": "gelu", "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
            "encoder_layerdrop": 0.0, "scale_embedding": False}


def _whisper_name_map(cfg) -> dict:
    m = whisper._name_map(cfg, "")
    for conv in ("conv1", "conv2"):
        m[f"{conv}.weight"] = ((conv, "kernel"), "conv1d")
    return m


def _whisper_positions(cfg, tensors: dict) -> dict:
    dtype = tensors["conv1.weight"].dtype
    tensors["embed_positions.weight"] = sinusoids(cfg.max_frames // 2, cfg.d_model).astype(dtype)
    return tensors


def llava_hf_config(cfg, architecture: str | None = None) -> dict:
    if architecture not in (None, "LlavaForConditionalGeneration"):
        fail("architecture", "'LlavaForConditionalGeneration' for an MLLM", repr(architecture))
    llava.name_map(cfg)  # refuses non-CLIP encoders and other projectors, naming them
    text = llm_hf_config(cfg.llm)
    vision = clip_vision_hf_config(cfg.encoder_config)
    if vision["architectures"] != ["CLIPVisionModel"]:
        fail("MLLMConfig.encoder_config", "a CLIP tower without projection for LlavaForConditionalGeneration",
             vision["architectures"][0])
    for c in (text, vision):
        c.pop("architectures")
    vit = cfg.encoder_config
    return {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "text_config": text,
            "vision_config": vision, "image_token_index": cfg.placeholder_id, "projector_hidden_act": "gelu",
            "multimodal_projector_bias": True, "vision_feature_layer": vit.feature_layer,
            "vision_feature_select_strategy": "default" if vit.drop_cls else "full",
            "image_seq_length": vit.num_features, "tie_word_embeddings": cfg.llm.tie_embeddings}


register(Family(llm_lib.LLM, llm_lib._hf_name_map, llm_hf_config, lambda c: {(): c.lora_alpha}))
register(Family(ViT, _vit_name_map, clip_vision_hf_config, lambda c: {(): c.lora_alpha}, _pack_in_proj))
register(Family(TextEncoder, _clip_text_name_map, clip_text_hf_config, lambda c: {(): c.lora_alpha}))
register(Family(AudioEncoder, _whisper_name_map, whisper_hf_config, lambda c: {(): c.lora_alpha},
                _whisper_positions))
register(Family(MLLM, llava.name_map, llava_hf_config,
                lambda c: {("encoder",): getattr(c.encoder_config, "lora_alpha", 16.0), ("llm",): c.llm.lora_alpha}))


# ------------------------------------------------------------------------------------------- weights
def _family(module) -> Family:
    family = FAMILIES.get(type(module))
    if family is None:
        fail("module", f"an instance of {sorted(c.__name__ for c in FAMILIES)}", type(module).__name__)
    return family


def merged_params(module, params) -> dict:
    """params with every LoRA pair folded into its kernel (each subtree with its module's alpha)."""
    params = jax.tree.map(np.asarray, nn.unbox(dict(params)))  # Partitioned boxes from init -> plain arrays
    for prefix, alpha in _family(module).lora_alphas(module.config).items():
        node = params
        for k in prefix[:-1]:
            node = node[k]
        if prefix:
            node[prefix[-1]] = merge_lora(node[prefix[-1]], alpha=alpha)
        else:
            params = merge_lora(params, alpha=alpha)
    return params


def hf_tensors(module, params) -> dict[str, np.ndarray]:
    """{HF name: array in HF's layout} of a jaxmm model (LoRA merged). Every param must be written."""
    family = _family(module)
    params = merged_params(module, params)
    flat = {tuple(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    out, used = {}, set()
    for name, (path, transform) in family.name_map(module.config).items():
        if path not in flat:
            fail("params", f"a param at {'/'.join(path)} (for {name})", "none")
        a = np.asarray(flat[path])
        if transform == "T":
            a = a.T
        elif transform == "conv":
            a = a.transpose(3, 2, 0, 1)
        elif transform == "conv1d":
            a = a.transpose(2, 1, 0)
        elif transform:
            raise ValueError(f"unknown transform {transform!r}")
        out[name] = np.ascontiguousarray(a)
        used.add(path)
    left = sorted("/".join(p) for p in flat if p not in used)
    if left:
        fail("params", f"only params the {type(module).__name__} -> HF name map writes", f"also {left}")
    return family.finish(module.config, out)


def parse_size(size) -> int:
    """Bytes of an int or a string like "5GB", "500MB", "50KB" (powers of 1000, as transformers; KiB/MiB/GiB:
    powers of 1024)."""
    if isinstance(size, int) and size > 0:
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)\s*", str(size), flags=re.IGNORECASE)
    if not m:
        fail("max_shard_size", "a positive int (bytes) or a string like '5GB', '500MB', '64KiB'", repr(size))
    unit = m.group(2).upper()
    base = 1024 if "I" in unit else 1000
    return int(float(m.group(1)) * base ** "KMG".index(unit[0]) * base)


def write_safetensors(tensors: dict[str, np.ndarray], folder, max_shard_size="5GB") -> list[str]:
    """Write tensors as model.safetensors, or as shards + model.safetensors.index.json when their total exceeds
    max_shard_size (a tensor larger than the limit gets a shard of its own). Returns the file names written."""
    from safetensors.numpy import save_file

    limit = parse_size(max_shard_size)
    shards, current, size = [], {}, 0
    for name in sorted(tensors):
        n = tensors[name].nbytes
        if current and size + n > limit:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensors[name]
        size += n
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(folder, "model.safetensors"), metadata=SAFETENSORS_METADATA)
        return ["model.safetensors"]
    names, weight_map = [], {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(folder, file), metadata=SAFETENSORS_METADATA)
        names.append(file)
        weight_map.update({k: file for k in shard})
    index = {"metadata": {"total_size": sum(a.nbytes for a in tensors.values())}, "weight_map": weight_map}
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
    return names + ["model.safetensors.index.json"]


def _dtype_name(tensors) -> str:
    dtypes = {str(a.dtype) for a in tensors.values()}
    return dtypes.pop() if len(dtypes) == 1 else "float32"


def _is_diffusers(module) -> bool:
    from jaxmm.models.unet import UNet
    from jaxmm.models.vae import AutoencoderKL

    return isinstance(module, (UNet, AutoencoderKL))


def _save_diffusers(module, params, folder, architecture, max_shard_size, extra_config, overwrite) -> str:
    """A UNet / AutoencoderKL through `jaxmm.hf.diffusers.save_diffusers` (config.json +
    diffusion_pytorch_model.safetensors, unsharded); `extra_config` keys are added to its config.json."""
    from jaxmm.hf import diffusers

    want = "UNet2DConditionModel" if type(module).__name__ == "UNet" else "AutoencoderKL"
    if architecture not in (None, want):
        fail("architecture", f"None or {want!r} for a {type(module).__name__}", repr(architecture))
    if max_shard_size != "5GB":
        fail("max_shard_size", "the default '5GB' for a diffusers model (written as one file)", repr(max_shard_size))
    folder = os.fspath(folder)
    if os.path.isdir(folder) and not overwrite:
        existing = [f for f in os.listdir(folder) if f == "config.json" or f.endswith(".safetensors")]
        if existing:
            fail("folder", "a folder without config.json / safetensors files (or overwrite=True)",
                 f"{folder!r} holding {sorted(existing)}")
    diffusers.save_diffusers(module, params, folder)
    if extra_config:
        path = os.path.join(folder, "config.json")
        with open(path) as f:
            config = json.load(f)
        config.update(extra_config)
        with open(path, "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
    return folder


def save_pretrained(module, params, folder, *, architecture: str | None = None, max_shard_size="5GB",
                    extra_config: dict | None = None, overwrite: bool = False) -> str:
    """Write `module` with `params` (LoRA merged) as an HF folder that transformers' `from_pretrained` and
    `jaxmm.hf.from_pretrained` load: config.json + model.safetensors (or shards and an index).

    architecture: the HF class to write (LLMs: Llama / Mistral / Qwen2; default inferred, see the table).
    max_shard_size: shard above this many bytes (int, or "5GB" / "50KB" ...).
    extra_config: keys added to config.json (e.g. bos_token_id, eos_token_id, max_position_embeddings; for an
      MLLM they go to the top level).
    overwrite: replace config.json and weight files already in `folder` (otherwise they are an error; other
      files, e.g. a tokenizer, are kept). Returns the folder."""
    if _is_diffusers(module):  # UNet / AutoencoderKL: diffusers' folder layout, jaxmm.hf.diffusers' writer
        return _save_diffusers(module, params, folder, architecture, max_shard_size, extra_config, overwrite)
    family = _family(module)
    config = family.hf_config(module.config, architecture)
    tensors = hf_tensors(module, params)
    config["dtype"] = _dtype_name(tensors)
    config.update(extra_config or {})
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    existing = [f for f in os.listdir(folder) if f == "config.json" or f.endswith((".safetensors",
                                                                                    ".safetensors.index.json"))]
    if existing and not overwrite:
        fail("folder", "a folder without config.json / safetensors files (or overwrite=True)",
             f"{folder!r} holding {sorted(existing)}")
    for f in existing:
        os.remove(os.path.join(folder, f))
    write_safetensors(tensors, folder, max_shard_size)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    return folder
