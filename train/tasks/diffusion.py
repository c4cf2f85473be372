"""`diffusion.t2i`: text-to-image diffusion on the procedural captioned shapes (jaxmm.data.shapes), pixel space,
a CLIP-style text tower trained from scratch with the UNet (or loaded from a CLIPTextModel folder:
`model.text_init`), condition dropout for classifier-free guidance, EMA of the params (train.hooks.ema_hook).
configs/diffusion.py runs it; docs/results/diffusion.md has the numbers.

During training every `task_args.sample_every` steps: a grid of the EMA model's samples for fixed prompts in
`<workdir>/samples/step_<N>.png` and in TensorBoard. Evaluation (`evaluate`, at every eval): samples for
`task_args.eval_prompts` single-object and as many multi-object captions of the held-out split, scored by the
attribute scorer trained on REAL images (jaxmm.data.shapes_scorer; its held-out real accuracy is reported
beside, as the bound), and FID in that scorer's feature space (self-trained features, NOT Inception).
At the end: the EMA params in `<workdir>/ema_params.msgpack` (what `python -m train.sample` loads).
"""
from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from train.task import Hook, Task
from train.tasks import register

GRID_PROMPTS = ("a red circle on the left", "a blue square on the right", "a green triangle on the left",
                "two yellow circles on the right", "two red squares on the left", "a blue triangle on the right",
                "a red circle left of a blue square", "two green triangles right of a yellow circle")


def schedule(config):
    from jaxmm.diffusion import Schedule

    a = config.task_args
    return Schedule(beta_schedule=a.beta_schedule, prediction_type=a.prediction_type,
                    timestep_spacing="trailing", clip_sample=True)


def build_model(config):
    """TextToImage from config.model (also used by `python -m train.sample`)."""
    from jaxmm.data import shapes
    from jaxmm.models.text_encoder import TextEncoderConfig
    from jaxmm.models.text_to_image import TextToImage
    from jaxmm.models.unet import UNetConfig

    m = config.model
    tokenizer_kind(config)  # a bad text_tokenizer fails before anything is built
    dtype = jnp.bfloat16 if config.train.compute_dtype == "bfloat16" else None
    if m.text_init:
        from jaxmm.hf.pretrained import from_pretrained

        text_cfg = dataclasses.replace(from_pretrained(m.text_init)[0].config, dtype=dtype)
    else:
        text_cfg = TextEncoderConfig(vocab_size=len(shapes.VOCAB), max_positions=shapes.MAX_LEN, d_model=m.text_width,
                                     num_layers=m.text_layers, num_heads=m.text_heads, mlp_dim=2 * m.text_width,
                                     eos_token_id=shapes.EOS, dtype=dtype, remat=config.train.remat)
    levels = len(m.channels)
    attn = tuple(m.attention_levels)
    if any(not 0 <= i < levels for i in attn):
        raise ValueError(f"config.model.attention_levels: expected indices in [0, {levels}), got {attn}")
    down = tuple("CrossAttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(levels))
    up = tuple("CrossAttnUpBlock2D" if levels - 1 - i in attn else "UpBlock2D" for i in range(levels))
    coords, text_ch = bool(m.get("coord_channels", False)), int(m.get("text_channels", 0))   # older runs: absent
    unet_cfg = UNetConfig(in_channels=3 + 2 * coords + text_ch, out_channels=3, block_out_channels=tuple(m.channels),
                          down_block_types=down,
                          up_block_types=up, layers_per_block=m.layers_per_block, num_attention_heads=m.heads,
                          cross_attention_dim=text_cfg.d_model, norm_num_groups=m.groups, dtype=dtype)
    return TextToImage(text_cfg, unet_cfg, coord_channels=coords, text_channels=text_ch)


def tokenizer_kind(config) -> str:
    kind = config.model.text_tokenizer or ("folder" if config.model.text_init else "words")
    if kind not in ("words", "folder"):
        raise ValueError(f"config.model.text_tokenizer: expected '', 'words' or 'folder', got {kind!r}")
    if kind == "folder" and not config.model.text_init:
        raise ValueError("config.model.text_tokenizer: 'folder' needs config.model.text_init (a CLIP text folder)")
    return kind


def tokenize(config, prompts):
    """ids, mask [N, L] for prompts: `model.text_tokenizer` "words" (the shapes word vocabulary; the default
    without `text_init`) or "folder" (the tokenizer saved in the `model.text_init` folder; its default)."""
    from jaxmm.data import shapes

    if tokenizer_kind(config) == "words":
        pairs = [shapes.encode(p) for p in prompts]
        return np.stack([a for a, _ in pairs]), np.stack([b for _, b in pairs])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(config.model.text_init)
    out = tok(list(prompts), padding="max_length", max_length=shapes.MAX_LEN, truncation=True, return_tensors="np")
    return out["input_ids"].astype(np.int32), out["attention_mask"].astype(np.int32)


def sampler_fn(model, config, sampler=None, steps=None, guidance=None):
    """jitted `fn(params, noise, ids, mask) -> images [-1, 1]` with the config's (or the given) sampler settings.
    Memoised on (model, schedule, settings): the training hook, the evaluation and `python -m train.sample` in one
    process share one compiled sampler per batch shape."""
    a = config.task_args
    sampler, steps = sampler or a.sampler, int(steps or a.sample_steps)
    guidance = float(a.guidance if guidance is None else guidance)
    empty_ids, empty_mask = tokenize(config, [""])
    return _sampler(model, schedule(config), sampler, steps, guidance, tuple(empty_ids[0].tolist()),
                    tuple(empty_mask[0].tolist()))


@functools.lru_cache(maxsize=8)
def _sampler(model, sched, sampler, steps, guidance, empty_ids, empty_mask):
    from jaxmm.diffusion.training import generate
    from jaxmm.models.text_to_image import TextToImage

    empty_ids, empty_mask = jnp.asarray([empty_ids], jnp.int32), jnp.asarray([empty_mask], jnp.int32)

    @jax.jit
    def fn(params, noise, ids, mask):
        v = {"params": params}
        ctx = model.apply(v, ids, mask, method=TextToImage.encode)
        null = model.apply(v, empty_ids, empty_mask, method=TextToImage.encode)[0]
        den = lambda x, t, c: model.apply(v, x, t, c, method=TextToImage.denoise)  # noqa: E731
        return jnp.clip(generate(den, sched, noise, ctx, null, sampler=sampler, steps=steps, guidance=guidance), -1, 1)

    return fn


def sample_images(fn, params, config, prompts, seed: int = 0, chunk: int | None = None) -> np.ndarray:
    """Samples [len(prompts), size, size, 3] in [-1, 1], `chunk` (default `task_args.sample_batch`) at a time; the
    last chunk is padded to `chunk` rows (every call has one shape, so one compilation), the padding dropped."""
    size = config.model.image_size
    chunk = int(chunk or config.task_args.get("sample_batch", 64))   # runs written before it existed: 64
    ids, mask = tokenize(config, prompts)
    noise = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (len(prompts), size, size, 3)))
    out = []
    for i in range(0, len(prompts), chunk):
        part = [x[i:i + chunk] for x in (noise, ids, mask)]
        n = len(part[0])
        part = [np.concatenate([x, np.repeat(x[-1:], chunk - n, 0)]) for x in part]
        out.append(np.asarray(fn(params, *part))[:n])
    return np.concatenate(out)


