"""`artist`: the ARTIST comparison (arXiv 2406.12044, PAPERS.md §6) as one experiment, end to end on CPU at toy size.

Stages (each a small jitted optax loop, `train.experiment.fit`; `noisy_pair_loss` and the planner helpers are pure):
1. textual model (glyph diffusion from layout tokens): `steps_single` steps on single-word glyphs, then
   `steps_multi` on multi-word glyphs cut from text-rich layouts (jaxmm.data.glyphs);
2. the LLM planner (jaxmm.models.llm, prompt -> words + box tokens), greedy decoding under the layout grammar mask,
   rule-based fallback when its words are not the prompt's quoted words;
3. the visual models, each `steps_visual` steps at the same batch: "prompt_only" (one UNet, prompt condition),
   "textdiffuser" (the same UNet with the planned glyph image + box mask concatenated to its input; TextDiffuser-style),
   "artist" (the same visual UNet + the frozen textual model's features through zero convs);
4. a self-trained small CLIP (jaxmm.models.clip_standin.ContrastiveEncoder: conv image tower, character
   transformer) for FID features and the CLIP-score;
5. evaluation on held-out prompts (MARIO-Eval protocol, jaxmm.metrics.text_rendering): DDIM samples of every method
   from the planned layouts, read by rapidocr after a 4x bicubic upscale; OCR precision / recall / F / accuracy,
   FID (self-trained features), CLIP-score (self-trained); ground-truth images scored the same way (the ceiling).
   A diagnostic row beside them, "artist with true glyphs": ARTIST's trained visual model sampled with its textual
   branch handed the planned layout's PIL glyph noised to each step (as in its training) instead of its own glyphs:
   how legible ARTIST is when its textual model writes perfectly (not the paper's sampler; `_sample`).
Writes results.md / results.json, a sample grid per method (samples_<method>_seed<k>.png) and the glyph grids.
"""
from __future__ import annotations

import dataclasses
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmm.metrics.fid import frechet_distance
from train.experiment import experiment, fit, sample_batch

METHODS = ("prompt_only", "textdiffuser", "artist")
LOG_EVERY = 50   # steps between the points of the loss curves in results.json
# the diagnostic row: ARTIST's visual model with its textual branch fed the true (PIL) glyph, noised to each step
ORACLE = "artist with true glyphs"


# ------------------------------------------------------------------------------------------------ generic pieces
def noisy_pair_loss(apply_fn, alphas_cumprod, x0, g0, key):
    """Epsilon MSE of the visual output of `apply_fn(x_t, g_t, t) -> (eps_x, eps_g)`, where x_t and g_t are x0 and
    g0 noised at the same t with independent noise (ARTIST's visual stage; the textual branch is teacher-forced)."""
    from jaxmm.diffusion import q_sample

    kt, kx, kg = jax.random.split(key, 3)
    t = jax.random.randint(kt, (x0.shape[0],), 0, alphas_cumprod.shape[0])
    nx, ng = jax.random.normal(kx, x0.shape), jax.random.normal(kg, g0.shape)
    eps_x, _ = apply_fn(q_sample(alphas_cumprod, x0, t, nx), q_sample(alphas_cumprod, g0, t, ng), t)
    return jnp.mean((eps_x - nx) ** 2)


def quoted_words(prompt: str) -> list[str]:
    from jaxmm.data.glyphs import clean_word

    m = re.search(r'"([^"]*)"', prompt)
    return [w for w in (clean_word(x) for x in (m.group(1).split() if m else [])) if w]


def rule_layout(words, shape):
    """Rule-based planner (the fallback): the words on one centred line, widths proportional to their lengths."""
    h, w = shape
    n = sum(len(x) for x in words) + len(words) - 1
    cw = min(0.92 * w / max(n, 1), 0.6 * h)
    x, boxes = (w - cw * n) / 2, []
    for word in words:
        boxes.append((x, 0.2 * h, x + cw * len(word), 0.8 * h))
        x += cw * (len(word) + 1)
    return np.array(boxes, np.float32).reshape(-1, 4)


