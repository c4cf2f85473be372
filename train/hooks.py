"""Reusable hooks for `Task.hooks` / `Task.step_hooks` (train/task.py)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from train.task import StepHook


def ema_hook(decay: float, key: str = "ema") -> StepHook:
    """Exponential moving average of the params, kept in float32 in `state.extra[key]`: starts at the initial
    params and after each step becomes `decay * ema + (1 - decay) * params`. Evaluate with
    `state.extra[key]` in place of `state.params`."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"ema_hook: expected decay in [0, 1), got {decay!r}")

    def init(params):
        return {key: jax.tree.map(lambda p: jnp.array(p, jnp.float32, copy=True), params)}

    def fn(state, batch, updates, step):
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(jnp.float32),
                           state.extra[key], state.params)
        return state.replace(extra={**state.extra, key: ema})

    return StepHook(fn, init, name=f"ema_{key}")
