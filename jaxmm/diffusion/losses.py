"""Training targets and loss for epsilon-, v- and x0-prediction, and condition dropout for classifier-free
guidance. Pure functions of `alphas_cumprod` (from `schedules.alphas_cumprod`), x0, integer timesteps and noise."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmm.checks import fail


def _per_example(a, x):
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def q_sample(alphas_cumprod, x0, t, noise):
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise, t an int array of shape (batch,)."""
    a = _per_example(jnp.asarray(alphas_cumprod)[t], x0)
    return a ** 0.5 * x0 + (1 - a) ** 0.5 * noise


def v_target(alphas_cumprod, x0, t, noise):
    """v = alpha_t noise - sigma_t x0 with alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t)."""
    a = _per_example(jnp.asarray(alphas_cumprod)[t], x0)
    return a ** 0.5 * noise - (1 - a) ** 0.5 * x0


def prediction_target(prediction_type: str, alphas_cumprod, x0, t, noise):
    """What the model should output at (x_t, t) for `prediction_type` epsilon / v_prediction / sample."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return v_target(alphas_cumprod, x0, t, noise)
    if prediction_type == "sample":
        return x0
    fail("prediction_type", "'epsilon', 'v_prediction' or 'sample'", repr(prediction_type))


def diffusion_loss(model_fn, prediction_type: str, alphas_cumprod, x0, key):
    """Mean squared error of `model_fn(x_t, t)` against the target, t ~ U{0..T-1} and noise ~ N(0, 1) per example.
    Returns (loss, aux) with aux = {"t", "noise", "x_t"}."""
    kt, kn = jax.random.split(key)
    t = jax.random.randint(kt, (x0.shape[0],), 0, jnp.asarray(alphas_cumprod).shape[0])
    noise = jax.random.normal(kn, x0.shape, x0.dtype)
    x_t = q_sample(alphas_cumprod, x0, t, noise)
    target = prediction_target(prediction_type, alphas_cumprod, x0, t, noise)
    pred = model_fn(x_t, t)
    loss = jnp.mean((pred.astype(jnp.float32) - target.astype(jnp.float32)) ** 2)
    return loss, {"t": t, "noise": noise, "x_t": x_t}


def drop_condition(key, context, null_context, p: float):
    """Condition dropout for classifier-free guidance: each example's `context` (batch first) is replaced by
    `null_context` (one example's shape, or broadcastable to it) with probability `p`."""
    if not 0.0 <= p <= 1.0:
        fail("p", "a probability in [0, 1]", p)
    null = jnp.broadcast_to(jnp.asarray(null_context, context.dtype), context.shape[1:])
    drop = jax.random.bernoulli(key, p, (context.shape[0],))
    return jnp.where(_per_example(drop, context), null[None], context)


def cfg_model_fn(model_fn, scale: float, context, null_context):
    """Classifier-free guidance as a `model_fn(x, t)` for the samplers: one batched call of
    `model_fn(x, t, context)` on [x; x] with [context; null], then uncond + scale * (cond - uncond)."""
    null = jnp.broadcast_to(jnp.asarray(null_context, context.dtype), context.shape)
    both = jnp.concatenate([context, null], axis=0)

    def guided(x, t):
        t2 = jnp.concatenate([t, t]) if jnp.ndim(t) else t
        out = model_fn(jnp.concatenate([x, x], axis=0), t2, both)
        cond, uncond = jnp.split(out, 2, axis=0)
        return uncond + scale * (cond - uncond)
    return guided