def box_iou(a, b) -> float:
    """Mean over words of the IoU of box a[i] with b[i] (0 when the word counts differ)."""
    a, b = np.asarray(a).reshape(-1, 4), np.asarray(b).reshape(-1, 4)
    if len(a) != len(b) or not len(a):
        return 0.0
    ix = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = ix * iy
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return float(np.mean(inter / (area(a) + area(b) - inter)))


# ------------------------------------------------------------------------------------------------ config
def _check(config):
    bad = [m for m in config.methods if m not in METHODS]
    if bad or not config.methods:
        raise ValueError(f"config.methods: expected a non-empty subset of {METHODS}, got {tuple(config.methods)}")
    levels = len(config.model.channels)
    if config.data.height % 2 ** (levels - 1) or config.data.width % 2 ** (levels - 1):
        raise ValueError(f"config.data.height/width: expected multiples of {2 ** (levels - 1)} "
                         f"(2 ** (levels - 1) for model.channels={tuple(config.model.channels)}), got "
                         f"{config.data.height}x{config.data.width}")
    if config.diffusion.textual_prediction not in ("epsilon", "sample", "v_prediction"):
        raise ValueError("config.diffusion.textual_prediction: expected 'epsilon', 'sample' or 'v_prediction', got "
                         f"{config.diffusion.textual_prediction!r}")
    if not config.seeds:
        raise ValueError("config.seeds: expected at least one seed, got ()")


def _models(c):
    from jaxmm.models.artist import EOS, VOCAB_SIZE, Artist, ConditionalUNet
    from jaxmm.models.clip_standin import ContrastiveEncoder
    from jaxmm.models.text_encoder import TextEncoderConfig
    from jaxmm.models.unet import UNetConfig

    m = c.model
    enc = TextEncoderConfig(vocab_size=VOCAB_SIZE, max_positions=c.data.prompt_len, d_model=m.text_dim,
                            num_layers=m.text_layers, num_heads=m.heads, mlp_dim=2 * m.text_dim, eos_token_id=EOS)
    n = len(m.channels)
    attn = tuple(i >= n - m.attn_levels for i in range(n))

    def unet(cin, cout):
        return UNetConfig(in_channels=cin, out_channels=cout, block_out_channels=tuple(m.channels),
                          down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
                          up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in attn[::-1]),
                          layers_per_block=m.layers_per_block, num_attention_heads=m.heads,
                          cross_attention_dim=m.text_dim, norm_num_groups=m.groups)

    textual = ConditionalUNet(unet(1 + (1 + m.char_dim if m.char_dim else 0), 1), enc, char_dim=m.char_dim)
    return {"textual": textual, "prompt_only": ConditionalUNet(unet(3, 3), enc),
            "textdiffuser": ConditionalUNet(unet(5, 3), enc),
            "artist": Artist(textual, ConditionalUNet(unet(3, 3), enc)),
            "clip": ContrastiveEncoder(text_encoder=enc, width=m.clip_width, embed_dim=m.clip_dim)}


def _pad(rows, length, left=False):
    """int32 [N, length]: each id list cut to `length` and padded with PAD on the right (left=True: on the left)."""
    from jaxmm.models.artist import PAD

    out = np.full((len(rows), length), PAD, np.int32)
    for i, r in enumerate(rows):
        r = list(r)[-length:] if left else list(r)[:length]
        if left:
            out[i, length - len(r):] = r
        else:
            out[i, :len(r)] = r
    return out


def _arrays(items, c):
    """Stacked model inputs of scene dicts: images/glyphs/masks in [-1, 1] / {0, 1}, prompt and layout ids, the
    layout's character map (`glyphs.char_map`, the textual model's spatial condition)."""
    from jaxmm.data.glyphs import char_map
    from jaxmm.models.artist import BOS, EOS, encode_layout, encode_text

    shape = (c.data.height, c.data.width)
    return {"image": np.stack([s["image"] for s in items]).astype(np.float32) / 127.5 - 1,
            "glyph": np.stack([s["glyph"] for s in items])[..., None].astype(np.float32) / 127.5 - 1,
            "mask": np.stack([s["mask"] for s in items])[..., None].astype(np.float32),
            "prompt_ids": _pad([[BOS] + encode_text(s["prompt"]) + [EOS] for s in items], c.data.prompt_len),
            "layout_ids": _pad([encode_layout(s["words"], s["boxes"], shape) for s in items], c.data.layout_len),
            "char_map": np.stack([char_map(s["words"], s["boxes"], shape) for s in items])}


