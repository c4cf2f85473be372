"""Initialising a jaxmm model's parts from Hugging Face folders: the one place that turns an HF folder into a
module config (shape settings from config.json), the part's params (safetensors) and image preprocessing
(preprocessor_config.json). The trainer's `model.init.encoder` / `model.init.llm` use it
(train/tasks/mllm.py); anyone assembling a model by hand can too:

    enc_cfg = encoder_config(clip_folder, "vit", {"feature_layer": -2})
    llm_cfg = llm_config(llama_folder, {"lora_rank": 8}, vocab_size=tokenizer.vocab_size)
    params = load_group(params, "encoder", clip_folder, enc_cfg)   # replaces params["encoder"]
    params = load_group(params, "llm", llama_folder, llm_cfg)

Settings: the folder decides every field listed in `FOLDER_FIELDS` for its kind; the rest (feature_layer, LoRA,
dtype, remat, Whisper-style time pooling, ...) comes from the caller's section. A section value that differs from
the section's default AND from the folder's is an error naming both (the default of a field the user did not
set cannot tell us anything, so it yields to the folder silently).
"""
from __future__ import annotations

import dataclasses
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxmm.checks import fail
from jaxmm.hf.io import load_safetensors, read_config
from jaxmm.hf.pretrained import AUDIO_ARCHITECTURES, LLM_ARCHITECTURES, VISION_ARCHITECTURES, loader

# config fields an HF folder decides, per jaxmm config class (what each *_config_from_hf reads from config.json)
FOLDER_FIELDS = {
    "ViTConfig": ("image_size", "patch_size", "num_channels", "d_model", "num_layers", "num_heads", "mlp_dim", "mlp",
                  "norm_eps", "projection_dim", "class_token", "pre_norm", "patch_bias", "pool"),
    "AudioConfig": ("n_mels", "max_frames", "d_model", "num_layers", "num_heads", "mlp_dim", "norm_eps"),
    "LLMConfig": ("vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
                  "rope_theta", "rope_scaling", "norm_eps", "qkv_bias", "out_bias", "mlp_bias", "tie_embeddings",
                  "sliding_window"),
}
ENCODER_OF = {**{a: "vit" for a in VISION_ARCHITECTURES}, **{a: "audio" for a in AUDIO_ARCHITECTURES}}


def architecture(folder) -> str:
    arch = (read_config(folder).get("architectures") or [None])[0]
    return arch


def _settings(module_config) -> dict:
    keys = FOLDER_FIELDS[type(module_config).__name__]
    return {k: getattr(module_config, k) for k in keys}


def merge_settings(what: str, folder: dict, section: dict, defaults: dict | None = None) -> dict:
    """The folder's settings with the section's other fields; a section field the folder also decides must equal
    the folder's value unless it is the section's default. ValueError naming `<what>.<field>`, both values and
    the folder otherwise."""
    defaults = defaults or {}
    out = dict(section)
    for k, v in folder.items():
        if k in section and section[k] != v and not (k in defaults and section[k] == defaults[k]):
            given = section[k]
            if not (isinstance(v, tuple) and isinstance(given, (list, tuple)) and tuple(given) == v):
                fail(f"{what}.{k}", f"{v!r} (from the HF folder's config.json) or unset", repr(given))
        out[k] = v
    return out


def encoder_config(folder, encoder: str, section: dict | None = None, defaults: dict | None = None, **common):
    """The encoder config (ViTConfig / AudioConfig) of an HF vision / audio folder for the MLLM encoder named
    `encoder` ("vit" for CLIP and SigLIP, "audio" for Whisper). `section`: the caller's settings (e.g. the
    trainer's `model.<encoder>`), `defaults` its defaults; `common`: dtype / remat."""
    arch = architecture(folder)
    if arch not in ENCODER_OF:
        fail(f"{folder}: config.json architectures[0]", f"an encoder architecture, one of {sorted(ENCODER_OF)}",
             repr(arch))
    if ENCODER_OF[arch] != encoder:
        fail("model.encoder", f"{ENCODER_OF[arch]!r} for the {arch} folder {str(folder)!r}", repr(encoder))
    module = _module_config(folder, arch)
    merged = merge_settings(f"model.{encoder}", _settings(module), dict(section or {}), defaults)
    fields = {f.name for f in dataclasses.fields(module)}
    unknown = sorted(set(merged) - fields)
    if unknown:
        fail(f"model.{encoder}", f"fields of {type(module).__name__}", unknown)
    return dataclasses.replace(module, **merged, **{k: v for k, v in common.items() if k in fields})


