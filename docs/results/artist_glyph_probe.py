"""Probe: does the textual (glyph) diffusion model render legible single words at 24x48?

    PYTHONPATH=$PWD JAX_PLATFORMS=cpu python docs/results/artist_glyph_probe.py NAME --steps 300,1000 [--pred epsilon|sample|v_prediction]
        [--cond ids|mask|charmap] [--lr 2e-3] [--batch 16] [--ddim 10] [--text_layers 1]

Trains the textual model of configs/artist.py on single-word glyphs (seeds 0..N-1), and at each milestone samples
glyphs (DDIM) for 24 held-out single words (seeds 10_000_000 + i; same vocabulary, unseen font/size/position) from
their true layout ids, reads them with rapidocr (4x bicubic) and prints OCR F / accuracy. Also the ground truth.
cond: ids = layout ids through the char encoder only (the experiment today); mask = + the box mask as an input
channel; charmap = + a learned per-pixel character embedding (the box split into len(word) equal slots).
"""
import argparse
import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, ".")
os.makedirs("runs", exist_ok=True)   # its checkpoints and grids go to runs/ (git-ignored)
from configs.artist import get_config  # noqa: E402
from jaxmm import diffusion  # noqa: E402
from jaxmm.data import glyphs  # noqa: E402
from jaxmm.metrics.text_rendering import ocr_word_metrics  # noqa: E402
from train.experiment import fit, sample_batch  # noqa: E402
from train.tasks import artist as task  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("name")
p.add_argument("--steps", default="300,1000")
p.add_argument("--pred", default="epsilon")
p.add_argument("--cond", default="ids")
p.add_argument("--lr", type=float, default=2e-3)
p.add_argument("--batch", type=int, default=16)
p.add_argument("--ddim", type=int, default=10)
p.add_argument("--text_layers", type=int, default=1)
p.add_argument("--channels", default="16,32")
p.add_argument("--n_eval", type=int, default=24)
p.add_argument("--n_train", type=int, default=1000)
p.add_argument("--init", default="", help="continue training from this params pickle (fresh Adam state)")
p.add_argument("--start", type=int, default=0, help="the steps already behind --init")
p.add_argument("--load", default="", help="eval-only: params pickle written at a milestone")
a = p.parse_args()

c = get_config()
c.model.text_layers = a.text_layers
c.model.channels = tuple(int(x) for x in a.channels.split(","))
shape = (c.data.height, c.data.width)
cpu0 = time.process_time()
kw = dict(height=c.data.height, width=c.data.width, size_range=tuple(c.data.size_range))
train = [glyphs.single_word(i, **kw) for i in range(a.n_train)]
held = [glyphs.single_word(10_000_000 + i, **kw) for i in range(a.n_eval)]
extra = {"ids": 0, "mask": 1, "charmap": 1}[a.cond]


def as_scene(g):
    return {"image": np.zeros(shape + (3,), np.uint8), "glyph": g.glyph, "mask": glyphs.box_mask(g.boxes, shape),
            "prompt": "", "words": g.words, "boxes": g.boxes}


def charmap(g):
    """int32 [H, W]: 1 + CHARSET index of the character whose equal-width slot of its word box holds the pixel."""
    out = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    for w, (x0, y0, x1, y1) in zip(g.words, g.boxes):
        inside = (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)
        slot = np.clip(((xx - x0) / max(x1 - x0, 1e-3) * len(w)).astype(int), 0, len(w) - 1)
        ids = np.array([1 + glyphs.CHARSET.index(ch) for ch in w])[slot]
        out = np.where(inside, ids, out)
    return out


def arrays(gs):
    d = task._arrays([as_scene(g) for g in gs], c)
    d["charmap"] = np.stack([charmap(g) for g in gs])
    return d


data, data_eval = arrays(train), arrays(held)
print(f"data {time.process_time() - cpu0:.0f} CPU-s", flush=True)

import flax.linen as nn  # noqa: E402

from jaxmm.models.artist import ConditionalUNet  # noqa: E402

base = task._models(c)["textual"]


class Glyph(nn.Module):
    @nn.compact
    def __call__(self, x, t, ids, mask, cmap):
        if a.cond == "mask":
            x = jnp.concatenate([x, mask], -1)
        elif a.cond == "charmap":
            x = jnp.concatenate([x, mask, nn.Embed(len(glyphs.CHARSET) + 1, 8, name="char_embed")(cmap)], -1)
        cfg = dataclasses.replace(base.unet, in_channels=x.shape[-1])
        return ConditionalUNet(cfg, base.encoder, name="net")(x, t, ids)


model = Glyph()
sched = diffusion.Schedule(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                           prediction_type=a.pred)
ac = jnp.asarray(diffusion.alphas_cumprod(sched))
names = ("glyph", "layout_ids", "mask", "charmap")
b1 = {k: data[k][:1] for k in names}
params = model.init(jax.random.key(0), b1["glyph"], jnp.zeros((1,), jnp.int32), b1["layout_ids"], b1["mask"],
                    b1["charmap"])["params"]
