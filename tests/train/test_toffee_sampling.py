"""Toffee's DDIM schedule (train/tasks/toffee.py SCHEDULE) clips its x0 prediction. The ε model here is a stand-in
for a trained network: the exact ε of a target image, squashed to a network's output range (4·tanh(ε/4), so it
cannot follow inputs far outside the training distribution), plus a 1% error. Clipped, the sample lands near the
image; unclipped, the first trailing step (alpha_bar = 2.4e-9 at t = 999) multiplies the error by ~2e4, the model
cannot pull the sample back, and the result is saturated noise (what every ToffeeNet sample was before the fix)."""
import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

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


def _eps_of(x0):   # the exact ε of a fixed clean image: a perfect denoiser that always answers x0
    ac = jnp.asarray(diffusion.alphas_cumprod(SCHEDULE))
    return lambda x, t: (x - jnp.sqrt(ac[t]) * x0) / jnp.sqrt(1 - ac[t])


def test_refine_ddim_closed_forms():
    from train.tasks.toffee import refine_ddim

    rng = np.random.default_rng(2)
    draft, truth = (jnp.asarray(rng.uniform(-0.9, 0.9, (2, 8, 8, 3)), jnp.float32) for _ in range(2))
    noise = jnp.asarray(rng.standard_normal((2, 8, 8, 3)), jnp.float32)
    # a denoiser that knows the true image turns the noised draft into it; one that answers the draft returns it
    np.testing.assert_allclose(refine_ddim(_eps_of(truth), SCHEDULE, draft, noise, 199, 4), truth, atol=2e-5)
    np.testing.assert_allclose(refine_ddim(_eps_of(draft), SCHEDULE, draft, noise, 199, 4), draft, atol=2e-5)
    # start = T - 1 is the library's plain DDIM from the noised image (same timesteps 999, 899, ..., 99)
    model = lambda x, t: 0.5 * x + 0.01 * t / 1000   # noqa: E731   any deterministic model
    ac = jnp.asarray(diffusion.alphas_cumprod(SCHEDULE))
    x_t = diffusion.q_sample(ac, draft, jnp.full((2,), 999), noise)
    np.testing.assert_allclose(refine_ddim(model, SCHEDULE, draft, noise, 999, 10),
                               diffusion.sample_ddim(model, SCHEDULE, x_t, 10), atol=1e-6)
    with pytest.raises(ValueError, match=r"refine_ddim\(start, steps\)"):
        refine_ddim(model, SCHEDULE, draft, noise, 200, 4)