def llm_config(folder, section: dict | None = None, defaults: dict | None = None, *, vocab_size: int | None = None,
               **common):
    """The LLMConfig of an HF LLM folder (every family in LLM_ARCHITECTURES); `vocab_size` larger than the
    folder's (a tokenizer with added tokens, e.g. `<image>`) grows the vocabulary (see `load_group`)."""
    arch = architecture(folder)
    if arch not in LLM_ARCHITECTURES:
        fail(f"{folder}: config.json architectures[0]", f"one of {LLM_ARCHITECTURES}", repr(arch))
    module = _module_config(folder, arch)
    merged = merge_settings("model.llm", _settings(module), dict(section or {}), defaults)
    if vocab_size is not None and vocab_size > module.vocab_size:
        merged["vocab_size"] = int(vocab_size)
    return dataclasses.replace(module, **merged, **common)


def _module_config(folder, arch):
    from jaxmm.hf import clip, siglip, whisper
    from jaxmm.models import llm

    config = read_config(folder)
    if arch in LLM_ARCHITECTURES:
        return llm.llm_config_from_hf(config)
    if arch.startswith("Siglip"):
        return siglip.vit_config_from_hf(config)
    if arch in AUDIO_ARCHITECTURES:
        return whisper.audio_config_from_hf(config)
    return clip.vit_config_from_hf(config)


def load_params(folder, module_config) -> dict:
    """The folder's weights as params of a module built from `module_config` (a config from `encoder_config` /
    `llm_config`); LoRA pairs the checkpoint lacks start at lora_b = 0. A grown vocabulary gets its new
    embedding rows (and lm_head columns) set to the mean of the stored ones (reconstruction: transformers'
    `resize_token_embeddings` samples new rows around that mean; the mean itself is the centre of that law)."""
    arch = architecture(folder)
    folder_cfg = _module_config(folder, arch)
    extra = {f.name: getattr(module_config, f.name) for f in dataclasses.fields(module_config)
             if f.name not in FOLDER_FIELDS[type(module_config).__name__] and f.name != "dtype"}
    tensors = load_safetensors(folder, float_dtype=np.float32)
    grow = 0
    if type(module_config).__name__ == "LLMConfig":
        grow = module_config.vocab_size - folder_cfg.vocab_size
    model, params = loader(arch)(read_config(folder), tensors, dtype=jnp.float32, **extra)
    want = dataclasses.replace(module_config, vocab_size=folder_cfg.vocab_size) if grow else module_config
    if dataclasses.replace(model.config, dtype=want.dtype) != want:
        fail("module_config", f"a config whose folder fields ({', '.join(FOLDER_FIELDS[type(want).__name__])}) "
             f"are those of {str(folder)!r}", repr(want))
    if grow > 0:
        emb = params["embedder"]["embedding"]
        params["embedder"]["embedding"] = jnp.concatenate([emb, jnp.broadcast_to(emb.mean(0), (grow, emb.shape[1]))])
        if "lm_head" in params:
            k = params["lm_head"]["kernel"]
            params["lm_head"]["kernel"] = jnp.concatenate([k, jnp.broadcast_to(k.mean(1, keepdims=True),
                                                                               (k.shape[0], grow))], axis=1)
    return params


def load_group(params: dict, group: str, folder, module_config) -> dict:
    """`params` with `params[group]` replaced by the folder's weights (LoRA leaves keep their values in
    `params`), each leaf placed like the one it replaces (same sharding, same dtype). ValueError naming the
    paths whose shapes differ (a module config that does not describe the folder)."""
    if group not in params:
        fail("group", f"one of the model's param groups {sorted(params)}", repr(group))
    return replace_group(params, group, load_params(folder, module_config), source=str(folder))


def replace_group(params: dict, group: str, new: dict, *, source: str) -> dict:
    """`params` with the subtree `group` taken from `new` (a tree of the same structure and shapes; LoRA leaves
    lora_a / lora_b are kept from `params`), placed on each replaced leaf's sharding, in its dtype."""
    old = params[group]
    flat_old = dict(_flat(old))
    flat_new = dict(_flat(new))
    missing = sorted(set(flat_old) - set(flat_new) - {p for p in flat_old if p[-1] in ("lora_a", "lora_b")})
    extra = sorted(set(flat_new) - set(flat_old))
    shapes = sorted(p for p in set(flat_old) & set(flat_new) if tuple(flat_old[p].shape) != tuple(flat_new[p].shape))
    if missing or extra or shapes:
        detail = [f"{'/'.join(p)}: model {tuple(flat_old[p].shape)}, {source} {tuple(flat_new[p].shape)}"
                  for p in shapes[:5]]
        fail(f"params[{group!r}] from {source}", "the same param tree and shapes as the model",
             f"missing {['/'.join(p) for p in missing[:5]]}, unexpected {['/'.join(p) for p in extra[:5]]}, "
             f"shapes differ {detail}")

    def pick(path, leaf):
        key = tuple(getattr(k, "key", k) for k in path)
        if key[-1] in ("lora_a", "lora_b") or key not in flat_new:
            return leaf
        value = jnp.asarray(flat_new[key], leaf.dtype)
        sharding = getattr(leaf, "sharding", None)
        return jax.device_put(value, sharding) if sharding is not None else value

    out = dict(params)
    out[group] = jax.tree_util.tree_map_with_path(pick, old)
    return out


