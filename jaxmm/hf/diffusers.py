"""diffusers folders in: `UNet2DConditionModel` -> jaxmm.models.unet.UNet, `AutoencoderKL` ->
jaxmm.models.vae.AutoencoderKL (config.json + diffusion_pytorch_model.safetensors; safetensors only).

    module, params = jaxmm.hf.from_pretrained("sd/unet")     # dispatches on config.json's `_class_name`
    eps = module.apply({"params": params}, x_nhwc, timesteps, context)

Weights out: `save_diffusers(module, params, folder)` writes the same layout (config.json with `_class_name`,
diffusion_pytorch_model.safetensors) that diffusers' own `from_pretrained` loads; `to_diffusers(params)` gives
the tensors alone.

Names map one to one: jaxmm's parameter paths mirror diffusers' module names with "." -> "_" (a leaf `kernel` or
`scale` is diffusers' `weight`). Conv weights go OIHW -> HWIO, Linear weights [out, in] -> [in, out]. The VAE's
pre-0.14 attention names (query/key/value/proj_attn, possibly as 1x1 convs) are renamed. Every checkpoint tensor
must land on a parameter and every parameter must be found, else ValueError listing what is off.
"""
from __future__ import annotations

import re
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxmm.checks import fail
from jaxmm.hf.io import load_safetensors
from jaxmm.models.unet import UNet, UNetConfig
from jaxmm.models.vae import AutoencoderKL, VAEConfig

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CLASSES = ("UNet2DConditionModel", "AutoencoderKL")
_OLD_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _unsupported(config, name, allowed):
    value = config.get(name, allowed[0])
    if value not in allowed:
        fail(f"config.json {name}", f"one of {list(allowed)} (not supported by jaxmm.models)", repr(value))


