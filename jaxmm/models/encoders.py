"""Registry of the MLLM's encoders: a paper adds an encoder by registering it from its own module, with no edit
to `jaxmm.models.mllm` or the trainer.

    from jaxmm.models import encoders
    encoders.register(encoders.Encoder(
        name="convnext", config_cls=ConvNeXtConfig, module=ConvNeXt, input_key="image",
        feature_shape=lambda cfg, x_shape: (cfg.num_tokens, cfg.d_model),
        defaults=dict(image_size=64, d_model=64)))

What the MLLM needs from one:
  config_cls(**args)  a frozen (hashable) dataclass built from a config dict (`config.model.<name>` in the
                      trainer, with `dtype` / `remat` added when the dataclass has them);
  module(config)      a Linen module: `module(x, deterministic=...)` -> {"features": [B, N, D], ...};
  input_key           the batch key of its input and the tokenizer's placeholder kind ("image" -> `<image>`,
                      `tokenizer.image_id`; "audio" -> `<audio>`);
  feature_shape(config, input_shape) -> (N, D) for an input of `input_shape` (without the batch axis);
  defaults            the trainer's config section for it (its keys are the schema; a typo fails early).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from jaxmm.registry import Registry


@dataclasses.dataclass(frozen=True)
class Encoder:
    name: str
    config_cls: Callable[..., Any]
    module: Callable[[Any], Any]
    input_key: str
    feature_shape: Callable[[Any, tuple], tuple]
    defaults: dict = dataclasses.field(default_factory=dict)

    def build_config(self, args: dict, **common):
        """The encoder's config from a dict; `common` (dtype, remat) only where the dataclass has those fields."""
        fields = {f.name for f in dataclasses.fields(self.config_cls)} if dataclasses.is_dataclass(
            self.config_cls) else set(common)
        return self.config_cls(**dict(args), **{k: v for k, v in common.items() if k in fields})


ENCODERS = Registry("encoder", "encoder")
register, get = ENCODERS.register, ENCODERS.get


def _register_builtin() -> None:
    from jaxmm.models.audio import AudioConfig, AudioEncoder
    from jaxmm.models.vit import ViT, ViTConfig

    register(Encoder(
        "vit", ViTConfig, ViT, "image",
        feature_shape=lambda cfg, shape: (cfg.num_features, cfg.d_model),
        defaults=dict(image_size=48, patch_size=8, d_model=64, num_layers=2, num_heads=4, mlp_dim=128,
                      feature_layer=-1, lora_rank=0)))
    register(Encoder(
        "audio", AudioConfig, AudioEncoder, "audio",
        feature_shape=lambda cfg, shape: (cfg.num_features(shape[0]), cfg.d_model),
        defaults=dict(n_mels=80, max_frames=100, d_model=64, num_layers=2, num_heads=4, mlp_dim=128, pool=2,
                      lora_rank=0)))

    # LLaVA-Read (issue 18): the high-res ConvNeXt alone, and the dual-resolution ViT + ConvNeXt with fusion
    from jaxmm.models.convnext import ConvNeXt, ConvNeXtConfig
    from jaxmm.models.dual_encoder import DualEncoder, DualEncoderConfig

    register(Encoder(
        "convnext", ConvNeXtConfig, ConvNeXt, "image",
        feature_shape=lambda cfg, shape: (cfg.num_features, cfg.d_model),
        defaults=dict(image_size=64, patch_size=4, hidden_sizes=(32, 64), depths=(1, 1))))
    register(Encoder(
        "dual_res", DualEncoderConfig, DualEncoder, "image",
        feature_shape=lambda cfg, shape: (cfg.num_features, cfg.d_model),
        defaults=dict(image_size=192, low_res=48, fuse_after=(1, 4, 7), fusion_dim=0, low_res_only=False,
                      vit=dict(patch_size=8, d_model=64, num_layers=8, num_heads=4, mlp_dim=128, feature_layer=-1),
                      convnext=dict(patch_size=4, hidden_sizes=(32, 64), depths=(1, 1), feature_stage=-1))))


_register_builtin()