# ------------------------------------------------------------------------------------------------ the experiment
@experiment("artist", check=_check)
def run(config, report) -> dict:
    from jaxmm import diffusion
    from jaxmm.data import glyphs
    from jaxmm.metrics.text_rendering import ocr_word_metrics
    from train.report import table

    c, t_start = config, time.time()
    shape = (c.data.height, c.data.width)
    models = _models(c)
    # pixel space in [-1, 1]: DDIM clips its x0 prediction (clip_sample; without it 36 % of the pixels of an
    # undertrained model's samples saturate, docs/results/artist.md)
    sched = diffusion.Schedule(num_train_timesteps=c.diffusion.train_timesteps, beta_schedule="squaredcos_cap_v2",
                               clip_sample=True)
    # the textual model predicts x0 ("sample"): its 10-step DDIM glyphs then have a clean black background where an
    # epsilon model at the same steps leaves noise everywhere (docs/results/artist.md, the glyph probes)
    sched_text = dataclasses.replace(sched, prediction_type=c.diffusion.textual_prediction)
    ac = jnp.asarray(diffusion.alphas_cumprod(sched))
    kw = dict(height=c.data.height, width=c.data.width)
    scene_kw = dict(kw, size_range=tuple(c.data.size_range), min_size=c.data.min_size, max_words=c.data.max_words)
    t0 = time.time()
    singles = [glyphs.single_word(i, size_range=tuple(c.data.size_range), **kw) for i in range(c.data.glyph_examples)]
    multis = [glyphs.layout_words(i, max_words=c.data.max_words, min_size=c.data.min_size, **kw)
              for i in range(c.data.glyph_examples)]
    train_scenes = [glyphs.scene(i, **scene_kw) for i in range(c.data.train_examples)]
    eval_scenes = [glyphs.scene(10_000_000 + i, **scene_kw) for i in range(c.data.eval_examples)]
    as_scene = lambda g: {"image": np.zeros(shape + (3,), np.uint8), "glyph": g.glyph, "mask": glyphs.box_mask(  # noqa
        g.boxes, shape), "prompt": "", "words": g.words, "boxes": g.boxes}
    data_single, data_multi = _arrays([as_scene(g) for g in singles], c), _arrays([as_scene(g) for g in multis], c)
    data_train, data_eval = _arrays(train_scenes, c), _arrays(eval_scenes, c)
    print(f"[artist] data built in {time.time() - t0:.0f}s", flush=True)

    per_seed, curves = [], {}
    for seed in c.seeds:
        rng = np.random.default_rng(seed)
        key = jax.random.key(seed)

        def batches(data, names):
            return lambda s: sample_batch(data, names, rng, c.train.batch_size)

        # 1. the textual model: single words, then multi-word layouts
        textual = models["textual"]
        key, k_init = jax.random.split(key)
        cmap = lambda d: d["char_map"] if c.model.char_dim else None  # noqa: E731
        p_text = textual.init(k_init, data_single["glyph"][:1], jnp.zeros((1,), jnp.int32),
                              data_single["layout_ids"][:1], cmap({"char_map": data_single["char_map"][:1]}))["params"]

        def glyph_loss(p, b, k):
            return diffusion.diffusion_loss(lambda x, t: textual.apply({"params": p}, x, t, b["layout_ids"], cmap(b)),
                                            c.diffusion.textual_prediction, ac, b["glyph"], k)[0]

        names = ("glyph", "layout_ids", "char_map")
        key, k1, k2 = jax.random.split(key, 3)
        single = fit(glyph_loss, p_text, batches(data_single, names), c.train.steps_single, c.train.lr, k1,
                     name=f"textual/single seed {seed}")
        multi = fit(glyph_loss, single.params, batches(data_multi, names), c.train.steps_multi, c.train.lr, k2,
                    name=f"textual/multi seed {seed}")
        p_text, cs, cm = multi.params, single.curve(LOG_EVERY), multi.curve(LOG_EVERY)
        curves[f"textual_seed{seed}"] = cs + [(s + c.train.steps_single, l) for s, l in cm]

        # 2. the planner
        key, k_llm = jax.random.split(key)
        plans, plan_stats = _planner(c, train_scenes, eval_scenes, k_llm, rng)

        # the planned layouts -> glyph / mask conditions and layout ids for every method at evaluation
        from jaxmm.models.artist import encode_layout
        plan_glyph = np.stack([glyphs.render_in_boxes(w, b, shape) for w, b in plans])[..., None] / 127.5 - 1
        plan_mask = np.stack([glyphs.box_mask(b, shape) for _, b in plans])[..., None].astype(np.float32)
        plan_ids = _pad([encode_layout(w, b, shape) for w, b in plans], c.data.layout_len)
        plan_cmap = np.stack([glyphs.char_map(w, b, shape) for w, b in plans])

        # 3. the visual models
        vis_names = ("image", "glyph", "mask", "prompt_ids", "layout_ids", "char_map")
        samples = {}
        for method in c.methods:
            model = models[method]
            key, k_init, k_fit, k_noise = jax.random.split(key, 4)
            b1 = {k: v[:1] for k, v in data_train.items()}
            t1 = jnp.zeros((1,), jnp.int32)
            if method == "artist":
                params = model.init(k_init, b1["image"], b1["glyph"], t1, b1["prompt_ids"], b1["layout_ids"],
                                    cmap(b1))["params"]
                params = dict(params, textual=p_text)

                def loss(p, b, k, model=model):
                    fn = lambda x, g, t: model.apply({"params": p}, x, g, t, b["prompt_ids"], b["layout_ids"],  # noqa
                                                     cmap(b))
                    return noisy_pair_loss(fn, ac, b["image"], b["glyph"], k)
                frozen = lambda path: path.startswith("['textual']")  # noqa: E731
            else:
                x1 = _visual_input(method, b1["image"], b1["glyph"], b1["mask"])
                params = model.init(k_init, x1, t1, b1["prompt_ids"])["params"]

                def loss(p, b, k, model=model, method=method):
                    def fn(x, t):
                        return model.apply({"params": p}, _visual_input(method, x, b["glyph"], b["mask"]), t,
                                           b["prompt_ids"])
                    return diffusion.diffusion_loss(fn, "epsilon", ac, b["image"], k)[0]
                frozen = None
            trained = fit(loss, params, batches(data_train, vis_names), c.train.steps_visual, c.train.lr, k_fit,
                          frozen=frozen, name=f"{method} seed {seed}")
            params, curves[f"{method}_seed{seed}"] = trained.params, trained.curve(LOG_EVERY)
            samples[method] = _sample(method, model, params, sched, c, data_eval["prompt_ids"], plan_glyph,
                                      plan_mask, plan_ids, plan_cmap, k_noise)
            if method == "artist":   # the diagnostic: the same model and noise, the textual branch fed true glyphs
                samples[ORACLE] = _sample(method, model, params, sched, c, data_eval["prompt_ids"], plan_glyph,
                                          plan_mask, plan_ids, plan_cmap, k_noise, oracle_glyphs=True)
        # the textual model's own glyphs from the planned layouts (what ARTIST's visual model listens to)
        key, k_g = jax.random.split(key)
        glyph_samples = _sample_glyphs(textual, p_text, sched_text, c, plan_ids, plan_cmap, k_g)

        # 4. self-trained CLIP; 5. evaluation
        key, k_clip = jax.random.split(key)
        clip, clip_fit = models["clip"], _train_clip(models["clip"], data_train, c, k_clip, rng)
        p_clip, curves[f"clip_seed{seed}"] = clip_fit.params, clip_fit.curve(LOG_EVERY)
        targets = [s["words"] for s in eval_scenes]
        real_img = data_eval["image"]
        rows = {"ground truth": real_img, **samples}
        real_feat = np.asarray(clip.apply({"params": p_clip}, jnp.asarray(real_img), method=clip.encode_image))
        res = {}
        for name, imgs in rows.items():
            read = _ocr(imgs, c)
            m = ocr_word_metrics(read, targets)
            img_e, txt_e, _ = clip.apply({"params": p_clip}, jnp.asarray(imgs), jnp.asarray(data_eval["prompt_ids"]))
            res[name] = {"ocr_accuracy": m["accuracy"], "ocr_precision": m["precision"], "ocr_recall": m["recall"],
                         "ocr_f": m["f_measure"],
                         "fid_self": frechet_distance(real_feat, np.asarray(img_e)),
                         "clip_score_self": float(100 * np.mean(np.maximum(np.sum(np.asarray(img_e) * np.asarray(
                             txt_e), -1), 0)))}
        g_read = _ocr(np.repeat(glyph_samples, 3, -1), c)
        res["textual model glyphs"] = {k: v for k, v in zip(("ocr_accuracy", "ocr_precision", "ocr_recall", "ocr_f"), (
            lambda m: (m["accuracy"], m["precision"], m["recall"], m["f_measure"]))(ocr_word_metrics(g_read, targets)))}
        res["_planner"] = plan_stats
        per_seed.append(res)
        n_show = min(8, len(eval_scenes))
        labels = [" ".join(w) for w in targets[:n_show]]
        for name, imgs in list(rows.items()) + [("glyphs", np.repeat(glyph_samples, 3, -1))]:
            fname = f"samples_{name.replace(' ', '_')}_seed{seed}.png"
            diffusion.save_grid(imgs[:n_show], report.path(fname), nrow=n_show, labels=labels, scale=c.eval.grid_scale)

    return _summarise(per_seed, curves, c, report, table, time.time() - t_start)