@functools.lru_cache(maxsize=4)
def scorer(seed: int, size: int, steps: int, images: int = 3000, channels: tuple = (32, 64), width: int = 128):
    """The attribute scorer trained on real images (memoised: a pure function of its arguments)."""
    from jaxmm.data.shapes_scorer import train_scorer

    return train_scorer(seed=seed, size=size, steps=steps, train_images=images, eval_images=min(500, images),
                        channels=channels, width=width)


class TextToImageTask(Task):
    metric = "eval_single_attribute_accuracy"

    def default_config(self):
        return ml_collections.ConfigDict(dict(
            model=dict(image_size=32, channels=(16, 32, 64), attention_levels=(1, 2), layers_per_block=1, heads=4,
                       groups=8, text_width=32, text_layers=2, text_heads=4, text_init="", text_tokenizer="",
                       coord_channels=False, text_channels=0),
            data=dict(train_examples=20000, eval_examples=512, multi_fraction=0.5, max_count=2),
            task_args=dict(prediction_type="epsilon", beta_schedule="squaredcos_cap_v2", p_uncond=0.1,
                           ema_decay=0.999, sample_every=500, sampler="ddim", sample_steps=25, guidance=3.0,
                           eval_prompts=64, sample_batch=64, scorer_steps=600, scorer_images=3000,
                           scorer_channels=(32, 64), scorer_width=128)))

    def build_model(self, config):
        return build_model(config)

    def datasets(self, config):
        import grain

        from jaxmm.data.shapes import Shapes

        d, size = config.data, config.model.image_size

        def source(n, split, keep):
            ds = Shapes(n, seed=config.seed, split=split, size=size, multi_fraction=d.multi_fraction,
                        max_count=d.max_count)
            folder_tok = tokenizer_kind(config) == "folder"
            texts = [ds.text(i) for i in range(n)] if folder_tok else None   # re-tokenized with the folder's

            def item(i):
                e = ds[i]
                out = {"image": e["image"].astype(np.float32) / 127.5 - 1, "input_ids": e["input_ids"],
                       "attention_mask": e["attention_mask"], **{k: e[k] for k in keep}}
                if texts is not None:
                    ids, mask = tokenize(config, [texts[i]])
                    out.update(input_ids=ids[0], attention_mask=mask[0])
                return out

            return grain.MapDataset.range(n).map(item)

        return source(d.train_examples, "train", ()), source(d.eval_examples, "eval", ("halves", "multi"))

    def model_inputs(self, batch):
        b = batch["image"].shape[0]
        return {"x": batch["image"], "timesteps": jnp.zeros((b,), jnp.int32), "input_ids": batch["input_ids"],
                "attention_mask": batch["attention_mask"]}

    def initial_params(self, params):
        path = self.config.model.text_init
        if not path:
            return params
        from jaxmm.hf.init import replace_group
        from jaxmm.hf.pretrained import from_pretrained

        return replace_group(params, "text_encoder", from_pretrained(path)[1], source=path)

    def loss_fn(self, model, params, batch, rng, extra=None):
        from jaxmm.diffusion.training import conditional_loss
        from jaxmm.models.text_to_image import TextToImage

        v = {"params": params}
        ids, mask = tokenize(self.config, [""])
        ctx = model.apply(v, batch["input_ids"], batch["attention_mask"], method=TextToImage.encode)
        null = model.apply(v, jnp.asarray(ids), jnp.asarray(mask), method=TextToImage.encode)[0]
        den = lambda x, t, c: model.apply(v, x, t, c, method=TextToImage.denoise)  # noqa: E731
        if rng is None:
            rng = jax.random.PRNGKey(0)
        loss, _ = conditional_loss(den, schedule(self.config), batch["image"], ctx, null, rng,
                                   self.config.task_args.p_uncond)
        return loss, {}

    def step_hooks(self, config):
        from train.hooks import ema_hook

        return [ema_hook(config.task_args.ema_decay)]

    def hooks(self, config):
        every = config.task_args.sample_every
        if not every:
            return []
        model = build_model(config)
        fn = sampler_fn(model, config)

        def grid(ctx):
            from jaxmm.diffusion import save_grid

            from train import tensorboard as tb_lib

            images = sample_images(fn, ctx.state.extra["ema"], config, GRID_PROMPTS, chunk=len(GRID_PROMPTS))
            if jax.process_index() == 0:
                save_grid(images, os.path.join(ctx.workdir, "samples", f"step_{ctx.step:06d}.png"),
                          nrow=len(GRID_PROMPTS), scale=2)
                if config.train.tensorboard:
                    w = tb_lib.Writer(ctx.workdir)
                    w.samples(ctx.step, {"t2i": ((images + 1) * 127.5).round().astype(np.uint8)},
                              list(GRID_PROMPTS))
                    w.close()
            return {}

        return [Hook(every, grid, name="t2i_samples")]

    def evaluate(self, ctx):
        from jaxmm.data import shapes
        from jaxmm.metrics.fid import frechet_distance
        from jaxmm.data import shapes_scorer

        config, a = ctx.config, ctx.config.task_args
        size = config.model.image_size
        sparams, sreport = scorer(config.seed, size, a.scorer_steps, a.scorer_images, tuple(a.scorer_channels),
                                  a.scorer_width)
        ev = ctx.eval_data
        rows = [ev[i] for i in range(len(ev))]
        out = {f"scorer_real_{k}": v for k, v in sreport.items()}
        fn = sampler_fn(ctx.model, config)
        gen_all, real_all = [], []
        for kind, flag in (("single", 0), ("multi", 1)):
            picked = [i for i, r in enumerate(rows) if int(r["multi"]) == flag][:a.eval_prompts]
            if not picked:
                continue
            prompts = [ev_text(config, i) for i in picked]
            images = sample_images(fn, ctx.state.extra["ema"], config, prompts, seed=1 + flag)
            truth = np.stack([rows[i]["halves"] for i in picked])
            acc = shapes.attribute_accuracy(shapes_scorer.predict(sparams, images), truth)
            out.update({f"{kind}_{k}": v for k, v in acc.items()})
            gen_all.append(images)
            real_all.append(np.stack([rows[i]["image"] for i in picked]))
        if gen_all:
            gen, real = np.concatenate(gen_all), np.concatenate(real_all)
            ref = shapes.Shapes(len(real), seed=config.seed + 1, split="fid_ref", size=size,
                                multi_fraction=config.data.multi_fraction, max_count=config.data.max_count)
            ref_images = np.stack([ref[i]["image"] for i in range(len(ref))])
            f_gen, f_real, f_ref = (shapes_scorer.features(sparams, x) for x in (gen, real, ref_images))
            out["fid_selftrained"] = frechet_distance(f_gen, f_real)
            out["fid_selftrained_real_vs_real"] = frechet_distance(f_ref, f_real)
        return {f"eval_{k}": v for k, v in out.items()}

    def on_end(self, ctx):
        from flax import serialization

        from train.metrics import write_atomic

        if jax.process_index() == 0:
            ema = jax.device_get(ctx.state.extra["ema"])
            write_atomic(os.path.join(ctx.workdir, "ema_params.msgpack"), serialization.msgpack_serialize(ema))
        return None


def ev_text(config, i: int) -> str:
    from jaxmm.data.shapes import Shapes

    d = config.data
    return Shapes(d.eval_examples, seed=config.seed, split="eval", size=config.model.image_size,
                  multi_fraction=d.multi_fraction, max_count=d.max_count).text(i)


register("diffusion.t2i")(TextToImageTask)
