"""`vit_probe`: the demo's ViT trained ALONE (no LLM) as a classifier of the single word (12 classes) and/or its
colour (5) in "read the word" images of the embedded TextVQA set, through linear heads on mean- (or attention-)
pooled patch features (configs/vit_probe.py; the probe behind docs/results/trainer.md's "why the demo does not
read"; configs/demo.py's stage 1).

`data.target`: "word", "color", or several joined by "+" ("word+color"): one linear head per target on the same
pooled features (one Dense whose output is split per target: each slice is that target's head), loss = the SUM
of the per-target cross-entropies. Metrics: `accuracy` (with several targets: the mean of the per-target
accuracies) and `accuracy/<target>` per target (train: `train_accuracy...`, eval: `eval_accuracy...`).

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


TARGETS = ("word", "color")


def targets(target: str) -> dict[str, tuple[str, ...]]:
    """`data.target` ("word", "color" or e.g. "word+color") -> {target: its class names}, in the given order."""
    from jaxmm.data.textvqa import COLORS, DEFAULT_WORDS

    names = target.split("+") if isinstance(target, str) else None
    if not names or any(n not in TARGETS for n in names) or len(set(names)) != len(names):
        raise ValueError(f"config.data.target: expected 'word', 'color' or distinct ones joined by '+' "
                         f"(e.g. 'word+color'), got {target!r}")
    return {n: DEFAULT_WORDS if n == "word" else tuple(COLORS) for n in names}


def multi_head_loss(logits, labels: dict, sizes: dict):
    """logits [B, sum(sizes)] (the heads' outputs side by side, in `sizes`' order), labels {target: int [B]} ->
    (per-row summed cross-entropy [B], {target: per-row hit [B] float32})."""
    loss, hits, start = 0.0, {}, 0
    for name, n in sizes.items():
        part = logits[:, start:start + n]
        loss = loss + optax.softmax_cross_entropy_with_integer_labels(part, labels[name])
        hits[name] = (jnp.argmax(part, -1) == labels[name]).astype(jnp.float32)
        start += n
    return loss, hits


def _accuracies(hits: dict, prefix: str) -> dict:
    out = {f"{prefix}/{k}": v for k, v in hits.items()} if len(hits) > 1 else {}
    out[prefix] = sum(hits.values()) / len(hits)
    return out


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
        return PooledViTClassifier(cfg, sum(len(v) for v in targets(config.data.target).values()), m.pool)

    def datasets(self, config):
        import grain

        from jaxmm.data.textvqa import TextVQA

        d, classes = config.data, targets(config.data.target)
        key = {"word": "words", "color": "colors"}

        def load(n, split):
            ds = TextVQA(n, seed=0, split=split, image_size=config.model.image_size, max_words=1, kinds=("read",),
                         font_sizes=tuple(d.font_sizes))
            return [{"image": np.asarray(e["image"], np.float32) / 127.5 - 1,
                     **{f"label_{t}": np.int32(names.index(e[key[t]][0])) for t, names in classes.items()}}
                    for e in (ds[i] for i in range(n))]

        return (grain.MapDataset.source(load(d.train_examples, "train")),
                grain.MapDataset.source(load(d.eval_examples, "eval")))

    def model_inputs(self, batch):
        return {"image": batch["image"]}

    def _heads(self, model, params, batch):
        sizes = {t: len(v) for t, v in targets(self.config.data.target).items()}
        logits = model.apply({"params": params}, batch["image"])
        return multi_head_loss(logits, {t: batch[f"label_{t}"] for t in sizes}, sizes)

    def loss_fn(self, model, params, batch, rng, extra=None):
        loss, hits = self._heads(model, params, batch)
        return loss.mean(), {k: v.mean() for k, v in _accuracies(hits, "train_accuracy").items()}

    def eval_metrics(self, model, params, batch):
        loss, hits = self._heads(model, params, batch)
        return {"loss": loss, **_accuracies(hits, "accuracy")}

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
