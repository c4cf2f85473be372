"""diffusion.t2i end to end at toy size (configs/diffusion.py:tiny, one run shared by the module): a sample grid
written during training, TensorBoard images, EMA params that differ from the raw params, the evaluation's
numbers, and `python -m train.sample` on the finished workdir. The attribute scorer trained on real images
reads real held-out images correctly (the bound the generated samples are scored against).

The tiny run is a smoke of every code path (2 steps, a 2-step sampler compiled once and shared by the training
hook, the evaluation and `train.sample`, a 4-channel scorer on 16 images). It is still marked slow: under the
suite's 8 host devices its compilations (train step, sampler, scorer) cost ~150 s CPU time in all (measured
2026-11-30 at load 14), over the default suite's budget; run them with `-m slow`."""
import glob
import os

import jax
import numpy as np
import pytest
from PIL import Image

from train import checkpoint as ckpt_lib


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from configs.diffusion import get_config
    from train.main import run as run_config

    workdir = str(tmp_path_factory.mktemp("t2i"))
    config = get_config("tiny")
    config.train.progress = False
    summary = run_config(config, workdir)
    return workdir, summary


@pytest.mark.slow
def test_grids_tensorboard_and_summary(run):
    workdir, summary = run
    grids = sorted(glob.glob(os.path.join(workdir, "samples", "step_*.png")))
    assert [os.path.basename(g) for g in grids] == ["step_000002.png"]
    w, h = Image.open(grids[-1]).size
    assert w == 2 * (8 * (16 + 2) + 2)   # 8 prompts in one row of 16-px images, padding 2, scale 2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    images = set()
    for f in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
        acc = EventAccumulator(f, size_guidance={"images": 0})
        acc.Reload()
        images |= set(acc.Tags()["images"])
    assert "eval_samples/0" in images and "eval_samples/7" in images
    for k in ("eval_single_attribute_accuracy", "eval_multi_attribute_accuracy", "eval_scorer_real_count",
              "eval_fid_selftrained", "eval_fid_selftrained_real_vs_real"):
        assert k in summary and np.isfinite(summary[k]), k
    assert 0.0 <= summary["eval_single_attribute_accuracy"] <= 1.0
    assert summary["metric"] == "eval_single_attribute_accuracy"


@pytest.mark.slow
def test_ema_params_written_and_not_the_raw_params(run):
    from flax import serialization

    workdir, _ = run
    with open(os.path.join(workdir, "ema_params.msgpack"), "rb") as f:
        ema = serialization.msgpack_restore(f.read())
    _, raw = ckpt_lib.read_params(os.path.join(workdir, "checkpoints"))
    leaves = zip(jax.tree.leaves(ema), jax.tree.leaves(raw))
    assert max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in leaves) > 1e-6


@pytest.mark.slow
def test_sample_command_writes_a_grid_deterministically(run, tmp_path):
    """With the run's own sampler settings (its config's), so the sampler compiled for training is reused."""
    from train import sample

    workdir, _ = run
    out = str(tmp_path / "grid.png")
    prompts = ["a red circle on the left", "two blue squares right of a green triangle"]
    sample.main(["--workdir", workdir, "--prompt", prompts[0], "--prompt", prompts[1], "--out", out,
                 "--per_prompt", "2"])
    w, h = Image.open(out).size
    assert w == 4 * (2 * (16 + 2) + 2) and h > 4 * (2 * (16 + 2) + 2)   # 2 per row, scale 4, caption bands
    a = sample.sample(workdir, prompts, str(tmp_path / "a.png"), seed=5)
    b = sample.sample(workdir, prompts, str(tmp_path / "b.png"), seed=5)
    np.testing.assert_array_equal(a, b)
    c = sample.sample(workdir, prompts, str(tmp_path / "c.png"), seed=6)
    assert np.abs(a - c).max() > 0   # the seed changes the noise
    with pytest.raises(ValueError, match="--prompt"):
        sample.sample(workdir, [], out)
    with pytest.raises(FileNotFoundError, match="--workdir"):
        sample.sample(str(tmp_path), prompts, out)


@pytest.mark.slow
def test_sample_command_other_samplers_and_guidance(run, tmp_path):
    from train import sample

    workdir, _ = run
    prompts = ["a red circle on the left", "two blue squares right of a green triangle"]
    d = sample.sample(workdir, prompts, str(tmp_path / "d.png"), steps=3, sampler="dpmpp_2m", seed=5)
    a = sample.sample(workdir, prompts, str(tmp_path / "a.png"), steps=3, guidance=2.0, seed=5)
    c = sample.sample(workdir, prompts, str(tmp_path / "c.png"), steps=3, guidance=1.0, seed=5)
    assert np.abs(a - c).max() > 0 and np.abs(a - d).max() > 0   # guidance and the sampler change the samples
    assert np.isfinite(d).all() and np.abs(d).max() <= 1.0


def test_scorer_reads_real_images():
    from jaxmm.data import shapes
    from jaxmm.data.shapes_scorer import predict, train_scorer

    # 16 px keeps this test cheap; three objects in a 16-px column are ~3 px wide, so shape is the hard head here
    # (measured 0.75 at these settings, chance 1/3; at the demo's 32 px the scorer is trained for 600 steps)
    params, report = train_scorer(seed=0, size=16, steps=150, train_images=1000, eval_images=200)
    assert report["color"] >= 0.95 and report["count"] >= 0.95 and report["shape"] >= 0.65, report
    ds = shapes.Shapes(40, seed=9, split="other", size=16, max_count=3)
    truth = np.stack([ds[i]["halves"] for i in range(40)])
    pred = predict(params, np.stack([ds[i]["image"] for i in range(40)]))
    assert shapes.attribute_accuracy(pred, truth)["attribute_accuracy"] >= 0.8   # 0.93 measured on 500