def unet_config(config: dict, **overrides) -> UNetConfig:
    """UNetConfig from a diffusers UNet2DConditionModel config.json dict (diffusers' defaults where absent).
    diffusers' `attention_head_dim` is the number of heads (its documented naming quirk) unless
    `num_attention_heads` is set."""
    for name, allowed in (("class_embed_type", (None,)), ("addition_embed_type", (None,)),
                          ("encoder_hid_dim", (None,)), ("time_embedding_type", ("positional",)),
                          ("resnet_time_scale_shift", ("default",)), ("act_fn", ("silu",)),
                          ("only_cross_attention", (False,)), ("dual_cross_attention", (False,)),
                          ("time_cond_proj_dim", (None,)), ("conv_in_kernel", (3,)), ("conv_out_kernel", (3,)),
                          ("downsample_padding", (1,)), ("center_input_sample", (False,)),
                          ("attention_type", ("default",)), ("time_embedding_dim", (None,))):
        _unsupported(config, name, allowed)
    if isinstance(config.get("cross_attention_dim", 1280), (list, tuple)):
        fail("config.json cross_attention_dim", "one int", config["cross_attention_dim"])
    if isinstance(config.get("layers_per_block", 2), (list, tuple)):
        fail("config.json layers_per_block", "one int", config["layers_per_block"])
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    kw = dict(
        in_channels=config.get("in_channels", 4), out_channels=config.get("out_channels", 4),
        block_out_channels=tuple(config.get("block_out_channels", (320, 640, 1280, 1280))),
        down_block_types=tuple(config.get("down_block_types", ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",))),
        up_block_types=tuple(config.get("up_block_types", ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)),
        mid_block_type=config.get("mid_block_type", "UNetMidBlock2DCrossAttn"),
        layers_per_block=config.get("layers_per_block", 2),
        num_attention_heads=heads if isinstance(heads, int) else tuple(heads),
        transformer_layers_per_block=(lambda v: v if isinstance(v, int) else tuple(v))(
            config.get("transformer_layers_per_block", 1)),
        cross_attention_dim=config.get("cross_attention_dim", 1280),
        norm_num_groups=config.get("norm_num_groups", 32), norm_eps=config.get("norm_eps", 1e-5),
        flip_sin_to_cos=config.get("flip_sin_to_cos", True), freq_shift=config.get("freq_shift", 0),
        use_linear_projection=config.get("use_linear_projection", False),
        mid_block_scale_factor=config.get("mid_block_scale_factor", 1.0))
    kw.update(overrides)
    return UNetConfig(**kw)


def vae_config(config: dict, **overrides) -> VAEConfig:
    """VAEConfig from a diffusers AutoencoderKL config.json dict."""
    _unsupported(config, "act_fn", ("silu",))
    for name, allowed in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        if any(t != allowed for t in config.get(name, (allowed,))):
            fail(f"config.json {name}", f"only {allowed!r}", config[name])
    if config.get("shift_factor") not in (None, 0, 0.0):
        fail("config.json shift_factor", "None or 0 (not supported)", config["shift_factor"])
    kw = dict(
        in_channels=config.get("in_channels", 3), out_channels=config.get("out_channels", 3),
        block_out_channels=tuple(config.get("block_out_channels", (64,))),
        layers_per_block=config.get("layers_per_block", 1), latent_channels=config.get("latent_channels", 4),
        norm_num_groups=config.get("norm_num_groups", 32), scaling_factor=config.get("scaling_factor", 0.18215),
        use_quant_conv=config.get("use_quant_conv", True), use_post_quant_conv=config.get("use_post_quant_conv", True),
        mid_block_add_attention=config.get("mid_block_add_attention", True))
    kw.update(overrides)
    return VAEConfig(**kw)


def _key(name: str) -> str:
    parts = name.split(".")
    parts = [_OLD_ATTN.get(p, p) for p in parts[:-1]] + [parts[-1]]
    return "_".join(".".join(parts).split("."))


def convert(tensors: dict, shapes, dtype=jnp.float32):
    """diffusers tensors {name: array} -> a jaxmm params tree shaped like `shapes` (a tree of ShapeDtypeStructs,
    e.g. from `jax.eval_shape(module.init, ...)["params"]`)."""
    flat_shapes = traverse_util.flatten_dict(shapes)
    by_key = {}
    for name, array in tensors.items():
        by_key.setdefault(_key(name), []).append((name, array))
    out, missing, used = {}, [], set()
    for path, spec in flat_shapes.items():
        leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[path[-1]]
        hits = by_key.get("_".join(path[:-1] + (leaf,)), [])
        if len(hits) != 1:
            missing.append("/".join(path))
            continue
        name, a = hits[0]
        a = np.asarray(a)
        if a.ndim == 4 and len(spec.shape) == 2:          # pre-0.14 VAE attention stored as 1x1 convs
            a = a[:, :, 0, 0]
        if a.ndim == 4:
            a = a.transpose(2, 3, 1, 0)                    # OIHW -> HWIO
        elif a.ndim == 2:
            a = a.T                                        # Linear [out, in] -> [in, out]
        if tuple(a.shape) != tuple(spec.shape):
            fail(f"checkpoint tensor {name!r}", f"shape {tuple(spec.shape)} after layout change for "
                 f"{'/'.join(path)}", f"{tuple(a.shape)}")
        out[path] = jnp.asarray(a.astype(np.float32), dtype)
        used.add(name)
    unused = sorted(set(tensors) - used)
    if missing or unused:
        raise ValueError(f"diffusers checkpoint does not match the jaxmm model: parameters not found "
                         f"{missing[:10]}{' ...' if len(missing) > 10 else ''} ({len(missing)}); checkpoint "
                         f"tensors unused {unused[:10]}{' ...' if len(unused) > 10 else ''} ({len(unused)})")
    return traverse_util.unflatten_dict(out)


def unet_from_diffusers(config: dict, tensors: dict, dtype=jnp.float32, **overrides):
    """(UNet, params) from a UNet2DConditionModel config dict and its tensors."""
    cfg = unet_config(config, **overrides)
    module = UNet(cfg)
    f = 2 ** (len(cfg.block_out_channels) - 1)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, f, f, cfg.in_channels)),
                            jnp.zeros((1,)), jnp.zeros((1, 1, cfg.cross_attention_dim)))["params"]
    return module, convert(tensors, nn.meta.unbox(shapes), dtype)


def vae_from_diffusers(config: dict, tensors: dict, dtype=jnp.float32, **overrides):
    """(AutoencoderKL, params) from an AutoencoderKL config dict and its tensors."""
    cfg = vae_config(config, **overrides)
    module = AutoencoderKL(cfg)
    f = 2 ** (len(cfg.block_out_channels) - 1)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, f, f, cfg.in_channels)))["params"]
    return module, convert(tensors, nn.meta.unbox(shapes), dtype)


def from_hf(config: dict, tensors: dict, dtype=jnp.float32, **overrides):
    """The `jaxmm.hf.from_pretrained` loader for diffusers classes (config["_class_name"])."""
    cls = config.get("_class_name")
    if cls == "UNet2DConditionModel":
        return unet_from_diffusers(config, tensors, dtype, **overrides)
    if cls == "AutoencoderKL":
        return vae_from_diffusers(config, tensors, dtype, **overrides)
    fail("config.json _class_name", f"one of {list(CLASSES)}", repr(cls))


