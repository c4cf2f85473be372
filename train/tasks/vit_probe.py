"""`vit_probe`: the demo's ViT trained ALONE (no LLM) as a classifier of the single word (12 classes) or its colour
(5) in "read the word" images of the embedded TextVQA set, through a linear head on mean- (or attention-) pooled
patch features (configs/vit_probe.py; the probe behind docs/results/trainer.md's "why the demo does not read").

`task_args.save_encoder`: write the ViT params at the end (flax msgpack, the MLLM's `encoder` subtree layout).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from train.task import Hook, Task
from train.tasks import register


def _labels(target):
    from jaxmm.data.textvqa import COLORS, DEFAULT_WORDS

    if target not in ("word", "color"):
        raise ValueError(f"config.data.target: expected 'word' or 'color', got {target!r}")
    return DEFAULT_WORDS if target == "word" else tuple(COLORS)


class ViTProbe(Task):
    metric = "eval_accuracy"

    def default_config(self):
        return ml_collections.ConfigDict(dict(
            model=dict(image_size=32, patch_size=4, d_model=64, num_layers=2, num_heads=4, mlp_dim=128, pool="mean"),
            data=dict(target="word", font_sizes=(10, 14), train_examples=4000, eval_examples=500),
            task_args=dict(save_encoder="")))

    def build_model(self, config):
        from jaxmm.models.vit import ViTConfig

        from jaxmm.models.classifier import PooledViTClassifier

        m = config.model
        if m.pool not in ("mean", "attn"):
            raise ValueError(f"config.model.pool: expected 'mean' or 'attn', got {m.pool!r}")
        cfg = ViTConfig(image_size=m.image_size, patch_size=m.patch_size, d_model=m.d_model, num_layers=m.num_layers,
                        num_heads=m.num_heads, mlp_dim=m.mlp_dim, feature_layer=-1, remat=config.train.remat)
        return PooledViTClassifier(cfg, len(_labels(config.data.target)), m.pool)

    def datasets(self, config):
        import grain

        from jaxmm.data.textvqa import TextVQA

        d, labels = config.data, _labels(config.data.target)
        key = "words" if d.target == "word" else "colors"

        def load(n, split):
            ds = TextVQA(n, seed=0, split=split, image_size=config.model.image_size, max_words=1, kinds=("read",),
                         font_sizes=tuple(d.font_sizes))
            return [{"image": np.asarray(e["image"], np.float32) / 127.5 - 1,
                     "label": np.int32(labels.index(e[key][0]))} for e in (ds[i] for i in range(n))]

        return (grain.MapDataset.source(load(d.train_examples, "train")),
                grain.MapDataset.source(load(d.eval_examples, "eval")))

    def model_inputs(self, batch):
        return {"image": batch["image"]}

    def loss_fn(self, model, params, batch, rng, extra=None):
        logits = model.apply({"params": params}, batch["image"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, {"train_accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}

    def eval_metrics(self, model, params, batch):
        logits = model.apply({"params": params}, batch["image"])
        return {"loss": optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]),
                "accuracy": (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)}

    def hooks(self, config):
        path = config.task_args.save_encoder
        if not path:
            return []

        def save(ctx):
            from flax import serialization

            from train.metrics import write_atomic

            if jax.process_index() == 0:
                encoder = jax.device_get(nn.unbox(ctx.state.params["encoder"]))
                write_atomic(path, serialization.msgpack_serialize(encoder))
            return {}

        return [Hook(config.train.steps, save, name="save_encoder")]


register("vit_probe")(ViTProbe)