def test_clip_text_tower_from_a_folder():
    """model.text_init: the tiny HF CLIP text fixture becomes the `text_encoder` subtree (every weight equal to
    jaxmm.hf.from_pretrained's), the UNet's cross-attention width follows the tower's."""
    import flax.linen as nn

    from configs.diffusion import get_config
    from jaxmm.hf import from_pretrained
    from train import tasks

    folder = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf", "clip_text")
    config = tasks.full_config(get_config("tiny"))
    config.model.text_init, config.model.text_tokenizer = folder, "words"
    task = tasks.build("diffusion.t2i", config)
    model = task.build_model(config)
    assert model.unet_config.cross_attention_dim == 32 == model.text_config.d_model
    batch = {k: np.stack([v] * 2) for k, v in task.datasets(config)[0][0].items()}
    shapes = nn.meta.unbox(jax.eval_shape(lambda r: task.init_variables(model, batch, r), jax.random.PRNGKey(0))["params"])
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    params = task.initial_params(params)
    ref = from_pretrained(folder)[1]
    for (pa, a), (pb, b) in zip(jax.tree_util.tree_flatten_with_path(params["text_encoder"])[0],
                                jax.tree_util.tree_flatten_with_path(ref)[0]):
        assert pa == pb
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(params["unet"]))
    config.model.text_tokenizer = "bpe"
    with pytest.raises(ValueError, match="text_tokenizer"):
        task.build_model(config)


def test_sampler_is_memoised_per_settings():
    """The grid hook, the evaluation and `train.sample` share one jitted sampler (one compilation) when the model
    and the settings agree; a different guidance, sampler or step count is a different program."""
    from configs.diffusion import get_config
    from train import tasks
    from train.tasks import diffusion

    config = tasks.full_config(get_config("tiny"))
    fn = diffusion.sampler_fn(diffusion.build_model(config), config)
    assert diffusion.sampler_fn(diffusion.build_model(config), config) is fn   # a rebuilt, equal model
    assert diffusion.sampler_fn(diffusion.build_model(config), config, steps=2, guidance=config.task_args.guidance,
                                sampler=config.task_args.sampler) is fn
    for kw in (dict(guidance=2.0), dict(sampler="dpmpp_2m"), dict(steps=3)):
        assert diffusion.sampler_fn(diffusion.build_model(config), config, **kw) is not fn, kw


def test_coord_and_text_channels_reach_the_unet():
    """model.coord_channels / text_channels: what the UNet is called with is the image, then the pixel centres'
    x and y in [-1, 1], then a Dense projection of the context's token mean at every pixel (NumPy float64
    references). The UNet itself is intercepted (replaced by zeros), so the test costs no UNet compilation."""
    import flax.linen as nn

    from configs.diffusion import get_config
    from jaxmm.models.text_to_image import TextToImage, add_coord_channels
    from jaxmm.models.unet import UNet
    from train import tasks
    from train.tasks import diffusion

    x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (2, 4, 6, 3)), np.float32)
    col = ((np.arange(6) + 0.5) / 6 * 2 - 1)[None, :].repeat(4, 0)
    row = ((np.arange(4) + 0.5) / 4 * 2 - 1)[:, None].repeat(6, 1)
    ref = np.concatenate([x, np.broadcast_to(np.stack([col, row], -1), (2, 4, 6, 2))], -1)
    np.testing.assert_allclose(np.asarray(add_coord_channels(x)), ref, atol=1e-7)

    config = tasks.full_config(get_config("tiny"))
    config.model.coord_channels, config.model.text_channels = True, 3
    model = diffusion.build_model(config)
    assert model.coord_channels and model.text_channels == 3 and model.unet_config.in_channels == 8
    seen = []

    def intercept(next_fun, args, kwargs, context):
        if isinstance(context.module, UNet) and context.method_name == "__call__":
            seen.append(np.asarray(args[0]))
            return jax.numpy.zeros(args[0].shape[:3] + (3,))
        return next_fun(*args, **kwargs)

    xt = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (2, 16, 16, 3)))
    ctx = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (2, 5, model.text_config.d_model)))
    with nn.intercept_methods(intercept):
        params = model.init(jax.random.PRNGKey(0), xt, 10, ctx, method=TextToImage.denoise)["params"]
        model.apply({"params": params}, xt, 10, ctx, method=TextToImage.denoise)
    w = {k: np.asarray(nn.meta.unbox(v), np.float64) for k, v in params["text_to_channels"].items()}
    text = ctx.astype(np.float64).mean(1) @ w["kernel"] + w["bias"]                     # [2, 3]
    coords = np.asarray(add_coord_channels(np.zeros((2, 16, 16, 0), np.float32)), np.float64)
    want = np.concatenate([xt, coords, np.broadcast_to(text[:, None, None], (2, 16, 16, 3))], -1)
    assert seen[-1].shape == want.shape
    np.testing.assert_allclose(seen[-1], want, atol=1e-5)
