"""HF `ConvNextModel` -> jaxmm.models.convnext.ConvNeXt. Name map (HF -> jaxmm), with an optional `convnext.`
prefix (ConvNextForImageClassification checkpoints; their `classifier.*` is read and dropped):
  embeddings.patch_embeddings.weight [C0, C, p, p] / .bias     -> stem_conv/kernel [p, p, C, C0] / bias
  embeddings.layernorm                                         -> stem_norm
  encoder.stages.s.downsampling_layer.0 (LayerNorm)            -> stages_s_down_norm
  encoder.stages.s.downsampling_layer.1 (conv 2x2)             -> stages_s_down_conv
  encoder.stages.s.layers.j.dwconv.weight [C, 1, 7, 7]         -> stages_s_blocks_j/dwconv/kernel [7, 7, 1, C]
  encoder.stages.s.layers.j.layernorm / pwconv1 / pwconv2      -> .../norm, fc1, fc2 (Linear weights transposed)
  encoder.stages.s.layers.j.layer_scale_parameter              -> .../gamma
  layernorm (the pooled LayerNorm, eps = layer_norm_eps)       -> norm
"""
from __future__ import annotations

import jax.numpy as jnp

from jaxmm.checks import fail
from jaxmm.models.convnext import ConvNeXt, ConvNeXtConfig
from jaxmm.models.llm import convert_tensors, param_shapes

CONVNEXT_ARCHITECTURES = ("ConvNextModel", "ConvNextForImageClassification")   # as jaxmm.hf.pretrained lists them


def convnext_config_from_hf(config: dict, **overrides) -> ConvNeXtConfig:
    arch = (config.get("architectures") or [None])[0]
    if arch not in CONVNEXT_ARCHITECTURES:
        fail("config.architectures[0]", f"one of {CONVNEXT_ARCHITECTURES}", repr(arch))
    if config.get("hidden_act", "gelu") != "gelu":
        fail("config.hidden_act", "'gelu'", repr(config.get("hidden_act")))
    sizes, depths = config.get("hidden_sizes", [96, 192, 384, 768]), config.get("depths", [3, 3, 9, 3])
    n = int(config.get("num_stages", len(sizes)))
    base = dict(image_size=int(config.get("image_size", 224)), num_channels=int(config.get("num_channels", 3)),
                patch_size=int(config.get("patch_size", 4)), hidden_sizes=tuple(sizes[:n]), depths=tuple(depths[:n]),
                layer_scale_init=float(config.get("layer_scale_init_value", 1e-6)),
                norm_eps=float(config.get("layer_norm_eps", 1e-12)))
    base.update(overrides)
    return ConvNeXtConfig(**base)


def name_map(cfg: ConvNeXtConfig, prefix: str = "") -> dict:
    m = {}

    def norm(hf, jx):
        m[f"{prefix}{hf}.weight"] = ((*jx, "scale"), "")
        m[f"{prefix}{hf}.bias"] = ((*jx, "bias"), "")

    def lin(hf, jx, transform):
        m[f"{prefix}{hf}.weight"] = ((*jx, "kernel"), transform)
        m[f"{prefix}{hf}.bias"] = ((*jx, "bias"), "")

    lin("embeddings.patch_embeddings", ("stem_conv",), "conv")
    norm("embeddings.layernorm", ("stem_norm",))
    for s, depth in enumerate(cfg.depths):
        st = f"encoder.stages.{s}."
        if s > 0:
            norm(st + "downsampling_layer.0", (f"stages_{s}_down_norm",))
            lin(st + "downsampling_layer.1", (f"stages_{s}_down_conv",), "conv")
        for j in range(depth):
            hf, jx = f"{st}layers.{j}.", f"stages_{s}_blocks_{j}"
            lin(hf + "dwconv", (jx, "dwconv"), "conv")
            norm(hf + "layernorm", (jx, "norm"))
            lin(hf + "pwconv1", (jx, "fc1"), "T")
            lin(hf + "pwconv2", (jx, "fc2"), "T")
            if cfg.layer_scale_init > 0:
                m[f"{prefix}{hf}layer_scale_parameter"] = ((jx, "gamma"), "")
    norm("layernorm", ("norm",))
    return m


def from_hf(config: dict, tensors: dict, dtype=jnp.float32, **overrides) -> tuple[ConvNeXt, dict]:
    """(ConvNeXt, params) from a ConvNextModel config dict and its tensors {name: np.ndarray}.
    `ConvNeXt.apply({"params": params}, pixel_values_nhwc)` gives HF's outputs in NHWC. Raises ValueError listing
    unmapped / missing tensor names."""
    cfg = convnext_config_from_hf(config, **overrides)
    prefix = "convnext." if any(n.startswith("convnext.") for n in tensors) else ""
    model = ConvNeXt(cfg)
    shapes = param_shapes(model, jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32))
    params = convert_tensors(name_map(cfg, prefix), tensors, ignore=lambda n: n.startswith("classifier."),
                             expected_shapes=shapes, dtype=dtype)
    return model, params