def _visual_input(method, x, glyph, mask):
    return jnp.concatenate([x, glyph, mask], -1) if method == "textdiffuser" else x


def _sample(method, model, params, sched, c, prompt_ids, plan_glyph, plan_mask, plan_ids, plan_cmap, key,
            oracle_glyphs=False):
    """DDIM samples (eta 0, `eval.ddim_steps`) of `method` for every eval prompt, float [-1, 1] [N, H, W, 3].

    oracle_glyphs (artist only; a diagnostic, not the paper's sampler): the textual branch does not denoise its own
    glyph; at every step it is given the planned layout's PIL glyph (TextDiffuser's condition) noised to that step,
    q_sample(glyph, t, n) with one n per image, as in training (`noisy_pair_loss`). Same visual noise as the real
    sampler: the two rows differ only in where the glyph comes from."""
    from jaxmm import diffusion

    n, (h, w) = len(prompt_ids), (c.data.height, c.data.width)
    ac = jnp.asarray(diffusion.alphas_cumprod(sched))
    out = []
    for s in range(0, n, c.eval.batch_size):
        sl = slice(s, s + c.eval.batch_size)
        ids, g, m, lids, cm = (jnp.asarray(a[sl]) for a in (prompt_ids, plan_glyph, plan_mask, plan_ids, plan_cmap))
        key, k = jax.random.split(key)
        if method == "artist":
            noise = jax.random.normal(k, (len(ids), h, w, 4))   # [visual | glyph] channels
            cm = cm if c.model.char_dim else None

            def fn(x, t, p=params, ids=ids, lids=lids, cm=cm):
                tt = jnp.full((x.shape[0],), t)
                ev, eg = model.apply({"params": p}, x[..., :3], x[..., 3:], tt, ids, lids, cm)
                eg = diffusion.x0_and_eps(c.diffusion.textual_prediction, eg, x[..., 3:], ac[t])[1]   # -> eps
                return jnp.concatenate([ev, eg], -1)

            def fn_oracle(x, t, p=params, ids=ids, lids=lids, cm=cm, g=g, gn=noise[..., 3:]):
                tt = jnp.full((x.shape[0],), t)
                return model.apply({"params": p}, x, diffusion.q_sample(ac, g, tt, gn), tt, ids, lids, cm)[0]
            x = (_ddim(fn_oracle, sched, noise[..., :3], c.eval.ddim_steps) if oracle_glyphs
                 else _ddim(fn, sched, noise, c.eval.ddim_steps)[..., :3])
        else:
            noise = jax.random.normal(k, (len(ids), h, w, 3))

            def fn(x, t, p=params, ids=ids, g=g, m=m):
                return model.apply({"params": p}, _visual_input(method, x, g, m), jnp.full((x.shape[0],), t), ids)
            x = _ddim(fn, sched, noise, c.eval.ddim_steps)
        out.append(np.asarray(x))
    return np.clip(np.concatenate(out), -1, 1)


