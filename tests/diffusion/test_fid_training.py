"""jaxmm.metrics.fid (against the symmetric-form trace computed by eigendecomposition) and
jaxmm.diffusion.training (condition dropout, guided sampling against the samplers called by hand)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm import diffusion
from jaxmm.metrics.fid import frechet_distance
from jaxmm.diffusion.training import conditional_loss, generate


def _psd_sqrt(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_frechet_distance_matches_eigen_reference():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(300, 6)) * 2.0 + 0.5
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    r1 = _psd_sqrt(s1)
    ref = (np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(s1) + np.trace(s2)
           - 2 * np.trace(_psd_sqrt(r1 @ s2 @ r1)))
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-8)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="a, b"):
        frechet_distance(a, b[:, :3])


def _toy():
    sched = diffusion.Schedule(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing")
    model = lambda x, t, c: 0.3 * x + 0.01 * t + c[:, 0, 0][:, None, None, None]  # noqa: E731
    return sched, model


def test_conditional_loss_dropout_extremes():
    sched, model = _toy()
    x0 = jax.random.normal(jax.random.PRNGKey(0), (6, 4, 4, 1))
    ctx, null = jnp.arange(6.0)[:, None, None] * jnp.ones((6, 2, 3)), jnp.full((2, 3), -5.0)
    key = jax.random.PRNGKey(1)
    ac = diffusion.alphas_cumprod(sched)
    kl = jax.random.split(key)[1]
    with_ctx = diffusion.diffusion_loss(lambda x, t: model(x, t, ctx), "epsilon", ac, x0, kl)[0]
    with_null = diffusion.diffusion_loss(lambda x, t: model(x, t, jnp.broadcast_to(null, ctx.shape)), "epsilon", ac,
                                         x0, kl)[0]
    assert conditional_loss(model, sched, x0, ctx, null, key, 0.0)[0] == pytest.approx(float(with_ctx), rel=1e-6)
    assert conditional_loss(model, sched, x0, ctx, null, key, 1.0)[0] == pytest.approx(float(with_null), rel=1e-6)
    mid = float(conditional_loss(model, sched, x0, ctx, null, key, 0.5)[0])
    assert mid not in (pytest.approx(float(with_ctx)), pytest.approx(float(with_null)))


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_generate_equals_samplers_by_hand(sampler):
    sched, model = _toy()
    noise = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 4, 1))
    ctx, null = jnp.ones((2, 3, 5)), jnp.zeros((3, 5))
    run = diffusion.sample_ddim if sampler == "ddim" else diffusion.sample_dpmpp_2m
    plain = run(lambda x, t: model(x, t, ctx), sched, noise, 5)
    np.testing.assert_allclose(generate(model, sched, noise, ctx, null, sampler=sampler, steps=5), plain, atol=1e-6)

    def guided(x, t):
        c, u = model(x, t, ctx), model(x, t, jnp.broadcast_to(null, ctx.shape))
        return u + 3.0 * (c - u)
    ref = run(guided, sched, noise, 5)
    out = generate(model, sched, noise, ctx, null, sampler=sampler, steps=5, guidance=3.0)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert np.abs(np.asarray(out) - np.asarray(plain)).max() > 1e-2   # guidance is not inert


def test_generate_bad_arguments():
    sched, model = _toy()
    x = jnp.zeros((1, 4, 4, 1))
    with pytest.raises(ValueError, match="sampler"):
        generate(model, sched, x, jnp.ones((1, 3, 5)), jnp.zeros((3, 5)), sampler="euler")
    with pytest.raises(ValueError, match="key"):
        generate(model, sched, x, jnp.ones((1, 3, 5)), jnp.zeros((3, 5)), sampler="ddpm")
