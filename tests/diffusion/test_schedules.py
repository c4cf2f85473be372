"""Schedules against diffusers' tables and float64 closed forms; config reading; training targets and
guidance against float64 numpy."""
from __future__ import annotations

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm import diffusion
from jaxmm.diffusion import x0_and_eps

FIX = np.load(pathlib.Path(__file__).parents[1] / "fixtures" / "diffusion_schedulers.npz")
CONFIGS = json.loads(str(FIX["meta"]))["configs"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_alphas_cumprod_equal_diffusers_bit_for_bit(name):
    np.testing.assert_array_equal(diffusion.alphas_cumprod(diffusion.Schedule(**CONFIGS[name])),
                                  FIX[f"{name}/alphas_cumprod"])


def test_betas_match_float64_closed_forms():
    T = 1000
    lin = np.linspace(1e-4, 0.02, T)
    sl = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T) ** 2
    f = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2   # noqa: E731
    i = np.arange(T)
    cos = np.minimum(1 - f((i + 1) / T) / f(i / T), 0.999)
    for sched, want in ((diffusion.Schedule(), lin),
                        (diffusion.Schedule(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012), sl),
                        (diffusion.Schedule(beta_schedule="squaredcos_cap_v2"), cos)):
        np.testing.assert_allclose(diffusion.betas(sched), want, rtol=3e-7, err_msg=sched.beta_schedule)
        np.testing.assert_allclose(diffusion.alphas_cumprod(sched), np.cumprod(1 - want), rtol=2e-6, atol=1e-12)
    assert diffusion.betas(diffusion.Schedule(beta_schedule="squaredcos_cap_v2"))[-1] == np.float32(0.999)


def test_timestep_spacings_by_hand():
    sd = diffusion.Schedule(timestep_spacing="leading", steps_offset=1)
    assert diffusion.timesteps(sd, 5, "ddim").tolist() == [801, 601, 401, 201, 1]
    assert diffusion.timesteps(diffusion.Schedule(timestep_spacing="trailing"), 4).tolist() == [999, 749, 499, 249]
    assert diffusion.timesteps(diffusion.Schedule(timestep_spacing="linspace"), 4).tolist() == [999, 666, 333, 0]
    # DPM-Solver spaces num_steps + 1 points and drops t = 0
    assert diffusion.timesteps(diffusion.Schedule(timestep_spacing="linspace"), 3,
                               "dpmsolver++").tolist() == [999, 666, 333]
    assert diffusion.timesteps(diffusion.Schedule(timestep_spacing="leading"), 3,
                               "dpmsolver++").tolist() == [750, 500, 250]
    with pytest.raises(ValueError, match="num_steps"):
        diffusion.timesteps(sd, 0)
    with pytest.raises(ValueError, match="sampler"):
        diffusion.timesteps(sd, 5, "euler")


def test_from_config_dict_file_folder_and_errors(tmp_path):
    cfg = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
           "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
           "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
           "clip_sample": False}
    want = diffusion.Schedule(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              set_alpha_to_one=False, steps_offset=1)
    assert diffusion.from_config(cfg) == want
    folder = tmp_path / "pipe" / "scheduler"
    folder.mkdir(parents=True)
    (folder / "scheduler_config.json").write_text(json.dumps(cfg))
    assert diffusion.from_config(folder / "scheduler_config.json") == want
    assert diffusion.from_config(folder) == want
    assert diffusion.from_config(tmp_path / "pipe") == want
    hash(want)   # usable as a static jit argument
    with pytest.raises(ValueError, match="thresholding"):
        diffusion.from_config({**cfg, "thresholding": True})
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        diffusion.from_config({**cfg, "use_karras_sigmas": True})
    with pytest.raises(ValueError, match="frobnicate"):
        diffusion.from_config({**cfg, "frobnicate": 1})
    with pytest.raises(ValueError, match="beta_schedule"):
        diffusion.from_config({**cfg, "beta_schedule": "sigmoid"})
    with pytest.raises(ValueError, match="prediction_type"):
        diffusion.Schedule(prediction_type="flow_prediction")
    with pytest.raises(ValueError, match="scheduler_config.json"):
        diffusion.from_config(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="trained_betas"):
        diffusion.Schedule(num_train_timesteps=10, trained_betas=[0.1] * 9)


def _np_ac(T=1000):
    return np.cumprod(1 - np.linspace(1e-4, 0.02, T))


