"""jaxmm.models.vae: the diagonal Gaussian against closed forms, shapes, options and argument errors. Parity with
diffusers' AutoencoderKL: tests/hf/test_diffusers_parity.py."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.models.vae import AutoencoderKL, DiagonalGaussian, VAEConfig
from _random_params import random_params  # tests/ is on sys.path (rootdir conftest)

CFG = VAEConfig(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=2)


def test_diagonal_gaussian_closed_forms():
    rng = np.random.default_rng(0)
    mean, logvar = rng.normal(size=(3, 2, 2, 4)), 2 * rng.normal(size=(3, 2, 2, 4))
    logvar[0, 0, 0, 0], logvar[1, 0, 0, 0] = 40.0, -50.0            # clipped to [-30, 20]
    post = DiagonalGaussian.from_moments(jnp.asarray(np.concatenate([mean, logvar], -1), jnp.float32))
    clipped = np.clip(logvar, -30, 20)
    np.testing.assert_allclose(np.asarray(post.mean), mean, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(post.logvar), clipped, rtol=1e-6)
    want_kl = 0.5 * np.sum(mean ** 2 + np.exp(clipped) - 1 - clipped, axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(post.kl()), want_kl, rtol=1e-5)
    key = jax.random.key(4)
    eps = np.asarray(jax.random.normal(key, mean.shape), np.float64)
    np.testing.assert_allclose(np.asarray(post.sample(key)), mean + np.exp(0.5 * clipped) * eps, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(post.mode()), np.asarray(post.mean))


def test_sample_statistics():
    post = DiagonalGaussian(jnp.full((4000, 1, 1, 1), 1.5), jnp.full((4000, 1, 1, 1), np.log(0.25)))
    s = np.asarray(post.sample(jax.random.key(0)))
    assert abs(s.mean() - 1.5) < 4 * 0.5 / np.sqrt(4000) and abs(s.std() - 0.5) < 0.03


@pytest.fixture(scope="module")
def vae():
    m = AutoencoderKL(CFG)
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3), minval=-1, maxval=1)
    return m, random_params(m, x), x


def test_shapes_and_sampling(vae):
    m, p, x = vae
    post = m.apply({"params": p}, x, method="encode")
    assert post.mean.shape == post.logvar.shape == (2, 4, 4, 2)
    det = m.apply({"params": p}, x)
    assert det.shape == x.shape
    np.testing.assert_allclose(np.asarray(det), np.asarray(m.apply({"params": p}, post.mean, method="decode")),
                               atol=1e-6)
    sampled = m.apply({"params": p}, x, jax.random.key(3))
    assert np.abs(np.asarray(sampled - det)).max() > 1e-3     # rng given: decodes a draw, not the mean


def test_quant_conv_options(vae):
    m, _, x = vae
    import flax.linen as nn
    shapes = lambda cfg: nn.meta.unbox(jax.eval_shape(AutoencoderKL(cfg).init, jax.random.key(0), x)["params"])  # noqa
    assert {"quant_conv", "post_quant_conv"} <= set(shapes(CFG))
    off = VAEConfig(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=2, use_quant_conv=False,
                    use_post_quant_conv=False, mid_block_add_attention=False)
    names = shapes(off)
    assert not {"quant_conv", "post_quant_conv"} & set(names)
    assert "mid_block_attentions_0" not in names["encoder"] and "mid_block_attentions_0" in shapes(CFG)["encoder"]


def test_bad_arguments_are_named(vae):
    m, p, x = vae
    with pytest.raises(ValueError, match=r"x: expected \[B, H, W, 3\]"):
        m.apply({"params": p}, jnp.zeros((1, 8, 8, 4)), method="encode")
    with pytest.raises(ValueError, match="divisible by 2"):
        m.apply({"params": p}, jnp.zeros((1, 7, 8, 3)), method="encode")
    with pytest.raises(ValueError, match="z: expected 2 channels"):
        m.apply({"params": p}, jnp.zeros((1, 4, 4, 3)), method="decode")
    with pytest.raises(ValueError, match="norm_num_groups"):
        VAEConfig(block_out_channels=(8, 12), norm_num_groups=8)