print("params", sum(x.size for x in jax.tree.leaves(params)), flush=True)


def loss(p, b, k):
    return diffusion.diffusion_loss(lambda x, t: model.apply({"params": p}, x, t, b["layout_ids"], b["mask"],
                                                             b["charmap"]), a.pred, ac, b["glyph"], k)[0]


def sample(p, key):
    ids, m, cm = (jnp.asarray(data_eval[k]) for k in ("layout_ids", "mask", "charmap"))
    fn = lambda x, t: model.apply({"params": p}, x, jnp.full((x.shape[0],), t), ids, m, cm)  # noqa
    noise = jax.random.normal(key, (len(ids),) + shape + (1,))
    return np.clip(np.asarray(jax.jit(lambda x: diffusion.sample_ddim(fn, sched, x, a.ddim))(noise)), -1, 1)


targets = [g.words for g in held]


def char_sim(read):
    """mean over images of 1 - normalised Levenshtein distance between the read words (joined) and the target."""
    def lev(x, y):
        d = list(range(len(y) + 1))
        for i, cx in enumerate(x, 1):
            prev, d[0] = d[0], i
            for j, cy in enumerate(y, 1):
                prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (cx != cy))
        return d[-1]
    out = []
    for r, t in zip(read, targets):
        x, y = "".join(r), "".join(t)
        out.append(1 - lev(x, y) / max(len(x), len(y), 1))
    return float(np.mean(out))


def ocr_f(imgs, with_chars=False):
    read = task._ocr(np.repeat(imgs, 3, -1), c)
    m = ocr_word_metrics(read, targets)
    if with_chars:
        print("read:", read[:12], flush=True)
        return m["f_measure"], m["accuracy"], char_sim(read)
    return m["f_measure"], m["accuracy"]


t0 = time.process_time()
print("ground truth F / acc / char sim", ocr_f(data_eval["glyph"], True), f"({time.process_time() - t0:.0f} CPU-s)",
      flush=True)
if a.load:
    import pickle
    with open(a.load, "rb") as fh:
        params = pickle.load(fh)
    print(a.load, "F / acc / char sim", ocr_f(sample(params, jax.random.key(7)), True), flush=True)
    sys.exit()
rng = np.random.default_rng(0)
key = jax.random.key(1)
done, results = a.start, []
if a.init:
    import pickle
    with open(a.init, "rb") as fh:
        params = pickle.load(fh)
for m in (int(s) for s in a.steps.split(",")):
    key, k = jax.random.split(key)
    t0 = time.process_time()
    r = fit(loss, params, lambda s: sample_batch(data, names, rng, a.batch), m - done, a.lr, k, name=a.name,
            progress=False)
    params, done, t_train = r.params, m, time.process_time() - t0
    t0 = time.process_time()
    imgs = sample(params, jax.random.key(7))
    f, acc, cs = ocr_f(imgs, True)
    # cheap proxy: x0 error at t = 300 / 600 on the held-out glyphs (same noise for every probe)
    errs = []
    for tt in (300, 600):
        noise = jax.random.normal(jax.random.key(3), data_eval["glyph"].shape)
        t = jnp.full((a.n_eval,), tt)
        x_t = diffusion.q_sample(ac, data_eval["glyph"], t, noise)
        out = model.apply({"params": params}, x_t, t, data_eval["layout_ids"], data_eval["mask"], data_eval["charmap"])
        al = ac[tt]
        x0 = {"epsilon": (x_t - (1 - al) ** 0.5 * out) / al ** 0.5, "sample": out,
              "v_prediction": al ** 0.5 * x_t - (1 - al) ** 0.5 * out}[a.pred]
        errs.append(float(jnp.mean(jnp.abs(jnp.clip(x0, -1, 1) - data_eval["glyph"]))))
    row = dict(name=a.name, steps=m, pred=a.pred, cond=a.cond, lr=a.lr, batch=a.batch, ddim=a.ddim,
               loss_last=float(r.losses[-20:].mean()), train_cpu_s=round(t_train), eval_cpu_s=round(
                   time.process_time() - t0), ocr_f=f, ocr_acc=acc, char_sim=cs, x0_l1_t300=errs[0], x0_l1_t600=errs[1])
    print(json.dumps(row), flush=True)
    results.append(row)
    import pickle
    with open(f"runs/probe_glyph_{a.name}_{m}.pkl", "wb") as fh:
        pickle.dump(jax.tree.map(np.asarray, params), fh)
    diffusion.save_grid(np.repeat(imgs[:12], 3, -1), f"runs/probe_glyph_{a.name}_{m}.png", nrow=6,
                        labels=[" ".join(t) for t in targets[:12]], scale=3)
print(f"total {time.process_time() - cpu0:.0f} CPU-s")
