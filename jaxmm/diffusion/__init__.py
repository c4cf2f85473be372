"""Diffusion core (issue 17): diffusers-exact noise schedules, training targets, samplers and guidance.

    from jaxmm import diffusion
    sched = diffusion.from_config("sd/scheduler")            # or diffusion.Schedule(beta_schedule="scaled_linear", ...)
    ac = diffusion.alphas_cumprod(sched)
    loss, aux = diffusion.diffusion_loss(lambda x, t: model(x, t), sched.prediction_type, ac, x0, key)
    fn = diffusion.cfg_model_fn(lambda x, t, c: unet(x, t, c), 7.5, context, null_context)
    x = jax.jit(lambda x: diffusion.sample_dpmpp_2m(fn, sched, x, 20))(noise)

The UNet and VAE live in jaxmm.models; EMA of the params is the trainer's `train.hooks.ema_hook`;
sample grids: `diffusion.save_grid(images, path, labels=prompts)`. Conditional training and guided sampling shared
by the text/image-conditioned tasks: `diffusion.conditional_loss(model_fn, sched, x0, ctx, null, key, p_uncond)`,
`diffusion.generate(model_fn, sched, noise, ctx, null, sampler="dpmpp_2m", steps=25, guidance=3.0)`;
FID: `jaxmm.metrics.fid.frechet_distance(feats_a, feats_b)` (the feature network is the caller's).
"""
from jaxmm.diffusion.grid import image_grid, save_grid
from jaxmm.diffusion.losses import (cfg_model_fn, diffusion_loss, drop_condition, prediction_target, q_sample,
                                    v_target)
from jaxmm.diffusion.samplers import (ddim_step, ddpm_step, dpm_orders, dpmpp_2m_step, sample_ddim, sample_ddpm,
                                      sample_ddpm_with_noise, sample_dpmpp_2m, x0_and_eps)
from jaxmm.diffusion.schedules import Schedule, alphas_cumprod, betas, dpm_sigmas, from_config, timesteps
from jaxmm.diffusion.training import SAMPLERS, conditional_loss, generate

__all__ = ["Schedule", "alphas_cumprod", "betas", "dpm_sigmas", "from_config", "timesteps",
           "cfg_model_fn", "diffusion_loss", "drop_condition", "prediction_target", "q_sample", "v_target",
           "ddim_step", "ddpm_step", "dpm_orders", "dpmpp_2m_step", "sample_ddim", "sample_ddpm",
           "sample_ddpm_with_noise", "sample_dpmpp_2m", "x0_and_eps", "image_grid", "save_grid", "SAMPLERS", "conditional_loss",
           "generate"]
