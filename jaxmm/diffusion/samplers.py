"""DDPM, DDIM (eta) and DPM-Solver++(2M) as diffusers' schedulers compute them, as single pure `*_step`
functions and as whole samplers (`lax.scan` over the timesteps; jit the call for one compiled program):

    x = jax.jit(lambda p, x: sample_ddim(lambda x, t: unet.apply({"params": p}, x, t, ctx), sched, x, 50))(p, x)

`model_fn(x, t) -> prediction` gets `t` as an int32 scalar; the prediction is what `schedule.prediction_type`
says (epsilon, v_prediction or sample). All arithmetic is float32 in diffusers' order of operations.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxmm.checks import fail
from jaxmm.diffusion.schedules import Schedule, alphas_cumprod, dpm_sigmas, timesteps


def x0_and_eps(prediction_type: str, model_output, sample, alpha_prod_t):
    """(predicted x0, predicted eps) from a `prediction_type` model output at `sample` = x_t, a point with cumulative
    alpha `alpha_prod_t` (every sampler's conversion; also lets a model of one prediction type join another's loop)."""
    beta_prod_t = 1 - alpha_prod_t
    if prediction_type == "epsilon":
        return (sample - beta_prod_t ** 0.5 * model_output) / alpha_prod_t ** 0.5, model_output
    if prediction_type == "sample":
        return model_output, (sample - alpha_prod_t ** 0.5 * model_output) / beta_prod_t ** 0.5
    if prediction_type == "v_prediction":
        return (alpha_prod_t ** 0.5 * sample - beta_prod_t ** 0.5 * model_output,
                alpha_prod_t ** 0.5 * model_output + beta_prod_t ** 0.5 * sample)
    fail("prediction_type", "'epsilon', 'v_prediction' or 'sample'", repr(prediction_type))


def _clip(schedule: Schedule, x0):
    r = schedule.clip_sample_range
    return jnp.clip(x0, -r, r) if schedule.clip_sample else x0


def _ac(schedule: Schedule):
    return jnp.asarray(alphas_cumprod(schedule))


# ---------------------------------------------------------------- DDPM

def ddpm_step(schedule: Schedule, model_output, t, prev_t, sample, noise):
    """One ancestral DDPM step from timestep `t` to `prev_t` (-1 at the end: alpha_bar = 1, no noise).
    `noise` ~ N(0, 1) of the sample's shape (diffusers draws it itself). Returns (prev_sample, pred_x0)."""
    ac = _ac(schedule)
    alpha_prod_t = ac[t]
    alpha_prod_t_prev = jnp.where(prev_t >= 0, ac[jnp.maximum(prev_t, 0)], jnp.float32(1.0))
    beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
    current_alpha_t = alpha_prod_t / alpha_prod_t_prev
    current_beta_t = 1 - current_alpha_t
    x0, _ = x0_and_eps(schedule.prediction_type, model_output, sample, alpha_prod_t)
    x0 = _clip(schedule, x0)
    mean = ((alpha_prod_t_prev ** 0.5 * current_beta_t) / beta_prod_t * x0
            + current_alpha_t ** 0.5 * beta_prod_t_prev / beta_prod_t * sample)
    if schedule.variance_type == "fixed_small":
        variance = jnp.maximum((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, 1e-20)
    else:                                   # fixed_large
        variance = current_beta_t
    return mean + jnp.where(t > 0, variance ** 0.5, 0.0) * noise, x0


def sample_ddpm(model_fn, schedule: Schedule, x, num_steps: int, key):
    """Ancestral DDPM sampling over `num_steps` spaced timesteps from the noise `x`; `key` draws the step noise."""
    ts = timesteps(schedule, num_steps, "ddpm")
    prev = np.concatenate([ts[1:], [-1]]).astype(np.int32)
    noises = jax.random.normal(key, (len(ts),) + x.shape, jnp.float32)
    return sample_ddpm_with_noise(model_fn, schedule, x, ts, prev, noises)


def sample_ddpm_with_noise(model_fn, schedule: Schedule, x, ts, prev_ts, noises):
    """`sample_ddpm` with the timesteps and the per-step noise given (noises[i] is step i's)."""
    def body(x, inp):
        t, prev_t, noise = inp
        x, _ = ddpm_step(schedule, model_fn(x, t), t, prev_t, x, noise)
        return x, None
    x, _ = jax.lax.scan(body, x, (jnp.asarray(ts), jnp.asarray(prev_ts), noises))
    return x


# ---------------------------------------------------------------- DDIM

def ddim_step(schedule: Schedule, model_output, t, sample, num_steps: int, eta=0.0, noise=None):
    """One DDIM step from `t` to `t - num_train_timesteps // num_steps` (diffusers' rule, whatever the spacing;
    below 0 it lands on alpha_bar = 1, or alpha_bar[0] when `set_alpha_to_one` is False). With eta > 0 pass
    `noise` ~ N(0, 1). Returns (prev_sample, pred_x0)."""
    ac = _ac(schedule)
    prev_t = t - schedule.num_train_timesteps // num_steps
    final = jnp.float32(1.0) if schedule.set_alpha_to_one else ac[0]
    alpha_prod_t = ac[t]
    alpha_prod_t_prev = jnp.where(prev_t >= 0, ac[jnp.maximum(prev_t, 0)], final)
    beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
    x0, eps = x0_and_eps(schedule.prediction_type, model_output, sample, alpha_prod_t)
    x0 = _clip(schedule, x0)
    variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
    std = eta * variance ** 0.5
    prev_sample = alpha_prod_t_prev ** 0.5 * x0 + (1 - alpha_prod_t_prev - std ** 2) ** 0.5 * eps
    if noise is not None:
        prev_sample = prev_sample + std * noise
    elif not (isinstance(eta, (int, float)) and eta == 0):
        fail("noise", "an N(0, 1) array of the sample's shape when eta > 0", None)
    return prev_sample, x0


def sample_ddim(model_fn, schedule: Schedule, x, num_steps: int, eta: float = 0.0, key=None, noises=None):
    """DDIM sampling in `num_steps` steps from the noise `x`. eta = 0: deterministic; eta > 0 needs `key`
    (or the per-step `noises`, shape (num_steps, *x.shape))."""
    ts = jnp.asarray(timesteps(schedule, num_steps, "ddim"))
    if eta != 0 and noises is None:
        if key is None:
            fail("key", "a PRNG key when eta > 0 and no noises are given", None)
        noises = jax.random.normal(key, (num_steps,) + x.shape, jnp.float32)

    def body(x, inp):
        t, noise = inp
        x, _ = ddim_step(schedule, model_fn(x, t), t, x, num_steps, eta, noise)
        return x, None
    x, _ = jax.lax.scan(body, x, (ts, noises))
    return x


# ---------------------------------------------------------------- DPM-Solver++(2M)

def _alpha_sigma(sigma):
    alpha = 1 / ((sigma ** 2 + 1) ** 0.5)
    return alpha, sigma * alpha


def dpmpp_2m_step(schedule: Schedule, model_output, sample, sigma_s1, sigma_s0, sigma_t, prev_x0, first_order):
    """One DPM-Solver++(2M) (midpoint) step from noise level `sigma_s0` to `sigma_t` (sigma = sqrt((1 - a)/a));
    `prev_x0` and `sigma_s1` are the previous step's x0 prediction and level. `first_order` (bool) takes the
    DPM-Solver++ first-order (DDIM) update instead (first step, and diffusers' lower_order_final rule).
    Returns (prev_sample, x0 prediction for the next step's `prev_x0`)."""
    alpha_s0, sig_s0 = _alpha_sigma(sigma_s0)
    if schedule.prediction_type == "epsilon":       # diffusers' expressions in alpha_t, sigma_t (not alpha_bar)
        x0 = (sample - sig_s0 * model_output) / alpha_s0
    elif schedule.prediction_type == "v_prediction":
        x0 = alpha_s0 * sample - sig_s0 * model_output
    else:
        x0, _ = x0_and_eps(schedule.prediction_type, model_output, sample, alpha_s0 ** 2)
    alpha_t, sig_t = _alpha_sigma(sigma_t)
    alpha_s1, sig_s1 = _alpha_sigma(sigma_s1)
    lambda_t = jnp.log(alpha_t) - jnp.log(sig_t)            # +inf at a final sigma of 0: exp(-h) = 0 below
    lambda_s0 = jnp.log(alpha_s0) - jnp.log(sig_s0)
    lambda_s1 = jnp.log(alpha_s1) - jnp.log(sig_s1)
    h = lambda_t - lambda_s0
    first = (sig_t / sig_s0) * sample - (alpha_t * (jnp.exp(-h) - 1.0)) * x0
    # r0 is 0 at the first step (no previous level): keep the unused branch finite so that jnp.where's
    # gradient stays finite too
    r0 = jnp.where(first_order, 1.0, (lambda_s0 - lambda_s1) / h)
    d1 = (1.0 / r0) * (x0 - prev_x0)
    second = first - 0.5 * (alpha_t * (jnp.exp(-h) - 1.0)) * d1
    return jnp.where(first_order, first, second), x0


def dpm_orders(schedule: Schedule, num_steps: int) -> np.ndarray:
    """Per step, True where diffusers' DPMSolverMultistepScheduler (solver_order=2) takes a first-order step:
    the first step, and the last one when euler_at_final, or lower_order_final with < 15 steps, or
    final_sigmas_type="zero"."""
    first = np.zeros(num_steps, bool)
    first[0] = True
    if schedule.euler_at_final or (schedule.lower_order_final and num_steps < 15) \
            or schedule.final_sigmas_type == "zero":
        first[-1] = True
    return first


def sample_dpmpp_2m(model_fn, schedule: Schedule, x, num_steps: int):
    """DPM-Solver++(2M) sampling in `num_steps` steps from the noise `x` (deterministic)."""
    ts = timesteps(schedule, num_steps, "dpmsolver++")
    sig = dpm_sigmas(schedule, ts)
    s1 = np.concatenate([sig[:1], sig[:-2]])      # previous level (unused at the first-order first step)
    inputs = tuple(jnp.asarray(a) for a in (ts, s1, sig[:-1], sig[1:], dpm_orders(schedule, len(ts))))

    def body(carry, inp):
        x, prev_x0 = carry
        t, sigma_s1, sigma_s0, sigma_t, first = inp
        x, x0 = dpmpp_2m_step(schedule, model_fn(x, t), x, sigma_s1, sigma_s0, sigma_t, prev_x0, first)
        return (x, x0), None
    (x, _), _ = jax.lax.scan(body, (x, jnp.zeros_like(x)), inputs)
    return x