def load_weights(path) -> dict:
    """The tensors of a diffusers model folder: `diffusion_pytorch_model.safetensors` when present (so fp16
    variant files beside it are not read too), else what jaxmm.hf.io.load_safetensors finds."""
    p = Path(path)
    single = p / WEIGHTS_NAME
    return load_safetensors(single if single.is_file() else p)


# ------------------------------------------------------------------------------------------------- weights out
_LISTS = r"(down_blocks|up_blocks|resnets|attentions|downsamplers|upsamplers|transformer_blocks|to_out|net)_(\d+)"


def _diffusers_name(path: tuple[str, ...]) -> str:
    """("down_blocks_0_resnets_1", "norm1", "scale") -> "down_blocks.0.resnets.1.norm1.weight"."""
    segs = []
    for seg in path[:-1]:
        seg = re.sub(_LISTS, r"\1.\2", seg)
        seg = re.sub(r"(\.\d+)_", r"\1.", seg)
        seg = re.sub(r"^(mid_block|time_embedding)_", r"\1.", seg)
        segs.append(seg)
    return ".".join(segs + ["weight" if path[-1] in ("kernel", "scale") else path[-1]])


def to_diffusers(params, dtype=np.float32) -> dict[str, np.ndarray]:
    """The inverse of `convert`: a jaxmm UNet / AutoencoderKL params tree -> {diffusers name: array} in torch
    layouts (conv HWIO -> OIHW, Linear [in, out] -> [out, in])."""
    out = {}
    for path, a in traverse_util.flatten_dict(nn.meta.unbox(params)).items():
        a = np.asarray(a, np.float32)
        a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else (a.T if a.ndim == 2 else a)
        out[_diffusers_name(path)] = np.ascontiguousarray(a.astype(dtype))
    return out


def _config_out(cfg) -> dict:
    if isinstance(cfg, UNetConfig):
        heads = cfg.num_attention_heads
        tl = cfg.transformer_layers_per_block
        return {"_class_name": "UNet2DConditionModel", "in_channels": cfg.in_channels,
                "out_channels": cfg.out_channels, "block_out_channels": list(cfg.block_out_channels),
                "down_block_types": list(cfg.down_block_types), "up_block_types": list(cfg.up_block_types),
                "mid_block_type": cfg.mid_block_type, "layers_per_block": cfg.layers_per_block,
                "attention_head_dim": heads if isinstance(heads, int) else list(heads),   # diffusers' name for heads
                "transformer_layers_per_block": tl if isinstance(tl, int) else list(tl),
                "cross_attention_dim": cfg.cross_attention_dim, "norm_num_groups": cfg.norm_num_groups,
                "norm_eps": cfg.norm_eps, "flip_sin_to_cos": cfg.flip_sin_to_cos, "freq_shift": cfg.freq_shift,
                "use_linear_projection": cfg.use_linear_projection,
                "mid_block_scale_factor": cfg.mid_block_scale_factor}
    n = len(cfg.block_out_channels)
    return {"_class_name": "AutoencoderKL", "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
            "block_out_channels": list(cfg.block_out_channels), "layers_per_block": cfg.layers_per_block,
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
            "latent_channels": cfg.latent_channels, "norm_num_groups": cfg.norm_num_groups,
            "scaling_factor": cfg.scaling_factor, "use_quant_conv": cfg.use_quant_conv,
            "use_post_quant_conv": cfg.use_post_quant_conv, "mid_block_add_attention": cfg.mid_block_add_attention}


def save_diffusers(module, params, folder, dtype=np.float32) -> Path:
    """Write `folder/config.json` + `folder/diffusion_pytorch_model.safetensors` that diffusers'
    `UNet2DConditionModel.from_pretrained` / `AutoencoderKL.from_pretrained` (and `from_pretrained` here) load."""
    import json

    from safetensors.numpy import save_file

    if not isinstance(module, (UNet, AutoencoderKL)):
        fail("module", "a jaxmm.models.unet.UNet or jaxmm.models.vae.AutoencoderKL", type(module).__name__)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(to_diffusers(params, dtype), str(folder / WEIGHTS_NAME))
    (folder / "config.json").write_text(json.dumps(_config_out(module.config), indent=2) + "\n")
    return folder