def _ddim(fn, sched, noise, steps):
    from jaxmm import diffusion

    return jax.jit(lambda x: diffusion.sample_ddim(fn, sched, x, steps))(noise)


def _sample_glyphs(textual, params, sched, c, plan_ids, plan_cmap, key):
    noise = jax.random.normal(key, (len(plan_ids), c.data.height, c.data.width, 1))
    cm = jnp.asarray(plan_cmap) if c.model.char_dim else None
    fn = lambda x, t: textual.apply({"params": params}, x, jnp.full((x.shape[0],), t), jnp.asarray(plan_ids),  # noqa
                                    cm)
    return np.clip(np.asarray(_ddim(fn, sched, noise, c.eval.ddim_steps)), -1, 1)


def _ocr(images, c) -> list[list[str]]:
    """rapidocr's words (cleaned as the targets are) on each image, upscaled `eval.ocr_upscale`x bicubic."""
    from PIL import Image

    from jaxmm.data.glyphs import clean_word
    from jaxmm.diffusion.grid import to_uint8
    from jaxmm.ocr import read

    out = []
    for im in to_uint8(images):
        big = Image.fromarray(im).resize((im.shape[1] * c.eval.ocr_upscale, im.shape[0] * c.eval.ocr_upscale),
                                         Image.BICUBIC)
        words = [clean_word(w) for w in read(np.asarray(big), c.eval.ocr_engine, cache=False).words]
        out.append([w for w in words if w])
    return out