def _flat(tree):
    return [(tuple(getattr(k, "key", k) for k in path), leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def image_processor(folder):
    """The folder's `ImageProcessor` (preprocessor_config.json), or None with a warning when it has none."""
    from jaxmm.hf.preprocess import ImageProcessor

    if not os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
        warnings.warn(f"{folder}: no preprocessor_config.json; images keep jaxmm's default [-1, 1] scaling",
                      stacklevel=2)
        return None
    return ImageProcessor.from_folder(folder)


# ------------------------------------------------------------------------------------------- an MLLM from a run config
# The `model.llm` section's defaults of the `mllm.qa` task family (its schema, train/tasks/mllm.py, and every reader
# of a run's config.json use these; scan / remat: jaxmm.nn.transformer).
MLLM_LLM_DEFAULTS = dict(num_layers=2, d_model=64, num_heads=4, num_kv_heads=2, mlp_dim=128, tie_embeddings=True,
                         lora_rank=0, lora_alpha=16.0, scan_layers=False, remat_policy="none")


def _plain(config) -> dict:
    """A run config (ml_collections.ConfigDict, or the dict of a workdir's config.json) as nested dicts."""
    return config.to_dict() if hasattr(config, "to_dict") else config


def _common(config) -> dict:
    train = config.get("train", {})
    return dict(dtype=jnp.bfloat16 if train.get("compute_dtype") == "bfloat16" else None,
                remat=bool(train.get("remat", False)))


def tokenizer_path(config) -> str:
    """The tokenizer of an MLLM run: `data.tokenizer` (an HF tokenizer.json or its folder), else the
    `model.init.llm` folder's, else "" (the byte tokenizer). The caller builds it (jaxmm.data's `HFTokenizer(path)`
    or `ByteTokenizer()`: jaxmm.hf sits below jaxmm.data)."""
    config = _plain(config)
    return config.get("data", {}).get("tokenizer") or config["model"].get("init", {}).get("llm") or ""


def mllm_encoder_config(config):
    """The encoder config of an MLLM run (`model.encoder` registered in jaxmm.models.encoders): its
    `model.<encoder>` section, or the `model.init.encoder` HF folder's settings merged with it."""
    from jaxmm.models import encoders

    config = _plain(config)
    m = config["model"]
    spec = encoders.get(m["encoder"])
    section = dict(m.get(m["encoder"]) or {})
    init = m.get("init", {}).get("encoder")
    if init:
        return encoder_config(init, m["encoder"], section, spec.defaults, **_common(config))
    return spec.build_config(section, **_common(config))


def mllm_image_processor(config):
    """The `model.init.encoder` folder's ImageProcessor for an image encoder (None otherwise: images are scaled
    [0, 255] -> [-1, 1]), checked against the encoder's image_size."""
    from jaxmm.models import encoders

    config = _plain(config)
    m = config["model"]
    folder = m.get("init", {}).get("encoder")
    if not folder or encoders.get(m["encoder"]).input_key != "image":
        return None
    proc = image_processor(folder)
    size = mllm_encoder_config(config).image_size
    if proc is not None and proc.output_size not in (None, (size, size)):
        raise ValueError(f"model.init.encoder: {folder}'s preprocessor_config.json makes "
                         f"{proc.output_size} images, its config.json image_size is {size}")
    return proc


def build_mllm(config, tokenizer):
    """The `jaxmm.models.mllm.MLLM` module of an MLLM run config (the trainer's `mllm.qa` family, or the dict of
    its workdir's config.json): `model.llm` (or the `model.init.llm` folder's shapes, the vocabulary grown to
    the tokenizer's), the encoder of `mllm_encoder_config`, `model.projector`; `tokenizer` gives vocab_size and
    the placeholder id (`image_id` / `audio_id`). The one place a run's model is rebuilt: the trainer and
    `python -m jaxmm.chat` both call it."""
    from jaxmm.models import encoders
    from jaxmm.models.llm import LLMConfig
    from jaxmm.models.mllm import MLLM, MLLMConfig

    config = _plain(config)
    m, common = config["model"], _common(config)
    section = dict(m.get("llm") or {})
    init_llm = m.get("init", {}).get("llm")
    if init_llm:
        llm = llm_config(init_llm, section, MLLM_LLM_DEFAULTS, vocab_size=tokenizer.vocab_size, **common)
    else:
        llm = LLMConfig(vocab_size=tokenizer.vocab_size, **{**MLLM_LLM_DEFAULTS, **section}, **common)
    spec = encoders.get(m["encoder"])
    return MLLM(MLLMConfig(llm=llm, placeholder_id=getattr(tokenizer, f"{spec.input_key}_id"), encoder=m["encoder"],
                           encoder_config=mllm_encoder_config(config), projector=m.get("projector", "mlp2x_gelu")))
