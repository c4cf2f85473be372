"""Toffee (arXiv 2406.09305) end to end on procedural subjects (configs/toffee.py): the DINO and CLIP stand-ins,
the Refiner and View Generator, the construction pipeline with its cost against per-subject fine-tuning, the
pipeline run again on new subjects to build ToffeeNet's training pairs (`toffee.sources`), and ToffeeNet's λ and
p tables.

Writes into the workdir through `train.report`: results.md / results.json (one section per stage), pairs.npz
(the constructed editing pairs with masks and generation pairs), toffee_pipeline.png (draft / refined / truth /
new view), toffee_dataset.png (ToffeeNet's first 8 pipeline training pairs: reference / source / mask / the
pipeline's target / the true render), toffee_lambda.png (ToffeeNet samples over λ), toffee_edit.png (editing:
source / mask / reference / true target, then ToffeeNet's edit for each (source, p)), metrics.jsonl.

Stand-ins, all labelled in the tables: subjects are rendered (jaxmm.data.subjects) at `data.size` px; "DINO" is
jaxmm.models.dino trained here by self-distillation on the training subjects; "CLIP" is a tiny contrastive
image/caption model trained here (a ViT + mean word embeddings); the text-to-image draft is the renderer's
plain-painted, blurred subject at the prompt's view and background (its geometry comes from the renderer, not
from text); Grounded-SAM is the renderer's mask. The Refiner diffuses the residual (truth − draft) and predicts
x0 (**[reconstruction]**: the paper does not publish how its Refiner uses the draft; residual diffusion after
Whang et al. 2022); the filter's thresholds are calibrated on held-out renders (`calibrate_filter`). ToffeeNet predicts x0 by default
(`toffee.prediction`; **[deviation]**: the paper fine-tunes Stable Diffusion, an ε model; at this size ε-prediction
sampled colour noise after 1,400 steps, docs/results/toffee.md). Test subjects are never seen by any trained model.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmm import diffusion
from jaxmm.checks import fail
from jaxmm.data import subjects as S
from jaxmm.diffusion.schedules import PREDICTION_TYPES
from jaxmm.models import dino as D
from jaxmm.models import toffee as T
from jaxmm.models.clip_standin import ContrastiveEncoder, contrastive_loss
from jaxmm.models.unet import UNetConfig
from jaxmm.models.vit import ViTConfig
from train.experiment import build_step, experiment, fit, sample_batch
from train.report import table

# DreamBench (PAPERS.md §7; Table 1 and the reconstruction-pair ablation of 2406.09305)
# ToffeeNet's training data (toffee.sources), as the tables name it
SOURCES = {"renderer": "renderer pairs of the training subjects", "pipeline": "the pipeline's pairs",
           "pipeline_truth": "the pipeline's pairs with the true renders"}
PUBLISHED = {"ToffeeNet DreamBench": {"DINO": 0.728, "CLIP-I": 0.817, "CLIP-T": 0.306},
             "ablation without reconstruction pairs": {"Seg-DINO": 0.803, "CLIP-T": 0.306},
             "ablation with reconstruction pairs": {"Seg-DINO": 0.818, "CLIP-T": 0.286}}


def check_config(config):
    if config.data.size % 8:
        fail("config.data.size", "a multiple of 8 (two UNet levels, DINO patch 8)", config.data.size)
    if not config.toffee.p_values or any(not 0 <= p <= 1 for p in config.toffee.p_values):
        fail("config.toffee.p_values", "a non-empty list of probabilities", tuple(config.toffee.p_values))
    if not config.toffee.seeds:
        fail("config.toffee.seeds", "a non-empty list of training seeds for ToffeeNet", tuple(config.toffee.seeds))
    if not config.toffee.lambdas:
        fail("config.toffee.lambdas", "a non-empty list of λ values", tuple(config.toffee.lambdas))
    for name, value in (("unet.refiner_prediction", config.unet.refiner_prediction),
                        ("unet.viewgen_prediction", config.unet.viewgen_prediction),
                        ("toffee.prediction", config.toffee.prediction)):
        if value not in PREDICTION_TYPES:
            fail(f"config.{name}", f"one of {PREDICTION_TYPES}", repr(value))
    sources = tuple(config.toffee.sources)
    if not sources or any(s not in SOURCES for s in sources):
        fail("config.toffee.sources", f"a non-empty list of {tuple(SOURCES)}", sources)
    if any(s != "renderer" for s in sources) and config.toffee.dataset_subjects < 1:
        fail("config.toffee.dataset_subjects", "at least 1 when a source is the pipeline's pairs",
             config.toffee.dataset_subjects)
    for name, value in (("unet.batch", config.unet.batch), ("toffee.batch", config.toffee.batch)):
        if not isinstance(value, int) or value < 1:
            fail(f"config.{name}", "a positive integer minibatch size", repr(value))
    if config.pipeline.test_subjects < 2:
        fail("config.pipeline.test_subjects", "at least 2", config.pipeline.test_subjects)


def _pm(x):  # [0, 1] images -> the models' [-1, 1]
    return jnp.asarray(x, jnp.float32) * 2 - 1


def _cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


# ------------------------------------------------------------------------------------------------- filter
def youden_threshold(pos, neg) -> dict:
    """The filter threshold that best separates good from bad pairs: keep a pair when its similarity >= t, with t
    maximising Youden's J = TPR(t) - FPR(t) = mean(pos >= t) - mean(neg >= t) (balanced accuracy - 1/2, so it does not
    depend on how many good and bad pairs were measured). pos / neg: [N] similarities of good / bad pairs. t is the
    midpoint of the gap below the best observed value (ties: the lowest). Returns {"threshold", "J", "tpr", "fpr"}."""
    pos, neg = np.asarray(pos, np.float64).ravel(), np.asarray(neg, np.float64).ravel()
    for name, x in (("pos", pos), ("neg", neg)):
        if x.size == 0 or not np.isfinite(x).all():
            fail(name, "a non-empty array of finite similarities", f"size {x.size}" if x.size == 0 else "non-finite values")
    vals = np.unique(np.concatenate([pos, neg]))
    tpr = 1 - np.searchsorted(np.sort(pos), vals, "left") / pos.size
    fpr = 1 - np.searchsorted(np.sort(neg), vals, "left") / neg.size
    k = int(np.argmax(tpr - fpr))
    t = vals[k] if k == 0 else (vals[k] + vals[k - 1]) / 2
    return {"threshold": float(t), "J": float(tpr[k] - fpr[k]), "tpr": float(tpr[k]), "fpr": float(fpr[k])}


def calibrate_filter(dino_embed, clip_encode, gallery, text_len: int) -> dict:
    """The pipeline's DINO and CLIP-T thresholds from measured similarity distributions on a calibration gallery of
    renders (`S.subject_images` of subjects no model trained on, several views each).
    DINO (CLS cosine): good pairs are two views (other pose, light, background) of one subject, bad pairs views of two
    different subjects. CLIP-T (image . text embedding): good pairs an image and its own caption, bad pairs the
    image with another subject's caption on its own background words. Each threshold is `youden_threshold` of the
    two. Returns {"dino": ..., "clip": ...}: youden_threshold's dicts plus "pos" / "neg" (mean, std, count)."""
    lab = np.asarray(gallery["subject"])
    f = np.asarray(dino_embed(gallery["image"])[0], np.float64)
    iu = np.triu_indices(len(lab), 1)
    sim, same = _cos(f[:, None], f[None])[iu], lab[iu[0]] == lab[iu[1]]
    subs, caps = gallery["subjects"], list(gallery["caption"])
    other = (lab + 1) % len(subs)      # the next subject's caption words, this image's background words
    swapped = [subs[o].caption + cap[len(subs[s].caption):] for s, o, cap in zip(lab, other, caps)]
    ids = lambda cs: np.stack([S.encode_caption(t, text_len) for t in cs])  # noqa: E731
    ci, ct = (np.asarray(a, np.float64) for a in clip_encode(gallery["image"], ids(caps)))
    _, cn = (np.asarray(a, np.float64) for a in clip_encode(gallery["image"], ids(swapped)))
    out = {}
    for name, pos, neg in (("dino", sim[same], sim[~same]), ("clip", np.sum(ci * ct, -1), np.sum(ci * cn, -1))):
        out[name] = youden_threshold(pos, neg)
        out[name].update(pos=(float(pos.mean()), float(pos.std()), pos.size),
                         neg=(float(neg.mean()), float(neg.std()), neg.size))
    return out


