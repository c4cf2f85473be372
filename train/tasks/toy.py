"""`toy.classify`: a tiny sharded classifier on seeded Gaussian clusters — the trainer's own test task.

Small enough to compile in a second, but with every parameter carrying Linen logical axis names (so data,
FSDP and tensor meshes all shard it) and with several named groups: `encoder`, `head`, and `lora` (a LoRA pair
inside the encoder). Also exercises dropout (the step RNG) and eval accuracy.
"""
from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from train.task import Hook, Task
from train.tasks import register


class _Dense(nn.Module):
    features: int
    axes: tuple
    lora_rank: int = 0
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        k = self.param("kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(), self.axes),
                       (x.shape[-1], self.features))
        b = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes[1:]), (self.features,))
        y = x.astype(self.dtype) @ k.astype(self.dtype) + b.astype(self.dtype)
        if self.lora_rank:
            a = self.param("lora_a", nn.with_logical_partitioning(nn.initializers.normal(0.1), (self.axes[0], None)),
                           (x.shape[-1], self.lora_rank))
            bb = self.param("lora_b", nn.with_logical_partitioning(nn.initializers.zeros, (None, self.axes[1])),
                            (self.lora_rank, self.features))
            y = y + (x.astype(self.dtype) @ a.astype(self.dtype)) @ bb.astype(self.dtype)
        return y


class ToyModel(nn.Module):
    hidden: int
    classes: int
    lora_rank: int
    dropout: float
    dtype: str = "float32"

    def setup(self):
        self.encoder = _Dense(self.hidden, ("embed", "mlp"), self.lora_rank, self.dtype)
        self.head = _Dense(self.classes, ("mlp", "vocab"), 0, self.dtype)

    def __call__(self, x, train: bool = False, rng=None):
        h = jax.nn.gelu(self.encoder(x))
        if train and self.dropout > 0:
            keep = jax.random.bernoulli(rng, 1 - self.dropout, h.shape)
            h = jnp.where(keep, h / (1 - self.dropout), 0)
        return self.head(h).astype(jnp.float32)


def make_data(n: int, dim: int, classes: int, seed: int):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(1234).normal(size=(classes, dim)).astype(np.float32) * 1.5
    y = rng.integers(0, classes, n)
    x = centers[y] + rng.normal(size=(n, dim)).astype(np.float32)
    return [{"x": x[i], "y": np.int32(y[i])} for i in range(n)]


class ToyClassify(Task):
    metric = "eval_accuracy"

    def default_config(self):
        return ml_collections.ConfigDict(dict(
            model=dict(hidden=16, classes=4, lora_rank=2, dropout=0.0),
            data=dict(dim=8, train_examples=256, eval_examples=64),
            task_args=dict(sleep_s=0.0)))

    def build_model(self, config):
        m = config.model
        return ToyModel(m.hidden, m.classes, m.lora_rank, m.dropout, config.train.compute_dtype)

    def datasets(self, config):
        d = config.data
        import grain

        train = grain.MapDataset.source(make_data(d.train_examples, d.dim, config.model.classes, config.seed))
        evals = grain.MapDataset.source(make_data(d.eval_examples, d.dim, config.model.classes, config.seed + 1))
        return train, evals

    def init_variables(self, model, batch, rng):
        return model.init(rng, batch["x"])

    def loss_fn(self, model, params, batch, rng, extra=None):
        logits = model.apply({"params": params}, batch["x"], train=rng is not None, rng=rng)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        return loss, {"train_accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["y"])}

    def eval_metrics(self, model, params, batch):
        logits = model.apply({"params": params}, batch["x"])
        return {"loss": optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]),
                "accuracy": (jnp.argmax(logits, -1) == batch["y"]).astype(jnp.float32)}

    def hooks(self, config):
        # a deliberately slow run (for the kill-and-resume test): the sleep changes no numbers
        if config.task_args.sleep_s > 0:
            return [Hook(1, lambda ctx: time.sleep(config.task_args.sleep_s), name="sleep")]
        return []


register("toy.classify")(ToyClassify)


def config(**overrides) -> ml_collections.ConfigDict:
    """A small ready-to-run config for this task (used by the trainer's tests)."""
    from train import config as config_lib

    c = config_lib.defaults()
    c.task = "toy.classify"
    c.model = ToyClassify().default_config().model
    c.data = ToyClassify().default_config().data
    c.task_args = ToyClassify().default_config().task_args
    c.train.steps = 20
    c.train.batch_size = 32
    c.train.log_every = 1
    c.train.eval_batch_size = 32
    c.train.progress = False
    c.train.plots = False
    c.optim.lr = 3e-2
    c.optim.schedule = "constant"
    c.checkpoint.every = 5
    return config_lib.apply_overrides(c, overrides)
