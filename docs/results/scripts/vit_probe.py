"""ViT probe behind docs/results/trainer.md's "why the demo does not read": the demo's ViT (width 64, 2 layers)
trained ALONE (no LLM) to classify the single word (12 classes) or its colour (5) of "read the word" images
from the embedded TextVQA set, with a linear head on mean-pooled (or attention-pooled) patch features.
Prints held-out accuracy every 250 steps; --save writes the ViT params (flax msgpack, the MLLM's `encoder`
subtree layout). Example:

    .venv/bin/python docs/results/scripts/vit_probe.py --image-size 32 --patch 4 --target word --steps 1000
"""
import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from jaxmm.data.textvqa import COLORS, DEFAULT_WORDS, TextVQA
from jaxmm.models.vit import ViT, ViTConfig

ap = argparse.ArgumentParser()
ap.add_argument("--image-size", type=int, default=32)
ap.add_argument("--patch", type=int, default=4)
ap.add_argument("--target", choices=("word", "color"), default="word")
ap.add_argument("--steps", type=int, default=1000)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--font-sizes", default="10,14")
ap.add_argument("--pool", choices=("mean", "attn"), default="mean")
ap.add_argument("--save", default="")
args = ap.parse_args()
fs = tuple(int(v) for v in args.font_sizes.split(","))
labels = DEFAULT_WORDS if args.target == "word" else tuple(COLORS)


def load(n, split):
    ds = TextVQA(n, seed=0, split=split, image_size=args.image_size, max_words=1, kinds=("read",), font_sizes=fs)
    ex = [ds[i] for i in range(n)]
    x = np.stack([e["image"] for e in ex]).astype(np.float32) / 127.5 - 1
    key = "words" if args.target == "word" else "colors"
    return x, np.array([labels.index(e[key][0]) for e in ex])


xtr, ytr = load(4000, "train")
xev, yev = load(500, "eval")
cfg = ViTConfig(image_size=args.image_size, patch_size=args.patch, d_model=64, num_layers=2, num_heads=4,
                mlp_dim=128, feature_layer=-1)


class Probe(nn.Module):
    @nn.compact
    def __call__(self, x):
        f = ViT(cfg, name="encoder")(x)["features"]
        if args.pool == "attn":
            q = self.param("query", nn.initializers.normal(0.02), (1, 1, cfg.d_model))
            f = nn.MultiHeadDotProductAttention(num_heads=4)(jnp.broadcast_to(q, (f.shape[0], 1, cfg.d_model)), f)[:, 0]
        else:
            f = f.mean(1)
        return nn.Dense(len(labels))(f)


model = Probe()
params = model.init(jax.random.key(0), xtr[:2])
opt = optax.adamw(args.lr, weight_decay=0.0)
state = opt.init(params)


@jax.jit
def step(p, s, x, y):
    loss, g = jax.value_and_grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean())(p)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, loss


rng = np.random.default_rng(0)
for i in range(args.steps):
    idx = rng.integers(0, len(xtr), 32)
    params, state, loss = step(params, state, xtr[idx], ytr[idx])
    if i % 250 == 0 or i == args.steps - 1:
        acc = float((model.apply(params, xev).argmax(-1) == yev).mean())
        print(f"step {i} loss {float(loss):.3f} eval accuracy {acc:.3f} (chance {1 / len(labels):.3f})", flush=True)
if args.save:
    with open(args.save, "wb") as f:
        f.write(serialization.msgpack_serialize(jax.device_get(nn.unbox(params["params"]["encoder"]))))