def filter_scores(x, subject_cls, text_ids, dino_embed, clip_encode, dino_t: float, clip_t: float):
    """The construction filter on images `x` [N, S, S, 3] in [0, 1]: (DINO cosine of each image's CLS feature to the
    subject image's `subject_cls` [1, D], keep) with keep = DINO >= dino_t and CLIP-T (image . caption `text_ids`)
    >= clip_t."""
    d = _cos(np.asarray(dino_embed(x)[0]), subject_cls)
    ci, ct = (np.asarray(a) for a in clip_encode(x, text_ids))
    return d, (d >= dino_t) & (np.sum(ci * ct, -1) >= clip_t)


# ------------------------------------------------------------------------------------------------- encoders
def dino_pairs(rng, subject, batch: int):
    """Indices (j, j2) of `batch` training pairs: j uniform over the images, j2 another view (another pose, light
    and background) of the same subject, for subject ids `subject` [N] (every subject with >= 2 views)."""
    j = rng.integers(0, len(subject), batch)
    j2 = np.array([rng.choice(np.flatnonzero((subject == subject[i]) & (np.arange(len(subject)) != i))) for i in j])
    return j, j2


def train_dino(c, data, key, report):
    """DINO self-distillation of `D.DinoStudent` on the training subjects (`data`: subject_images' dict); the EMA
    teacher rides beside the student in `fit`'s `aux`. Returns (embed(images) -> (pooled, patch tokens) of the
    teacher's backbone, stats, the backbone module, the student's initial params).

    Why not plain DINO (measured, docs/results/toffee.md): crops of one image share its background, which fills most
    of a 32 px frame, so single-image DINO learned the background: 1-NN subject identification on held-out subjects
    fell from 0.039 (random init) to below chance as it trained. So, our choices for a subject encoder (not DINO's
    recipe): the teacher's two global crops come from two different views of one subject (another pose, light and
    background: `dino_pairs`) and every view's background is replaced by a random procedural one (the renderer's
    mask), so what the two crops share is the subject. Without the background shortcut the tiny DINO collapsed
    (centring: uniform or one-prototype teachers); DINOv2's Sinkhorn-Knopp teacher targets and KoLeo regulariser
    (weight c.dino.koleo on the student's global CLS features) keep it spread."""
    images, masks = data["image"], data["mask"].astype(np.float32)[..., None]
    cfg = D.DinoConfig(image_size=c.data.size, patch_size=8, d_model=c.dino.width, num_layers=c.dino.layers,
                       num_heads=4)
    model = D.DinoStudent(cfg, num_prototypes=c.dino.prototypes)
    params = model.init(key, jnp.zeros((1, c.data.size, c.data.size, 3)))["params"]
    run_views = lambda p, views: jax.vmap(lambda v: model.apply({"params": p}, v))(views)  # noqa: E731
    nl = c.dino.local_crops

    def loss_fn(p, batch, key, teacher):
        ka, kb = jax.random.split(key)
        ga, la = D.multi_crop(ka, _pm(batch["a"]), num_local=nl // 2, local_size=c.data.size // 2)
        gb, lb = D.multi_crop(kb, _pm(batch["b"]), num_local=nl - nl // 2, local_size=c.data.size // 2)
        g = jnp.stack([ga[0], gb[1]])              # the teacher's two global views: two views of one subject
        t_logits = run_views(teacher["params"], g)[0]
        s_global, s_out = run_views(p, g)
        s = jnp.concatenate([s_global, run_views(p, jnp.concatenate([la, lb]))[0]])
        loss = D.cross_view_loss(s, D.sinkhorn_knopp(t_logits, teacher_temp=c.dino.teacher_temp))
        koleo = sum(D.koleo_loss(s_out["pooler_output"][v]) for v in range(2)) / 2
        return loss + c.dino.koleo * koleo, None

    def update_teacher(teacher, p, _, batch):
        return {"params": D.ema(teacher["params"], p, c.dino.ema)}

    rng = np.random.default_rng(c.seed)
    brng = np.random.default_rng(c.seed + 4)
    bank = np.stack([S.background_image(S.random_background(brng), c.data.size) for _ in range(256)])

    def batch(_):
        j, j2 = dino_pairs(rng, data["subject"], c.dino.batch)
        swap = lambda i: masks[i] * images[i] + (1 - masks[i]) * bank[rng.integers(0, len(bank), len(i))]  # noqa: E731
        return {"a": swap(j).astype(np.float32), "b": swap(j2).astype(np.float32)}

    out = fit(loss_fn, params, batch, c.dino.steps, optax.adamw(c.dino.lr, weight_decay=0.04), key,
              aux={"params": params}, update_aux=update_teacher, report=report, name="dino")
    backbone = D.DinoViT(cfg)
    tp = out.aux["params"]["backbone"]   # the teacher is the network DINO keeps

    @jax.jit
    def embed(imgs):
        out = backbone.apply({"params": tp}, _pm(imgs))
        return out["pooler_output"], out["patch_tokens"]
    loss = float(out.losses[-1]) if len(out.losses) else float("nan")
    return embed, {"dino_loss": loss, "dino_seconds": out.seconds}, backbone, params


def knn_accuracy(embed_fn, imgs, labels) -> float:
    """Leave-one-out 1-nearest-neighbour (cosine) subject identification: each image's nearest other image (another
    view, light and background) is of its subject. Chance: (views - 1) / (images - 1)."""
    a = np.asarray(embed_fn(imgs)[0], np.float64)
    sim = _cos(a[:, None], a[None]) - 10 * np.eye(len(a))
    return float(np.mean(labels[sim.argmax(1)] == labels))


def train_clip(c, images, ids, key, report):
    """The CLIP stand-in (`ContrastiveEncoder`: ViT image tower, bag-of-words captions, temperature 0.07) trained
    contrastively on (image [0, 1], caption ids) pairs. Returns (encode(images, ids) -> (image, text embeddings),
    stats with the mean loss of the last 20 steps and the steady-state seconds)."""
    model = ContrastiveEncoder(vit=ViTConfig(image_size=c.data.size, patch_size=8, d_model=64, num_layers=2,
                                             num_heads=4, mlp_dim=128, projection_dim=64),
                               vocab_size=len(S.VOCAB), width=64, embed_dim=64, temperature=0.07)
    params = model.init(key, _pm(images[:1]), ids[:1])["params"]
    rng = np.random.default_rng(c.seed + 1)

    def loss_fn(p, batch, key):
        return contrastive_loss(*model.apply({"params": p}, _pm(batch["image"]), batch["ids"]))

    def batch(_):
        j = rng.integers(0, len(images), c.clip.batch)
        return {"image": images[j], "ids": ids[j]}

    out = fit(loss_fn, params, batch, c.clip.steps, optax.adamw(c.clip.lr, weight_decay=0.0), key, report=report,
              name="clip")

    @jax.jit
    def encode(imgs, text_ids):
        return model.apply({"params": out.params}, _pm(imgs), text_ids)[:2]
    loss = float(np.mean(out.losses[-20:])) if len(out.losses) else float("nan")
    return encode, {"clip_loss": loss, "clip_seconds": out.seconds}


# ------------------------------------------------------------------------------------------------- diffusion models
COND = 5   # condition channels of every model: ToffeeNet's [source, mask, depth]; Refiner / View Generator use 3


def _pad(cond3):
    """A 3-channel condition image padded with zero channels to COND (one architecture for all three models, so
    one compiled train step and one compiled sampler serve them all)."""
    cond3 = np.asarray(cond3, np.float32)
    return np.concatenate([cond3, np.zeros(cond3.shape[:3] + (COND - 3,), np.float32)], -1)


def _noview(n):
    return np.zeros((n, 4), np.float32)   # the view token of models without a target view


def _unet(c):
    """The one SubjectUNet architecture of ToffeeNet, the Refiner and the View Generator. Attention (self + cross to
    the subject / text / view context) at the half-resolution level and the mid block only, as SD's UNets skip it at
    their finest level: at 32 px, attention over all 1024 full-resolution positions made a batch-16 train step 5.2
    CPU s against 0.67 s without it, and a 10-step guided sample of 4 images 11.6 s against 1.2 s."""
    w = c.unet.width
    u = UNetConfig(in_channels=3 + COND, out_channels=3, block_out_channels=(w, 2 * w),
                   down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                   num_attention_heads=4, cross_attention_dim=c.unet.context_dim, norm_num_groups=8)
    return T.SubjectUNet(T.SubjectUNetConfig(unet=u, dino_dim=c.dino.width, vocab_size=len(S.VOCAB),
                                             text_len=c.data.text_len, view_token=True))


# clip_sample: pixel-space DDIM clips its x0 prediction to [-1, 1] (diffusers' default for pixel models). Without it
# the first trailing step (alpha_bar = 2.4e-9 at t = 999 under squaredcos_cap_v2) multiplies the ε error by
# 1/sqrt(alpha_bar) = 2e4, and every sample came out as saturated noise (measured: the λ / p grids of the first run).
SCHEDULE = diffusion.Schedule(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing", clip_sample=True)


_COMPILED: dict = {}   # jitted samplers and training steps per architecture: models of one shape compile once


def _diffusion_loss(net, p_drop: float, schedule):
    """loss(params, batch, key): the squared error of a SubjectUNet's `schedule.prediction_type` output (ε or x0)
    with condition dropout p_drop on subject and text, t ~ U{0 .. T - 1}."""
    ac = jnp.asarray(diffusion.alphas_cumprod(schedule))

    def loss_fn(p, b, key):
        k1, k2, k3 = jax.random.split(key, 3)
        x0 = _pm(b["x0"])
        us, ut = T.drop_flags(k1, x0.shape[0], p_drop, p_drop)
        t = jax.random.randint(k2, (x0.shape[0],), 0, schedule.num_train_timesteps)
        noise = jax.random.normal(k3, x0.shape, x0.dtype)
        out = net.apply({"params": p}, diffusion.q_sample(ac, x0, t, noise), t, b["cond"], b["tokens"], b["text"],
                        b.get("view"), us, ut)
        return jnp.mean((out - diffusion.prediction_target(schedule.prediction_type, ac, x0, t, noise)) ** 2)
    return loss_fn


def train_diffusion(c, net, pool, steps, key, report, name, p_drop=0.1, schedule=None, batch=None):
    """pool: dict of numpy arrays x0 ([0, 1] images), cond, tokens, text, (view); random minibatches of `batch`
    (c.unet.batch when None) of it, AdamW
    (no decay) through `train.experiment.fit` with one `build_step` per (architecture, lr, p_drop, schedule), kept
    here: the View Generator, the baseline and every ToffeeNet compile one step. schedule: SCHEDULE when None (the
    Refiner's predicts x0). Returns (params, stats) with stats' seconds (wall) and cpu_seconds (process CPU time,
    all threads) counted after the first (compiling) step."""
    schedule = SCHEDULE if schedule is None else schedule
    batch = c.unet.batch if batch is None else batch
    ex = {k: v[:1] for k, v in pool.items()}
    # eager init: jax.jit(net.init) spent ~150 s compiling the per-parameter initialisers; eagerly each initialiser
    # op compiles once per shape (~35 CPU s for the first model, ~0.5 s for every later one)
    params = net.init(key, _pm(ex["x0"]), jnp.zeros(1, jnp.int32), ex["cond"], ex["tokens"], ex["text"],
                      ex.get("view"))["params"]
    rng = np.random.default_rng(c.seed + 7)
    names = tuple(pool)
    step_key = ("step", net.config, c.unet.lr, p_drop, schedule)   # determines the whole step: loss maths, optimizer
    if step_key not in _COMPILED:
        _COMPILED[step_key] = build_step(_diffusion_loss(net, p_drop, schedule), params,
                                         optax.adamw(c.unet.lr, weight_decay=0.0))
    seen = set()   # the minibatch sizes drawn, reported (`{name}_batch`)

    def batches(_):
        b = sample_batch(pool, names, rng, batch)
        seen.add(len(b["x0"]))
        return b
    out = fit(_COMPILED[step_key], params, batches, steps, None, key, report=report, name=name)
    return out.params, {f"{name}_loss": float(np.mean(out.losses[-20:])), f"{name}_seconds": out.seconds,
                        f"{name}_cpu_seconds": out.cpu_seconds, f"{name}_steps": steps,
                        f"{name}_batch": sorted(seen)[0] if len(seen) == 1 else sorted(seen)}


def make_sampler(net, params, steps, schedule=None):
    """sample(key, cond, tokens, text, view, lam) -> [B, H, W, 3] in [0, 1]: DDIM with λ guidance (schedule: SCHEDULE
    when None)."""
    schedule = SCHEDULE if schedule is None else schedule
    cache_key = ("sample", net.config, steps, schedule)
    if cache_key not in _COMPILED:
        @jax.jit
        def sample(params, key, cond, tokens, text, view, lam):
            def fn(x, t, us, ut):
                rep = lambda a: None if a is None else jnp.concatenate([a, a, a])  # noqa: E731
                return net.apply({"params": params}, x, t, rep(cond), rep(tokens), rep(text), rep(view), us, ut)
            x = jax.random.normal(key, cond.shape[:3] + (3,))
            out = diffusion.sample_ddim(T.lambda_guidance(fn, lam, 1.0), schedule, x, steps)
            return (jnp.clip(out, -1, 1) + 1) / 2
        _COMPILED[cache_key] = sample
    compiled = _COMPILED[cache_key]
    return lambda *args: compiled(params, *args)


def held_out_subjects(c) -> list:
    """The held-out subjects of the pipeline and of ToffeeNet's evaluation (never seen in training)."""
    trng = np.random.default_rng(c.seed + 1000)
    return [S.random_subject(trng) for _ in range(c.pipeline.test_subjects)]


def eval_sets(c, test_subs) -> tuple[list, list]:
    """ToffeeNet's held-out examples: (generation, editing), `toffee.eval_per_subject` of each per test subject."""
    eval_rng = np.random.default_rng(c.seed + 77)
    gen = [S.toffee_example(s, S.random_subject(eval_rng), eval_rng, c.data.size, kind="generation")
           for s in test_subs for _ in range(c.toffee.eval_per_subject)]
    edit = [S.toffee_example(s, S.random_subject(eval_rng), eval_rng, c.data.size, kind="editing")
            for s in test_subs for _ in range(c.toffee.eval_per_subject)]
    return gen, edit


def pixel_mse(samples, exs, masked: bool = False) -> float:
    """Mean squared error of [0, 1] images to the examples' true target renders; inside each edit mask when masked
    (the mean over examples of the per-example masked mean)."""
    tg = np.stack([e["target"] for e in exs])
    if not masked:
        return float(np.mean((samples - tg) ** 2))
    m = np.stack([e["mask"] for e in exs])[..., None]
    return float(np.mean(np.sum((samples - tg) ** 2 * m, (1, 2, 3)) / np.maximum(3 * m.sum((1, 2, 3)), 1)))


def pipeline_examples(built: dict, true_renders: bool = False) -> list[dict]:
    """ToffeeNet training examples (`jaxmm.data.subjects.toffee_example`'s keys) from one subject's construction
    pipeline output (`run`'s `construct`): per prompt an editing pair whose target is the refined image and a
    generation pair whose target is the View Generator's new view, both with the subject image as reference; only the
    pairs the filter kept (the generation pair by the new view's own filter verdict); editing sources and masks from
    `jaxmm.data.subjects.editing_source`. Depth: the renderer's depth of the target's view (the depth estimator
    stand-in). true_renders: the same pairs (same prompts, views, kept set) with the renderer's true images in place
    of the pipeline's: the control that separates the pipeline's image quality from everything else."""
    ref, out = built["subject"]["image"], []
    for i, cap in enumerate(built["caps"]):
        truth, src, new = built["truth"][i], built["source"][i], built["new_truth"][i]
        if built["scores"][1][i]:
            tgt = truth["image"] if true_renders else built["refined"][i]
            source, m = S.editing_source(tgt, truth, src)
            out.append({"target": tgt, "reference": ref, "source": source, "mask": m,
                        "depth": S.depth_map(truth["depth"]), "caption": cap})
        if built["new_view_scores"][1][i]:
            tgt = new["image"] if true_renders else built["new_view"][i]
            out.append({"target": tgt, "reference": ref, "source": np.zeros_like(tgt),
                        "mask": np.zeros(tgt.shape[:2], np.float32), "depth": S.depth_map(new["depth"]),
                        "caption": cap})
    return out


def residual_encode(target, draft, scale: float):
    """**[reconstruction]** (see the module docstring). The Refiner's diffusion variable: the detail the draft lacks, (target - draft) in the models' [-1, 1] units
    divided by `scale`, in the pools' [0, 1] convention (train_diffusion maps it to [-1, 1]). [B, H, W, 3] images in
    [0, 1]."""
    return ((np.asarray(target, np.float32) - draft) * 2 / scale + 1) / 2


def residual_decode(sample, draft, scale: float):
    """Inverse of `residual_encode`: draft + the sampled residual, clipped to [0, 1]. A Refiner that samples a zero
    residual (0.5 everywhere) returns the draft unchanged."""
    return np.clip(np.asarray(draft, np.float32) + (np.asarray(sample, np.float32) * 2 - 1) * scale / 2, 0, 1)


def _ids(captions, c):
    return np.stack([S.encode_caption(t, c.data.text_len) for t in captions])


# ------------------------------------------------------------------------------------------------- experiment
@experiment("toffee.run", check=check_config)
def run(config, report) -> dict:
    c, t_start = config, time.time()
    key = jax.random.key(c.seed)
    size = c.data.size
    data = S.subject_images(c.data.train_subjects, c.data.views, seed=c.seed, size=size)
    train_subs, test_subs = data["subjects"], held_out_subjects(c)
    summary: dict = {}

    # 1. encoders ------------------------------------------------------------------------------------------
    key, k = jax.random.split(key)
    dino_embed, st, backbone, init_params = train_dino(c, data, k, report)
    summary.update(st)
    gallery = S.subject_images(c.pipeline.test_subjects, 4, seed=c.seed + 2000, size=size)
    idgal = S.subject_images(c.dino.eval_subjects, 4, seed=c.seed + 3000, size=size)   # held-out identity check
    rand_embed = jax.jit(lambda im: (D.DinoViT(backbone.config).apply({"params": init_params["backbone"]}, _pm(im))
                                     ["pooler_output"], None))
    acc = knn_accuracy(dino_embed, idgal["image"], idgal["subject"])
    acc0 = knn_accuracy(rand_embed, idgal["image"], idgal["subject"])
    chance = 3 / (len(idgal["subject"]) - 1)
    key, k = jax.random.split(key)
    clip_encode, st = train_clip(c, data["image"], _ids(data["caption"], c), k, report)
    summary.update(st)
    gi, gt = (np.asarray(a) for a in clip_encode(gallery["image"], _ids(gallery["caption"], c)))
    clip_r1 = float(np.mean((gi @ gt.T).argmax(1) == np.arange(len(gi))))
    summary.update(dino_knn=acc, dino_knn_random_init=acc0, dino_knn_chance=chance, clip_retrieval_r1=clip_r1)
    # the filter's thresholds, calibrated on the identity gallery (held-out subjects, not the pipeline's)
    cal = calibrate_filter(dino_embed, clip_encode, idgal, c.data.text_len)
    dino_t = cal["dino"]["threshold"] if c.pipeline.dino_threshold is None else c.pipeline.dino_threshold
    clip_t = cal["clip"]["threshold"] if c.pipeline.clip_threshold is None else c.pipeline.clip_threshold
    summary.update(dino_threshold=dino_t, clip_threshold=clip_t,
                   **{f"calib_{k}_{q}": v for k, d in cal.items() for q, v in d.items() if q != "threshold"})
    report.section(
        "## Encoders (self-trained stand-ins)\n\n"
        + table(["encoder", "check on held-out subjects", "value", "chance / untrained"],
                [["DINO stand-in (self-distillation, " f"{c.dino.steps} steps)",
                  f"1-NN subject id, leave-one-out over {c.dino.eval_subjects} subjects x 4 views", f"{acc:.3f}",
                  f"chance {chance:.3f}, random-init ViT {acc0:.3f}"],
                 ["CLIP stand-in (contrastive, " f"{c.clip.steps} steps)", "image->caption R@1 among "
                  f"{len(gi)}", f"{clip_r1:.3f}", f"chance {1 / len(gi):.3f}"]])
        + "\n\n### Filter thresholds (calibrated: max TPR - FPR on held-out renders)\n\n"
        + table(["filter", "good pairs: mean ± std (n)", "bad pairs: mean ± std (n)", "threshold", "TPR", "FPR"],
                [[name, "%.3f ± %.3f (%d)" % d["pos"], "%.3f ± %.3f (%d)" % d["neg"], f"{d['threshold']:.3f}",
                  f"{d['tpr']:.2f}", f"{d['fpr']:.2f}"]
                 for name, d in (("DINO: same subject / other subject", cal["dino"]),
                                 ("CLIP-T: own caption / other subject's caption", cal["clip"]))]),
        dino_knn=acc, clip_r1=clip_r1)

    def tokens_of(imgs):
        return np.asarray(dino_embed(imgs)[1])

    # 2. Refiner and View Generator --------------------------------------------------------------------------
    prng = np.random.default_rng(c.seed + 3)
    ref_pool, vg_pool = {k: [] for k in ("x0", "cond", "ref", "cap")}, {k: [] for k in ("x0", "cond", "view", "cap")}
    for _ in range(c.unet.pool):
        s = train_subs[prng.integers(len(train_subs))]
        v, bg = S.random_view(prng), S.random_background(prng)
        tgt = S.render(s, v, bg, size)
        ref_pool["x0"].append(tgt["image"])
        ref_pool["cond"].append(S.draft(s, v, bg, size)["image"])
        ref_pool["ref"].append(S.render(s, S.random_view(prng), S.random_background(prng), size)["image"])
        ref_pool["cap"].append(f"{s.caption} {bg.caption}")
        v2 = S.random_view(prng)
        vg_pool["cond"].append(tgt["image"])
        vg_pool["x0"].append(S.render(s, v2, bg, size)["image"])
        vg_pool["view"].append(np.asarray(T.view_features(v2.azimuth, v2.elevation)))
        vg_pool["cap"].append(ref_pool["cap"][-1])
    # the Refiner diffuses the residual target - draft (scaled to r_scale = refiner_residual_std of its std) and
    # predicts x0 (docs/results/toffee.md, "The Refiner")
    truth_r, drafts_r = np.stack(ref_pool["x0"]), np.stack(ref_pool["cond"])
    r_scale = c.unet.refiner_residual_std * float(np.std(2 * (truth_r - drafts_r)))
    ref_pool = {"x0": residual_encode(truth_r, drafts_r, r_scale), "cond": _pad(_pm(drafts_r)),
                "tokens": tokens_of(np.stack(ref_pool["ref"])), "text": _ids(ref_pool["cap"], c),
                "view": _noview(len(ref_pool["x0"]))}
    ref_schedule = dataclasses.replace(SCHEDULE, prediction_type=c.unet.refiner_prediction)
    vg_schedule = dataclasses.replace(SCHEDULE, prediction_type=c.unet.viewgen_prediction)
    vg_pool = {"x0": np.stack(vg_pool["x0"]), "cond": _pad(_pm(np.stack(vg_pool["cond"]))),
               "tokens": tokens_of(np.stack(vg_pool["cond"])),
               "text": _ids(vg_pool["cap"], c), "view": np.stack(vg_pool["view"])}
    refiner = viewgen = _unet(c)
    key, k1, k2 = jax.random.split(key, 3)
    ref_params, st = train_diffusion(c, refiner, ref_pool, c.unet.refiner_steps, k1, report, "refiner",
                                     schedule=ref_schedule)
    summary.update(st)
    vg_params, st = train_diffusion(c, viewgen, vg_pool, c.unet.viewgen_steps, k2, report, "viewgen",
                                    schedule=vg_schedule)
    summary.update(st)

    # 3. construction pipeline on held-out subjects ------------------------------------------------------------
    ref_sample = make_sampler(refiner, ref_params, c.sample.refiner_steps, ref_schedule)
    vg_sample = make_sampler(viewgen, vg_params, c.sample.steps, vg_schedule)
    # the Refiner's one-step estimate: a single DDIM step from pure noise returns the x0 prediction at t = T, which
    # for an x0-predicting model trained on MSE approximates the posterior mean E[residual | draft, subject, text]
    # (the MSE-optimal refinement; a sample adds the spread of plausible details). Scored beside the sampled
    # Refiner, outside the timed pipeline, which uses the sample (c.sample.refiner_steps)
    ref_mean = make_sampler(refiner, ref_params, 1, ref_schedule)
    n = c.pipeline.pairs_per_subject
    pairs = {"edit_source": [], "edit_mask": [], "edit_target": [], "edit_reference": [], "gen_reference": [],
             "gen_caption": [], "gen_target": [], "kept": [], "gen_kept": []}
    quality: dict = {}   # per kind (draft, refined, refined_mean, truth): MSE and masked MSE to the truth, DINO and
    # Seg-DINO to the subject image, kept by the filter
    grey = lambda x, m: x * m[..., None] + 0.5 * (1 - m[..., None])   # noqa: E731   outside the mask grey
    show = []
    # compile once outside the timed region (the cost is steady-state throughput)
    zeros = np.zeros((n, size, size, 3), np.float32)
    ref_sample(jax.random.key(0), _pad(zeros), tokens_of(zeros), _ids(["a"] * n, c), _noview(n), 1.0).block_until_ready()
    tokens_of(zeros[:1]), clip_encode(zeros, _ids(["a"] * n, c))   # the encoders at the batch sizes used below

    def construct(s, srng, key, n):
        """The construction pipeline on one subject, no per-subject tuning: the subject image (one render) -> n
        drafts at the prompts' views and backgrounds -> Refiner (the subject's DINO tokens) -> View Generator (a new
        view of each refined image) -> masks from the renderer -> the filter. Returns the images, the renders they
        stand for (for scoring and for the true-render control), the filter's verdicts and the timed seconds (wall,
        CPU) from the subject's DINO tokens to the filter."""
        subject_r = S.render(s, S.random_view(srng), S.random_background(srng), size)
        views = [S.random_view(srng) for _ in range(n)]
        bgs = [S.random_background(srng) for _ in range(n)]
        caps = [f"{s.caption} {b.caption}" for b in bgs]
        drafts = np.stack([S.draft(s, v, b, size)["image"] for v, b in zip(views, bgs)])
        truth = [S.render(s, v, b, size) for v, b in zip(views, bgs)]
        v2 = [S.random_view(srng) for _ in range(n)]
        t0, c0 = time.time(), time.process_time()
        subj_cls, subj_tok = (np.asarray(a) for a in dino_embed(subject_r["image"][None]))
        tok = np.repeat(subj_tok, n, 0)
        k1, k2 = jax.random.split(key)
        refined = residual_decode(ref_sample(k1, _pad(_pm(drafts)), tok, _ids(caps, c), _noview(n),
                                             c.sample.refiner_lambda), drafts, r_scale)
        new_view = np.asarray(vg_sample(k2, _pad(_pm(refined)), tokens_of(refined), _ids(caps, c),
                                        np.stack([np.asarray(T.view_features(v.azimuth, v.elevation)) for v in v2]),
                                        1.0))
        masks = np.stack([t["mask"] for t in truth])        # the renderer's segmentation (Grounded-SAM stand-in)
        scores = filter_scores(refined, subj_cls, _ids(caps, c), dino_embed, clip_encode, dino_t, clip_t)
        new_view_scores = filter_scores(new_view, subj_cls, _ids(caps, c), dino_embed, clip_encode, dino_t, clip_t)
        seconds = (time.time() - t0, time.process_time() - c0)
        others = [S.random_subject(srng) for _ in range(n)]
        src = [S.render(o, v, b, size) for o, v, b in zip(others, views, bgs)]
        return dict(subject=subject_r, subj_cls=subj_cls, tok=tok, caps=caps, drafts=drafts, truth=truth,
                    refined=refined, new_view=new_view, masks=masks, scores=scores,
                    new_view_scores=new_view_scores, source=src, seconds=seconds,
                    k1=k1, new_truth=[S.render(s, v, b, size) for v, b in zip(v2, bgs)])

    t_pipe = cpu_pipe = 0.0
    for si, s in enumerate(test_subs):
        key, k = jax.random.split(key)
        b = construct(s, np.random.default_rng(c.seed + 5000 + si), k, n)
        caps, drafts, refined, masks, new_view = b["caps"], b["drafts"], b["refined"], b["masks"], b["new_view"]
        subject_img, subj_cls, tok, k1 = b["subject"]["image"], b["subj_cls"], b["tok"], b["k1"]
        t_pipe, cpu_pipe = t_pipe + b["seconds"][0], cpu_pipe + b["seconds"][1]
        edits = [S.editing_source(x, t, o) for x, t, o in zip(refined, b["truth"], b["source"])]
        pairs["edit_source"].append(np.stack([e[0] for e in edits]))
        pairs["edit_mask"].append(np.stack([e[1] for e in edits]).astype(bool))
        pairs["edit_target"].append(refined)
        pairs["edit_reference"].append(np.repeat(subject_img[None], n, 0))
        pairs["gen_reference"].append(np.repeat(subject_img[None], n, 0))
        pairs["gen_caption"] += caps
        pairs["gen_target"].append(new_view)
        pairs["kept"].append(b["scores"][1])
        pairs["gen_kept"].append(b["new_view_scores"][1])
        gt_img = np.stack([t["image"] for t in b["truth"]])
        subj_fg = np.asarray(dino_embed(grey(subject_img, b["subject"]["mask"])[None])[0])
        # (the sample's noise key: at t = T the x0 prediction barely depends on it)
        refined_mean = residual_decode(ref_mean(k1, _pad(_pm(drafts)), tok, _ids(caps, c), _noview(n),
                                                c.sample.refiner_lambda), drafts, r_scale)
        for kind, x in (("draft", drafts), ("refined", refined), ("refined_mean", refined_mean), ("truth", gt_img)):
            # the refined images' scores are the timed filter's own (computed once, above)
            d, kept = b["scores"] if kind == "refined" else filter_scores(x, subj_cls, _ids(caps, c), dino_embed,
                                                                           clip_encode, dino_t, clip_t)
            for name, v in (("mse", np.mean((x - gt_img) ** 2, (1, 2, 3))),
                            ("fg_mse", np.sum((x - gt_img) ** 2 * masks[..., None], (1, 2, 3))
                             / (3 * masks.sum((1, 2)))),
                            ("dino", d), ("segdino", _cos(np.asarray(dino_embed(grey(x, masks))[0]), subj_fg)),
                            ("kept", kept)):
                quality.setdefault(f"{name}_{kind}", []).append(v)
        # does the Refiner's change point at the missing detail? cosine of (refined - draft) and (truth - draft)
        for kind, x in (("refined", refined), ("refined_mean", refined_mean)):
            quality.setdefault(f"alignment_{kind}", []).append(
                _cos((x - drafts).reshape(n, -1), (gt_img - drafts).reshape(n, -1)))
        if si < 4:
            show += [drafts[0], refined[0], gt_img[0], new_view[0]]
    out = {k: (np.concatenate(v) if k != "gen_caption" else np.array(v)) for k, v in pairs.items()}
    np.savez_compressed(report.path("pairs.npz"), **out)
    diffusion.save_grid(np.stack(show) * 2 - 1, report.path("toffee_pipeline.png"), nrow=4)
    total = len(test_subs) * n
    kept = int(out["kept"].sum())
    q = {k: float(np.mean(np.concatenate(v))) for k, v in quality.items()}
    summary.update(pipeline_pairs=total, pipeline_kept=kept, pipeline_seconds=t_pipe,
                   pipeline_pairs_per_second=2 * total / t_pipe, **q)

    # per-subject fine-tuning baseline (DreamBooth-style): tune a text-conditioned generator on one subject's views
    bs = test_subs[0]
    brng = np.random.default_rng(c.seed + 9)
    bviews = [S.render(bs, S.random_view(brng), S.random_background(brng), size) for _ in range(c.baseline.images)]
    bpool = {"x0": np.stack([r["image"] for r in bviews]), "cond": np.zeros((len(bviews), size, size, COND), np.float32),
             "view": _noview(len(bviews)),
             "tokens": np.zeros((len(bviews), (size // 8) ** 2, c.dino.width), np.float32),
             "text": _ids([bs.caption] * len(bviews), c)}
    key, k = jax.random.split(key)
    base_params, st = train_diffusion(c, refiner, bpool, c.baseline.steps, k, report, "baseline")
    # the tuned model samples with the pipeline's UNet and step count (the same compiled sampler)
    t0, c0 = time.time(), time.process_time()
    make_sampler(refiner, base_params, c.sample.steps)(
        k, bpool["cond"][:1].repeat(n, 0), bpool["tokens"][:1].repeat(n, 0), bpool["text"][:1].repeat(n, 0),
        _noview(n), 1.0).block_until_ready()
    t_base_sample, cpu_base_sample = time.time() - t0, time.process_time() - c0
    tune, cpu_tune = st["baseline_seconds"], st["baseline_cpu_seconds"]
    per_pair_base, cpu_pair_base = (tune + t_base_sample) / n, (cpu_tune + cpu_base_sample) / n
    per_pair_ours, cpu_pair_ours = t_pipe / total, cpu_pipe / total
    summary.update(baseline_tune_seconds=tune, baseline_seconds_per_pair=per_pair_base,
                   pipeline_seconds_per_pair=per_pair_ours, baseline_cpu_seconds_per_pair=cpu_pair_base,
                   pipeline_cpu_seconds_per_pair=cpu_pair_ours, pipeline_cpu_seconds=cpu_pipe)
    report.section(
        "## Construction pipeline (held-out subjects)\n\n"
        + table(["quantity", "value"], [
            ["subjects x pairs", f"{len(test_subs)} x {n}"],
            ["pairs written (editing with masks + generation)", f"{total} + {total}"],
            ["kept by DINO >= %.3f and CLIP-T >= %.3f" % (dino_t, clip_t),
             f"{kept} / {total}"],
            *[[f"{label} (draft / refined / one-step mean / truth)", " / ".join(
                f"{q[f'{key}_{kind}']:{fmt}}" for kind in ("draft", "refined", "refined_mean", "truth"))]
              for label, key, fmt in (("MSE to the true render", "mse", ".4f"),
                                      ("MSE inside the subject's mask", "fg_mse", ".4f"),
                                      ("DINO to the subject image", "dino", ".3f"),
                                      ("Seg-DINO to the subject (both masked)", "segdino", ".3f"),
                                      ("pass rate of the filter", "kept", ".2f"))],
            ["cosine of (refined - draft) and (truth - draft): sample / one-step mean",
             f"{q['alignment_refined']:.3f} / {q['alignment_refined_mean']:.3f}"],
            ["pipeline seconds (sampling, steady state)", f"{t_pipe:.2f}"],
            ["pairs / second", f"{2 * total / t_pipe:.2f}"]])
        + "\n\n### Cost per pair against per-subject fine-tuning\n\n"
        + table(["method", "seconds per subject (wall)", "seconds per pair (wall)", "CPU seconds per pair",
                 "one-off training (CPU s)"], [
            ["Toffee pipeline (Refiner + View Generator)", f"{t_pipe / len(test_subs):.2f}", f"{per_pair_ours:.3f}",
             f"{cpu_pair_ours:.3f}", f"{summary['refiner_cpu_seconds'] + summary['viewgen_cpu_seconds']:.0f} (once)"],
            [f"per-subject fine-tuning ({c.baseline.steps} steps on {c.baseline.images} views, then {n} samples)",
             f"{tune + t_base_sample:.2f}", f"{per_pair_base:.3f}", f"{cpu_pair_base:.3f}", "none"]]),
        pipeline=summary)

    # 4. ToffeeNet: λ and p tables --------------------------------------------------------------------------
    gen_eval, edit_eval = eval_sets(c, test_subs)

    def cond_of(exs):
        """[B, H, W, 5]: source in [-1, 1] (0 for generation), edit mask {0, 1}, depth map [0, 1]."""
        edit = np.array([e["mask"].any() for e in exs])[:, None, None, None]
        src = np.where(edit, np.asarray(_pm(np.stack([e["source"] for e in exs]))), 0.0)
        return np.concatenate([src, np.stack([e["mask"] for e in exs])[..., None],
                               np.stack([e["depth"] for e in exs])[..., None]], -1).astype(np.float32)

    def score(samples, exs, masked=False):
        """The encoders' scores, and the pixel MSE to the true target render (no encoder: the renderer knows the
        answer), inside the edit mask when masked."""
        refs = np.stack([e["reference"] for e in exs])
        caps = _ids([e["caption"] for e in exs], c)
        if masked:   # Seg-DINO: the edited region only (outside the mask grey) against the subject in that region
            m = np.stack([e["mask"] for e in exs])[..., None]
            tg = np.stack([e["target"] for e in exs])
            return {"Seg-DINO": float(_cos(np.asarray(dino_embed(samples * m + 0.5 * (1 - m))[0]),
                                           np.asarray(dino_embed(tg * m + 0.5 * (1 - m))[0])).mean()),
                    "mask MSE": pixel_mse(samples, exs, masked=True)}
        si, st_ = (np.asarray(a) for a in clip_encode(samples, caps))
        ri, _ = (np.asarray(a) for a in clip_encode(refs, caps))
        return {"DINO": float(_cos(np.asarray(dino_embed(samples)[0]), np.asarray(dino_embed(refs)[0])).mean()),
                "CLIP-I": float(np.sum(si * ri, -1).mean()), "CLIP-T": float(np.sum(si * st_, -1).mean()),
                "MSE": pixel_mse(samples, exs)}

    # ToffeeNet's training data (toffee.sources): "renderer", pairs rendered from the training subjects
    # (S.toffee_example); "pipeline", the construction pipeline's own kept pairs on `toffee.dataset_subjects` subjects
    # no model was trained on (what Toffee trains ToffeeNet on); "pipeline_truth", the same pairs with the renderer's
    # true images in place of the pipeline's (the control for the pipeline's image quality)
    pools: dict = {}
    if any(src_ != "renderer" for src_ in c.toffee.sources):
        drng = np.random.default_rng(c.seed + 6000)
        built, c0 = [], time.process_time()
        for di in range(c.toffee.dataset_subjects):
            key, k = jax.random.split(key)
            built.append(construct(S.random_subject(drng), np.random.default_rng(c.seed + 7000 + di), k, n))
        for src_ in ("pipeline", "pipeline_truth"):
            pools[src_] = [e for b in built for e in pipeline_examples(b, src_ == "pipeline_truth")]
        prompts, exs_ = len(built) * n, pools["pipeline"]
        if not exs_:
            fail("config.pipeline.dino_threshold / clip_threshold", "a filter that keeps at least one of the "
                 "pipeline's pairs for ToffeeNet to train on", f"0 of {2 * prompts} kept at DINO >= {dino_t:.3f}, "
                 f"CLIP-T >= {clip_t:.3f}")
        err = [np.mean((e["target"] - t["target"]) ** 2) for e, t in zip(exs_, pools["pipeline_truth"])]
        summary.update(dataset_prompts=prompts, dataset_examples=len(exs_),
                       dataset_editing=int(sum(e["mask"].any() for e in exs_)),
                       dataset_cpu_seconds=time.process_time() - c0, dataset_target_mse=float(np.mean(err)))
        ex8 = exs_[:8]
        diffusion.save_grid(np.concatenate([
            np.stack([e[k_] for e in ex8]) for k_ in ("reference", "source")]
            + [np.stack([np.repeat(e["mask"][..., None], 3, -1) for e in ex8]),
               np.stack([e["target"] for e in ex8]), np.stack([e["target"] for e in pools["pipeline_truth"][:8]])]
        ).astype(np.float32) * 2 - 1, report.path("toffee_dataset.png"), nrow=8)
        report.section(
            "## ToffeeNet's training data from the construction pipeline\n\n"
            + table(["quantity", "value"], [
                ["subjects (no model trained on them) x prompts", f"{c.toffee.dataset_subjects} x {n}"],
                ["candidate pairs (editing + generation)", f"{2 * prompts}"],
                ["kept by the filter (editing / generation)", f"{summary['dataset_editing']} / "
                 f"{len(exs_) - summary['dataset_editing']}"],
                ["MSE of the kept targets to the true renders", f"{summary['dataset_target_mse']:.4f}"],
                ["CPU seconds (pipeline and renders)", f"{summary['dataset_cpu_seconds']:.0f}"]]),
            dataset=summary)
    p_rows, lam_rows, lam_grid, edit_grid = [], [], [], []
    seeds = tuple(c.toffee.seeds)
    net_schedule = dataclasses.replace(SCHEDULE, prediction_type=c.toffee.prediction)
    p_cols = ("Seg-DINO", "mask MSE", "CLIP-T", "DINO", "MSE")
    digits = lambda k_: ".4f" if "MSE" in k_ else ".3f"   # noqa: E731   pixel errors are ~0.01-0.2
    runs = [(src_, p) for src_ in c.toffee.sources for p in c.toffee.p_values]
    for pi, (src_, p) in enumerate(runs):
        tag = "" if src_ == "renderer" else f"_{src_}"
        per_seed = {k_: [] for k_ in p_cols}
        for t in seeds:
            # the same examples (but for which are reconstructions) and the same initial weights for every p and
            # every pipeline source at a training seed t: p (or the images) is the only difference within a seed
            prng = np.random.default_rng(c.seed + 11 + 100 * t)
            if src_ == "renderer":
                exs = [S.toffee_example(train_subs[prng.integers(len(train_subs))],
                                        train_subs[prng.integers(len(train_subs))], prng, size,
                                        kind="editing" if prng.uniform() < 0.5 else "generation",
                                        reconstruction=bool(prng.uniform() < p)) for _ in range(c.toffee.pool)]
            else:   # a reconstruction pair: the target is its own reference
                u = prng.uniform(size=len(pools[src_]))
                exs = [dict(e, reference=e["target"]) if ui < p else e for e, ui in zip(pools[src_], u)]
            depth_on = prng.uniform(size=len(exs)) < 0.5   # depth is optional: present in half the examples
            pool = {"x0": np.stack([e["target"] for e in exs]),
                    "cond": cond_of(exs) * np.concatenate([np.ones((len(exs), 1, 1, 4)),
                                                           depth_on[:, None, None, None]], -1).astype(np.float32),
                    "tokens": tokens_of(np.stack([e["reference"] for e in exs])),
                    "text": _ids([e["caption"] for e in exs], c), "view": _noview(len(exs))}
            net = _unet(c)
            name = f"toffeenet_p{p}{tag}" + (f"_seed{t}" if len(seeds) > 1 else "")
            params, st = train_diffusion(c, net, pool, c.toffee.steps,
                                         jax.random.fold_in(jax.random.key(c.seed + 31), t), report, name,
                                         schedule=net_schedule, batch=c.toffee.batch)
            summary.update(st)
            sample = make_sampler(net, params, c.sample.steps, net_schedule)

            def run_eval(exs, lam, k):
                return np.asarray(sample(k, cond_of(exs), tokens_of(np.stack([e["reference"] for e in exs])),
                                         _ids([e["caption"] for e in exs], c), _noview(len(exs)), lam))

            k = jax.random.key(c.seed + 123)
            gen, edited = run_eval(gen_eval, 1.0, k), run_eval(edit_eval, 1.0, k)
            m = {**score(gen, gen_eval), **score(edited, edit_eval, masked=True)}
            for k_ in p_cols:
                per_seed[k_].append(m[k_])
            if t == seeds[0]:
                edit_grid.append(edited[:4])
            if pi == 0 and t == seeds[0]:
                for lam in c.toffee.lambdas:
                    out_l = run_eval(gen_eval, lam, k)
                    m = score(out_l, gen_eval)
                    lam_rows.append([f"{lam:g}", f"{m['DINO']:.3f}", f"{m['CLIP-I']:.3f}", f"{m['CLIP-T']:.3f}",
                                     f"{m['MSE']:.4f}"])
                    summary.update({f"lambda{lam:g}_{k_}": v for k_, v in m.items()})
                    lam_grid.append(out_l[:4])
        def cell(v, f):   # the mean over seeds, each seed's value in brackets
            return f"{np.mean(v):{f}}" + (" (" + ", ".join(f"{x:{f}}" for x in v) + ")" if len(v) > 1 else "")
        label = f"{p:.2f}" + (f", {SOURCES[src_]}" if len(c.toffee.sources) > 1 else "")
        p_rows.append([label] + [cell(per_seed[k_], digits(k_)) for k_ in p_cols])
        summary[f"seg_dino_p{p}{tag}"] = np.mean(per_seed["Seg-DINO"])
        summary[f"clip_t_p{p}{tag}"] = np.mean(per_seed["CLIP-T"])
        summary.update({f"{k_}_p{p}{tag}_seeds": v for k_, v in per_seed.items()})
    # no model: the reference image copied as the generation, the source left unedited: what a sample must beat
    copy = {**score(np.stack([e["reference"] for e in gen_eval]), gen_eval),
            **score(np.stack([e["source"] for e in edit_eval]), edit_eval, masked=True)}
    p_rows.append(["no model (reference copied; source not edited)"]
                  + [f"{copy[k_]:{digits(k_)}}" for k_ in p_cols])
    summary.update({f"copy_{k_}": v for k_, v in copy.items()})
    ex4 = edit_eval[:4]
    show = [np.stack([e["source"] for e in ex4]), np.stack([np.repeat(e["mask"][..., None], 3, -1) for e in ex4]),
            np.stack([e["reference"] for e in ex4]), np.stack([e["target"] for e in ex4])]
    diffusion.save_grid(np.concatenate(show + edit_grid).astype(np.float32) * 2 - 1, report.path("toffee_edit.png"),
                        nrow=4)
    refs = np.stack([e["reference"] for e in gen_eval[:4]])
    diffusion.save_grid(np.concatenate([refs] + lam_grid) * 2 - 1, report.path("toffee_lambda.png"), nrow=4)
    report.section(
        f"## ToffeeNet: λ (p = {c.toffee.p_values[0]}, trained on {SOURCES[c.toffee.sources[0]]}, generation, "
        f"{len(gen_eval)} held-out examples; "
        f"{c.toffee.steps} steps, predicting {c.toffee.prediction})\n\n"
        + table(["λ", "DINO", "CLIP-I", "CLIP-T", "MSE to the true render"], lam_rows)
        + "\n\n## ToffeeNet: reconstruction-pair probability p"
        + (" and training data" if len(c.toffee.sources) > 1 else f" (trained on {SOURCES[c.toffee.sources[0]]})")
        + "\n\n"
        + table(["p", "Seg-DINO (editing)", "MSE in the edit mask (editing)", "CLIP-T (generation)",
                 "DINO (generation)", "MSE to the true render (generation)"], p_rows)
        + (f"\n\nMeans over training seeds {seeds} (each seed's value in brackets)." if len(seeds) > 1 else "")
        + "\n\nPublished (DreamBench, 2406.09305): " + "; ".join(
            f"{k}: " + ", ".join(f"{m} {v}" for m, v in d.items()) for k, d in PUBLISHED.items())
        + ". Ours: self-trained DINO/CLIP stand-ins on procedural subjects — comparable in direction only.",
        lambda_rows=lam_rows, p_rows=p_rows)
    summary["seconds"] = time.time() - t_start
    return summary
