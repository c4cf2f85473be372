"""The conditional-diffusion pieces every text/image-conditioned task shares (t2i, ARTIST, Toffee): the training
loss with condition dropout for classifier-free guidance, and guided sampling with a named sampler. Pure
functions over a `model_fn(x_t, t, context)`; EMA of the params is the trainer's `train.hooks.ema_hook`."""
from __future__ import annotations

import jax

from jaxmm.checks import fail
from jaxmm.diffusion.losses import cfg_model_fn, diffusion_loss, drop_condition
from jaxmm.diffusion.samplers import sample_ddim, sample_ddpm, sample_dpmpp_2m
from jaxmm.diffusion.schedules import Schedule, alphas_cumprod

SAMPLERS = ("ddim", "dpmpp_2m", "ddpm")


def conditional_loss(model_fn, schedule: Schedule, x0, context, null_context, key, p_uncond: float = 0.1):
    """Diffusion loss (target from `schedule.prediction_type`) of `model_fn(x_t, t, context)` with each example's
    context replaced by `null_context` (one example's shape) with probability `p_uncond` (Ho & Salimans 2022).
    Returns (loss, aux) as `diffusion_loss`, aux also holding the `dropped` fraction."""
    kd, kl = jax.random.split(key)
    ctx = drop_condition(kd, context, null_context, p_uncond)
    loss, aux = diffusion_loss(lambda x, t: model_fn(x, t, ctx), schedule.prediction_type,
                               alphas_cumprod(schedule), x0, kl)
    return loss, aux


def generate(model_fn, schedule: Schedule, noise, context, null_context, *, sampler: str = "ddim",
             steps: int = 25, guidance: float = 1.0, key=None):
    """Samples from `noise` [B, H, W, C] conditioned on `context` [B, ...]: `sampler` in SAMPLERS for `steps`
    steps; `guidance` != 1 applies classifier-free guidance against `null_context` (one batched call per step
    on [cond; uncond]); guidance 1 is the plain conditional model. `key` only for "ddpm"."""
    if sampler not in SAMPLERS:
        fail("sampler", f"one of {SAMPLERS}", repr(sampler))
    if not (isinstance(steps, int) and steps >= 1):
        fail("steps", "an int >= 1", steps)
    if guidance == 1.0:
        fn = lambda x, t: model_fn(x, t, context)  # noqa: E731
    else:
        fn = cfg_model_fn(model_fn, guidance, context, null_context)
    if sampler == "ddim":
        return sample_ddim(fn, schedule, noise, steps)
    if sampler == "dpmpp_2m":
        return sample_dpmpp_2m(fn, schedule, noise, steps)
    if key is None:
        fail("key", "a PRNG key for sampler 'ddpm'", None)
    return sample_ddpm(fn, schedule, noise, steps, key)