def test_q_sample_and_targets_against_float64():
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(3, 4, 4, 2))
    noise = rng.normal(size=x0.shape)
    t = np.array([0, 500, 999])
    ac64 = _np_ac()
    a = ac64[t][:, None, None, None]
    ac = jnp.asarray(ac64, jnp.float32)
    f32 = lambda v: jnp.asarray(v, jnp.float32)   # noqa: E731
    xt = diffusion.q_sample(ac, f32(x0), t, f32(noise))
    np.testing.assert_allclose(xt, np.sqrt(a) * x0 + np.sqrt(1 - a) * noise, atol=2e-6)
    v = diffusion.prediction_target("v_prediction", ac, f32(x0), t, f32(noise))
    np.testing.assert_allclose(v, np.sqrt(a) * noise - np.sqrt(1 - a) * x0, atol=2e-6)
    np.testing.assert_array_equal(diffusion.prediction_target("epsilon", ac, x0, t, noise), noise)
    np.testing.assert_array_equal(diffusion.prediction_target("sample", ac, x0, t, noise), x0)
    # the samplers' conversion inverts each target exactly (float64 maths): x0 and eps recovered from x_t
    xt64 = np.sqrt(a) * x0 + np.sqrt(1 - a) * noise
    for kind, target in (("epsilon", noise), ("v_prediction", np.sqrt(a) * noise - np.sqrt(1 - a) * x0),
                         ("sample", x0)):
        got_x0, got_eps = x0_and_eps(kind, target, xt64, a)
        np.testing.assert_allclose(got_x0, x0, atol=1e-9 if kind != "epsilon" else 1e-6, err_msg=kind)
        np.testing.assert_allclose(got_eps, noise, atol=1e-9 if kind != "sample" else 1e-6, err_msg=kind)
    with pytest.raises(ValueError, match="prediction_type"):
        diffusion.prediction_target("x0", ac, x0, t, noise)


def test_diffusion_loss_is_the_mse_to_the_target():
    ac = jnp.asarray(_np_ac(), jnp.float32)
    x0 = jax.random.normal(jax.random.key(0), (4, 3, 3, 2))
    w = 0.7
    loss, aux = jax.jit(lambda x: diffusion.diffusion_loss(lambda xt, t: w * xt, "v_prediction", ac, x,
                                                           jax.random.key(1)))(x0)
    a = np.asarray(ac, np.float64)[np.asarray(aux["t"])][:, None, None, None]
    n, x = np.asarray(aux["noise"], np.float64), np.asarray(x0, np.float64)
    xt = np.sqrt(a) * x + np.sqrt(1 - a) * n
    want = np.mean((w * xt - (np.sqrt(a) * n - np.sqrt(1 - a) * x)) ** 2)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert len(set(np.asarray(aux["t"]).tolist())) > 1


def test_drop_condition():
    ctx = jax.random.normal(jax.random.key(0), (4000, 3, 2))
    null = jnp.full((3, 2), 7.0)
    k = jax.random.key(1)
    np.testing.assert_array_equal(diffusion.drop_condition(k, ctx, null, 0.0), ctx)
    np.testing.assert_array_equal(diffusion.drop_condition(k, ctx, null, 1.0), jnp.broadcast_to(null, ctx.shape))
    out = np.asarray(diffusion.drop_condition(k, ctx, null, 0.25))
    dropped = np.all(out == 7.0, axis=(1, 2))
    kept = np.all(out == np.asarray(ctx), axis=(1, 2))
    assert np.all(dropped ^ kept)
    assert abs(dropped.mean() - 0.25) < 0.03
    with pytest.raises(ValueError, match="p"):
        diffusion.drop_condition(k, ctx, null, 1.5)


def test_cfg_model_fn_one_batched_call():
    calls = []

    def model_fn(x, t, c):   # a conditional model: output depends on context
        calls.append(x.shape[0])
        return 0.5 * x + c.mean(axis=(1, 2))[:, None, None, None] + 0.001 * t
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
    ctx = jax.random.normal(jax.random.key(1), (2, 5, 8))
    null = jnp.zeros((5, 8))
    scale = 7.5
    got = diffusion.cfg_model_fn(model_fn, scale, ctx, null)(x, jnp.int32(10))
    cond = np.asarray(model_fn(x, 10, ctx), np.float64)
    uncond = np.asarray(model_fn(x, 10, jnp.zeros_like(ctx)), np.float64)
    np.testing.assert_allclose(got, uncond + scale * (cond - uncond), atol=1e-5)
    assert calls[0] == 4   # cond and uncond in one batch
    assert not np.allclose(got, cond)
