"""Toffee's DDIM schedule (train/tasks/toffee.py SCHEDULE) clips its x0 prediction. The ε model here is a stand-in
for a trained network: the exact ε of a target image, squashed to a network's output range (4·tanh(ε/4), so it
cannot follow inputs far outside the training distribution), plus a 1% error. Clipped, the sample lands near the
image; unclipped, the first trailing step (alpha_bar = 2.4e-9 at t = 999) multiplies the error by ~2e4, the model
cannot pull the sample back, and the result is saturated noise (what every ToffeeNet sample was before the fix)."""
import dataclasses

import jax.numpy as jnp
import numpy as np

from jaxmm import diffusion
from train.tasks.toffee import SCHEDULE


def _sample(schedule, x0, err):
    ac = jnp.asarray(diffusion.alphas_cumprod(schedule))

    def eps_model(x, t):
        a = ac[t]
        return 4 * jnp.tanh((x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a) / 4) + err

    noise = jnp.asarray(np.random.default_rng(0).standard_normal(x0.shape), jnp.float32)
    return np.asarray(diffusion.sample_ddim(eps_model, schedule, noise, 10))


def test_clipped_ddim_recovers_the_image_under_a_small_eps_error():
    x0 = jnp.asarray(np.random.default_rng(1).uniform(-0.9, 0.9, (2, 8, 8, 3)), jnp.float32)
    clipped = _sample(SCHEDULE, x0, 0.01)
    unclipped = _sample(dataclasses.replace(SCHEDULE, clip_sample=False), x0, 0.01)
    # measured: mean |error| 0.018 clipped, 700 unclipped (the squashed model's error blown up by 1/sqrt(alpha_bar))
    assert np.abs(clipped - np.asarray(x0)).mean() < 0.05
    assert np.abs(unclipped - np.asarray(x0)).mean() > 10     # the failure the clip removes


def test_one_step_ddim_returns_the_x0_prediction_at_t_max():
    """The Refiner's one-step mean estimate (train/tasks/toffee.py `ref_mean`: make_sampler with 1 step): a single
    trailing DDIM step lands on alpha_bar = 1, so it returns exactly the x0-model's prediction at t = 999 from the
    noise it was given (clipped to [-1, 1]), not a noisy mix."""
    sched = dataclasses.replace(SCHEDULE, prediction_type="sample")
    rng = np.random.default_rng(2)
    target = jnp.asarray(rng.uniform(-1.3, 1.3, (2, 8, 8, 3)), jnp.float32)

    def x0_model(x, t):   # depends on its input and on t, so a second call, a mix or another t would show
        return target + 0.01 * x + 1e-3 * jnp.reshape(t, (-1, 1, 1, 1)) / 999

    noise = jnp.asarray(rng.standard_normal(target.shape), jnp.float32)
    out = np.asarray(diffusion.sample_ddim(x0_model, sched, noise, 1))
    np.testing.assert_allclose(out, np.clip(np.asarray(target + 0.01 * noise) + 1e-3, -1, 1), atol=1e-6)
