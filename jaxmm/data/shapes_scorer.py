"""The attribute scorer of the procedural shapes set (jaxmm.data.shapes): a small CNN read on each HALF of an
image, with a count head (0 = empty half), a colour head and a shape head. Trained on REAL procedural images
only; it scores generated images (attribute accuracy) and its penultimate features give a self-trained FID
(`features`; NOT Inception features, so the numbers are comparable only with each other).

    params, report = train_scorer(seed=0)                 # report: held-out real accuracy per head
    pred = predict(params, images)                         # [N, 2, 3] (count, colour, shape) per side
    feats = features(params, images)                       # [N, 2 * 128]
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmm.checks import check_rank
from jaxmm.data import shapes


class HalfScorer(nn.Module):
    """[B, H, W/2, 3] float in [-1, 1] -> (features [B, width], logits dict count / color / shape). Two stages of
    two 3x3 convs (`channels`) and a 2x2 average pool each, a Dense of `width`, three heads."""
    max_count: int = 3
    width: int = 128
    channels: tuple = (32, 64)

    @nn.compact
    def __call__(self, x):
        check_rank("x", x, 4, "[B, H, W/2, 3]")
        for ch in self.channels:
            x = nn.relu(nn.Conv(ch, (3, 3))(x))
            x = nn.relu(nn.Conv(ch, (3, 3))(x))
            x = nn.avg_pool(x, (2, 2), (2, 2))
        feats = nn.relu(nn.Dense(self.width)(x.reshape(x.shape[0], -1)))
        return feats, {"count": nn.Dense(self.max_count + 1, name="count")(feats),
                       "color": nn.Dense(len(shapes.COLORS), name="color")(feats),
                       "shape": nn.Dense(len(shapes.SHAPES), name="shape")(feats)}


def _float(images):
    x = np.asarray(images)
    return x.astype(np.float32) / 127.5 - 1 if x.dtype == np.uint8 else x.astype(np.float32)


def _half_data(n: int, seed: int, split: str, size: int):
    ds = shapes.Shapes(n, seed=seed, split=split, size=size, multi_fraction=0.5, max_count=3)
    ex = [ds[i] for i in range(n)]
    images = shapes.split_halves(np.stack([e["image"] for e in ex]))
    return images, np.concatenate([e["halves"] for e in ex])        # [2n, H, W/2, 3], [2n, 3]


def _loss(model, params, x, y):
    _, logits = model.apply({"params": params}, x)
    present = (y[:, 0] > 0).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels
    loss = ce(logits["count"], y[:, 0]).mean()
    for j, k in ((1, "color"), (2, "shape")):
        loss += jnp.sum(ce(logits[k], jnp.maximum(y[:, j], 0)) * present) / jnp.maximum(present.sum(), 1)
    return loss


def train_scorer(seed: int = 0, size: int = 32, train_images: int = 3000, eval_images: int = 500,
                 steps: int = 600, batch: int = 128, lr: float = 2e-3, noise: float = 0.1,
                 channels: tuple = (32, 64), width: int = 128):
    """Trains the scorer on real procedural images (counts up to 3, single and multi scenes; Gaussian pixel noise
    of std U(0, `noise`) as augmentation, since generated images are slightly noisy). Returns (params, report):
    report = held-out real accuracy of each head ("count" over all halves, "color"/"shape" over non-empty halves)
    and `attribute_accuracy` of the real eval images scored like generated ones (the sanity bound). `channels`,
    `width`: the HalfScorer's size (`predict` and `features` read it back from the params' shapes)."""
    model = HalfScorer(width=width, channels=tuple(channels))
    x, y = _half_data(train_images, seed, "scorer_train", size)
    params = model.init(jax.random.PRNGKey(seed), x[:1])["params"]
    tx = optax.adam(lr)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, xb, yb, key):
        xb = xb + jax.random.uniform(key, (xb.shape[0], 1, 1, 1), maxval=noise) * jax.random.normal(key, xb.shape)
        loss, g = jax.value_and_grad(lambda p: _loss(model, p, xb, yb))(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), opt, loss

    rng = np.random.default_rng(seed)
    xf = _float(x)
    for i in range(steps):
        idx = rng.integers(0, len(x), batch)
        params, opt, _ = step(params, opt, xf[idx], y[idx], jax.random.PRNGKey(i))
    ds = shapes.Shapes(eval_images, seed=seed, split="scorer_eval", size=size, multi_fraction=0.5, max_count=3)
    ex = [ds[i] for i in range(eval_images)]
    truth = np.stack([e["halves"] for e in ex])
    pred = predict(params, np.stack([e["image"] for e in ex]))
    flat_t, flat_p = truth.reshape(-1, 3), pred.reshape(-1, 3)
    present = flat_t[:, 0] > 0
    report = {"count": float(np.mean(flat_p[:, 0] == flat_t[:, 0])),
              "color": float(np.mean(flat_p[present, 1] == flat_t[present, 1])),
              "shape": float(np.mean(flat_p[present, 2] == flat_t[present, 2])),
              "attribute_accuracy": shapes.attribute_accuracy(pred, truth)["attribute_accuracy"]}
    return params, report


def _module(params) -> HalfScorer:
    """The HalfScorer whose params these are (its channels and width are the kernels' output sizes)."""
    convs = sorted((k for k in params if k.startswith("Conv_")), key=lambda k: int(k.split("_")[1]))
    return HalfScorer(width=params["Dense_0"]["kernel"].shape[-1],
                      channels=tuple(params[k]["kernel"].shape[-1] for k in convs[::2]))


@jax.jit
def _apply(params, x):
    feats, logits = _module(params).apply({"params": params}, x)
    return feats, {k: jnp.argmax(v, -1) for k, v in logits.items()}


def _run(params, images, chunk: int = 512):
    halves = shapes.split_halves(_float(images))
    outs = [_apply(params, jnp.asarray(halves[i:i + chunk])) for i in range(0, len(halves), chunk)]
    feats = np.concatenate([np.asarray(f) for f, _ in outs])
    pred = np.stack([np.concatenate([np.asarray(o[k]) for _, o in outs]) for k in ("count", "color", "shape")], -1)
    return feats.reshape(-1, 2 * feats.shape[-1]), pred.reshape(-1, 2, 3).astype(np.int32)


def predict(params, images) -> np.ndarray:
    """images [N, H, W, 3] (uint8, or float in [-1, 1]) -> int32 [N, 2, 3]: (count, colour, shape) per side; an
    empty half (count 0) gets colour and shape -1."""
    pred = _run(params, images)[1]
    empty = pred[..., 0] == 0
    pred[..., 1][empty] = -1
    pred[..., 2][empty] = -1
    return pred


def features(params, images) -> np.ndarray:
    """[N, 2 * width] penultimate features of both halves (the self-trained FID's feature space)."""
    return _run(params, images)[0]