def _train_clip(clip, data, c, key, rng):
    """The self-trained CLIP: `train.steps_clip` Adam steps of symmetric InfoNCE on (image, prompt) batches of
    `train.clip_batch`. Returns the `train.experiment.Fit` (params, losses)."""
    from jaxmm.models.clip_standin import contrastive_loss

    key, k0 = jax.random.split(key)
    params = clip.init(k0, jnp.asarray(data["image"][:2]), jnp.asarray(data["prompt_ids"][:2]))["params"]

    def loss(p, b, k):
        return contrastive_loss(*clip.apply({"params": p}, b["image"], b["prompt_ids"]))

    batch = lambda s: sample_batch(data, ("image", "prompt_ids"), rng, c.train.clip_batch)  # noqa: E731
    return fit(loss, params, batch, c.train.steps_clip, c.train.lr, key, name="clip")


def _planner(c, train_scenes, eval_scenes, key, rng):
    """Train the LLM planner on (prompt -> layout) pairs and plan every eval prompt. Returns ([(words, boxes)],
    stats). Two decodings: free (`constrained_greedy`, grammar mask only) measures whether the LLM copies the
    prompt's quoted words (llm_parsed, llm_words_exact, llm_free_box_iou on the exact ones); the plan used is the
    LLM's boxes with the words forced to the quoted words (`greedy_boxes_for_words`; llm_box_iou), next to the
    rule-based planner's boxes (rule_box_iou). IoUs are against the true boxes of the held-out scene."""
    from jaxmm.models.artist import (BOS, SEP, VOCAB_SIZE, constrained_greedy, decode_layout, encode_layout,
                                     encode_text, greedy_boxes_for_words)
    from jaxmm.models.llm import LLM, tiny_llm_config

    shape = (c.data.height, c.data.width)
    lp, ll = c.data.prompt_len, c.data.layout_len
    m = c.planner
    llm = LLM(tiny_llm_config(VOCAB_SIZE, num_layers=m.layers, d_model=m.d_model, num_heads=m.heads,
                              num_kv_heads=m.heads, mlp_dim=2 * m.d_model))
    prompts = [[BOS] + encode_text(s["prompt"]) + [SEP] for s in train_scenes]
    layouts = [encode_layout(s["words"], s["boxes"], shape) for s in train_scenes]
    seqs = _pad([p + l for p, l in zip(prompts, layouts)], lp + ll)
    weight = np.zeros_like(seqs, np.float32)
    for i, (p, l) in enumerate(zip(prompts, layouts)):
        weight[i, len(p):len(p) + len(l)] = 1.0       # predict the layout tokens only
    key, k0 = jax.random.split(key)
    params = llm.init(k0, jnp.asarray(seqs[:1]))["params"]

    def loss(p, b, k):
        logits = llm.apply({"params": p}, b["ids"][:, :-1])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, b["ids"][:, 1:])
        return jnp.sum(ce * b["w"][:, 1:]) / jnp.maximum(jnp.sum(b["w"][:, 1:]), 1.0)

    batch = lambda s: sample_batch({"ids": seqs, "w": weight}, ("ids", "w"), rng, c.train.batch_size)  # noqa: E731
    trained = fit(loss, params, batch, c.train.steps_planner, c.train.lr, key, name="planner")
    params = trained.params

    eval_prompts = _pad([[BOS] + encode_text(s["prompt"]) + [SEP] for s in eval_scenes], lp, left=True)
    mask = (eval_prompts != 0).astype(np.int32)
    fn = jax.jit(lambda ids, msk: constrained_greedy(
        lambda i, mm: llm.apply({"params": params}, i, attention_mask=mm), ids, msk, ll))
    out = np.asarray(fn(jnp.asarray(eval_prompts), jnp.asarray(mask)))
    logits_fn = jax.jit(lambda ids: llm.apply({"params": params}, ids))
    plans, parsed, words_ok, iou_free, iou_llm, iou_rule = [], 0, 0, [], [], []
    for s, ids in zip(eval_scenes, out):
        want = quoted_words(s["prompt"])
        got = decode_layout(ids, shape)
        parsed += got is not None
        if got is not None and got[0] == want:
            words_ok += 1
            iou_free.append(box_iou(got[1], s["boxes"]))
        prompt = [BOS] + encode_text(s["prompt"]) + [SEP]
        _, boxes = greedy_boxes_for_words(logits_fn, prompt, want, shape)
        iou_llm.append(box_iou(boxes, s["boxes"]))
        iou_rule.append(box_iou(rule_layout(want, shape), s["boxes"]))
        plans.append((want, boxes))
    k = len(eval_scenes)
    return plans, {"llm_parsed": parsed / k, "llm_words_exact": words_ok / k,
                   "llm_free_box_iou": float(np.mean(iou_free)) if iou_free else 0.0,
                   "llm_box_iou": float(np.mean(iou_llm)), "rule_box_iou": float(np.mean(iou_rule)),
                   "planner_loss_last": float(trained.losses[-10:].mean())}


