"""Samplers against diffusers 0.42.1 (fixtures from tests/fixtures/make_diffusion_fixtures.py, torch side env):
every step replayed from diffusers' own input (<= 1e-6) and the whole jitted `lax.scan` sampler from the same
initial noise (<= 1e-5), errors scaled by max(1, max |diffusers|), for 6 schedule configs x {DDPM fixed_small /
fixed_large, DDIM eta 0 / 0.5, DPM-Solver++(2M) 10 / 20 / 4 steps}."""
from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm import diffusion
from jaxmm.diffusion import samplers

FIX = np.load(pathlib.Path(__file__).parents[1] / "fixtures" / "diffusion_schedulers.npz")
CONFIGS = json.loads(str(FIX["meta"]))["configs"]
STEP_TOL, SAMPLE_TOL = 1e-6, 1e-5


def model(x, t):   # the fixtures' analytic model
    return 0.3 * x + 0.1 * t.astype(jnp.float32) / 1000


def sched(name, **kw):
    return diffusion.Schedule(**{**CONFIGS[name], **kw})


ERRORS = {}   # what -> scaled error, for docs/results/diffusion.md (printed with -s)


def _close(got, want, tol, what):
    """max |jax - diffusers| / max(1, max |diffusers|) <= tol: absolute for O(1) samples, relative where a schedule
    with alpha_bar ~ 0 at t = T-1 (cosine, no clipping) makes the analytic model's samples reach ~1e3."""
    err = float(np.max(np.abs(np.asarray(got) - want)) / max(1.0, float(np.max(np.abs(want)))))
    ERRORS[what] = err
    assert err <= tol, f"{what}: max |jax - diffusers| / max(1, |diffusers|) = {err:.3g} > {tol}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_matches_diffusers(name, variance):
    s = sched(name, variance_type=variance)
    key = f"{name}/ddpm" + ("_large" if variance == "fixed_large" else "")
    ts, xs, noise = FIX[key + "/timesteps"], FIX[key + "/xs"], FIX[key + "/noise"]
    np.testing.assert_array_equal(diffusion.timesteps(s, len(ts), "ddpm"), ts)
    prev = np.concatenate([ts[1:], [-1]])
    step = jax.jit(lambda x, t, p, n: diffusion.ddpm_step(s, model(x, t), t, p, x, n)[0])
    for i, t in enumerate(ts):
        _close(step(xs[i], jnp.int32(t), jnp.int32(prev[i]), noise[i]), xs[i + 1], STEP_TOL, f"{key} step {i}")
    got = jax.jit(lambda x: diffusion.sample_ddpm_with_noise(model, s, x, ts, prev, noise))(xs[0])
    _close(got, xs[-1], SAMPLE_TOL, key)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("variant,eta", [("ddim", 0.0), ("ddim_eta", 0.5)])
def test_ddim_matches_diffusers(name, variant, eta):
    s = sched(name)
    key = f"{name}/{variant}"
    ts, xs = FIX[key + "/timesteps"], FIX[key + "/xs"]
    noise = FIX[key + "/noise"] if eta else None
    n = len(ts)
    np.testing.assert_array_equal(diffusion.timesteps(s, n, "ddim"), ts)
    step = jax.jit(lambda x, t, e: diffusion.ddim_step(s, model(x, t), t, x, n, eta, e)[0])
    for i, t in enumerate(ts):
        _close(step(xs[i], jnp.int32(t), None if noise is None else noise[i]), xs[i + 1], STEP_TOL,
               f"{key} step {i}")
    got = jax.jit(lambda x: diffusion.sample_ddim(model, s, x, n, eta=eta, noises=noise))(xs[0])
    _close(got, xs[-1], SAMPLE_TOL, key)


DPM_RUNS = {"dpm": {}, "dpm20": {}, "dpm20_sigma_min": {"final_sigmas_type": "sigma_min"},
            "dpm4_no_lof": {"lower_order_final": False, "final_sigmas_type": "sigma_min"}}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("variant", sorted(DPM_RUNS))
def test_dpmpp_2m_matches_diffusers(name, variant):
    s = sched(name, **DPM_RUNS[variant])
    key = f"{name}/{variant}"
    ts, xs, sig_ref = FIX[key + "/timesteps"], FIX[key + "/xs"], FIX[key + "/sigmas"]
    n = len(ts)
    np.testing.assert_array_equal(diffusion.timesteps(s, n, "dpmsolver++"), ts)
    sig = diffusion.dpm_sigmas(s, ts)
    np.testing.assert_allclose(sig, sig_ref, rtol=3e-7, atol=0)   # within two float32 ulps
    first = diffusion.dpm_orders(s, n)
    step = jax.jit(lambda x, t, a, b, c, p, f: diffusion.dpmpp_2m_step(s, model(x, t), x, a, b, c, p, f))
    prev_x0 = np.zeros_like(xs[0])
    for i, t in enumerate(ts):
        x, prev_x0 = step(xs[i], jnp.int32(t), sig[max(i - 1, 0)], sig[i], sig[i + 1], prev_x0, first[i])
        _close(x, xs[i + 1], STEP_TOL, f"{key} step {i}")
    got = jax.jit(lambda x: diffusion.sample_dpmpp_2m(model, s, x, n))(xs[0])
    _close(got, xs[-1], SAMPLE_TOL, key)


def test_dpm_lower_order_final_rule():
    """diffusers' rule: a first-order last step for < 15 steps (or final sigma 0), second order otherwise."""
    s = diffusion.Schedule(final_sigmas_type="sigma_min")
    assert diffusion.dpm_orders(s, 10).tolist() == [True] + [False] * 8 + [True]
    assert diffusion.dpm_orders(s, 20).tolist() == [True] + [False] * 19
    assert diffusion.dpm_orders(diffusion.Schedule(), 20)[-1]
    assert not diffusion.dpm_orders(diffusion.Schedule(final_sigmas_type="sigma_min", lower_order_final=False),
                                    4)[-1]


def test_second_order_term_is_live(monkeypatch):
    """The 2M correction changes the result (so the parity above exercises it): forcing every step first-order
    moves the 20-step sample by far more than the tolerance."""
    s = sched("sd_eps_leading")
    xs = FIX["sd_eps_leading/dpm20/xs"]
    monkeypatch.setattr(samplers, "dpm_orders", lambda sc, n: np.ones(n, bool))
    first_only = samplers.sample_dpmpp_2m(model, s, xs[0], 20)
    assert np.max(np.abs(np.asarray(first_only) - xs[-1])) > 1e-3


def test_dpm_sampler_gradient_is_finite():
    """The unused second-order branch of the first step (no previous level) must not poison gradients."""
    s = sched("sd_eps_leading")
    g = jax.grad(lambda x: diffusion.sample_dpmpp_2m(model, s, x, 5).sum())(jnp.ones((1, 2, 2, 1)))
    assert np.all(np.isfinite(g))


def test_ddpm_and_ddim_sample_with_keys_are_finite_and_reproducible():
    s = diffusion.Schedule(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
    a = diffusion.sample_ddpm(model, s, x, 5, jax.random.key(1))
    b = diffusion.sample_ddpm(model, s, x, 5, jax.random.key(1))
    c = diffusion.sample_ddpm(model, s, x, 5, jax.random.key(2))
    assert np.all(np.isfinite(a)) and np.array_equal(a, b) and not np.allclose(a, c)
    with pytest.raises(ValueError, match="key"):
        diffusion.sample_ddim(model, s, x, 5, eta=0.5)
