"""An encoder and a data source registered from outside jaxmm/train (this file) train in the `mllm.qa` task."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.data import sources
from jaxmm.models import encoders
from train import config as config_lib
from train import loop
from train.metrics import read
from train.tasks import get


@dataclasses.dataclass(frozen=True)
class PatchMeanConfig:
    d_model: int = 16
    grid: int = 2  # features = grid x grid patch means
    dtype: Any = None
    remat: bool = False


class PatchMean(nn.Module):
    """A toy image encoder: mean colour of each of grid x grid patches -> Dense."""
    config: PatchMeanConfig

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        b, h, w, c = x.shape
        g = self.config.grid
        patches = x.reshape(b, g, h // g, g, w // g, c).mean(axis=(2, 4)).reshape(b, g * g, c)
        return {"features": nn.Dense(self.config.d_model)(patches)}


class ColourQA:
    """'What colour level?' over flat images: the answer is the level index (0-2)."""

    def __init__(self, n: int, size: int, seed: int, split: str):
        self.n, self.size, self.offset = n, size, (0 if split == "train" else 10_000) + seed

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        level = (int(i) + self.offset) % 3
        return {"image": np.full((self.size, self.size, 3), 40 + 80 * level, np.uint8),
                "conversations": [("user", "<image>\nWhich level?"), ("assistant", str(level))]}


def _build_colour(args, *, split, examples, seed, encoder_args, formatter=None):
    return ColourQA(examples, args["size"], seed, split)


@pytest.fixture(scope="module", autouse=True)
def registered():
    enc = encoders.register(encoders.Encoder(
        "patch_mean", PatchMeanConfig, PatchMean, "image",
        feature_shape=lambda cfg, shape: (cfg.grid ** 2, cfg.d_model), defaults=dict(d_model=16, grid=2)))
    src = sources.register(sources.Source("colour_qa", _build_colour, defaults=dict(size=8)))
    yield
    encoders.ENCODERS.pop(enc.name)
    sources.SOURCES.pop(src.name)


def test_outside_encoder_and_source_train_in_the_mllm_task(tmp_path):
    factory = get("mllm.qa")
    d = factory().default_config()
    assert "patch_mean" in d.model and "colour_qa" in d.data  # the schema grows with the registries
    c = config_lib.defaults()
    c.task = "mllm.qa"
    c.model = {"encoder": "patch_mean", "patch_mean": {"d_model": 32},
               "llm": dict(num_layers=1, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64)}
    c.data = dict(source="colour_qa", train_examples=32, eval_examples=8, max_len=32, max_prompt_len=28,
                  max_answer_len=2)
    c.train.update(dict(steps=2, batch_size=8, log_every=1, eval_batch_size=8, progress=False, plots=False))
    c.optim.update(dict(lr=3e-3, schedule="constant"))
    c.checkpoint.update(dict(every=0, async_save=False))
    c.mesh.shape = (1, 1, 1)
    summary, state = loop.train(c, str(tmp_path / "w"), factory, return_state=True)
    losses = [r["loss"] for r in read(os.path.join(tmp_path / "w", "metrics.jsonl")) if "loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert 0.0 <= summary["eval_accuracy"] <= 1.0
    kernel = state.params["encoder"]["Dense_0"]["kernel"]
    assert kernel.shape == (3, 32)  # the registered encoder, built from the config dict
    spec = encoders.get("patch_mean")
    assert spec.feature_shape(spec.build_config({"d_model": 32}), (8, 8, 3)) == (4, 32)
    assert jnp.asarray(kernel).dtype == jnp.float32