def _summarise(per_seed, curves, c, report, table, seconds):
    from train.report import fmt

    keys = ("ocr_accuracy", "ocr_precision", "ocr_recall", "ocr_f", "fid_self", "clip_score_self")
    names = ["ground truth", *c.methods, *([ORACLE] if "artist" in c.methods else []), "textual model glyphs"]
    rows, summary = [], {}
    for name in names:
        cells = [name]
        for k in keys:
            vals = [r[name][k] for r in per_seed if k in r.get(name, {})]
            if not vals:
                cells.append("–")
                continue
            mu, sd = float(np.mean(vals)), float(np.std(vals))
            cells.append(f"{fmt(mu)} ± {fmt(sd)}" if len(vals) > 1 else fmt(mu))
            summary[f"{name.replace(' ', '_')}/{k}"] = mu
        rows.append(cells)
    md = (f"## ARTIST comparison ({len(per_seed)} seed{'s' if len(per_seed) > 1 else ''}, "
          f"{c.data.height}x{c.data.width} px, {c.data.eval_examples} held-out prompts)\n\n"
          + table(["method", "OCR acc", "OCR P", "OCR R", "OCR F", "FID (self-trained)", "CLIP-score (self-trained)"],
                  rows) + "\n")
    planner = {k: float(np.mean([r["_planner"][k] for r in per_seed])) for k in per_seed[0]["_planner"]}
    md += "\nPlanner: " + ", ".join(f"{k} {v:.3f}" for k, v in planner.items()) + "\n"
    report.section(md, per_seed=per_seed, curves=curves, planner=planner, seconds=seconds)
    summary.update({f"planner/{k}": v for k, v in planner.items()})
    summary["seconds"] = seconds
    return summary
