"""jaxmm.models.unet: the timestep embedding against float64 NumPy, residual injection against a hand computation,
attention routed through jaxmm.attention, argument errors. Parity with diffusers: tests/hf/test_diffusers_parity.py."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _random_params import random_params  # tests/ is on sys.path (rootdir conftest)
from jaxmm.models import unet as unet_mod
from jaxmm.models.unet import UNet, UNetConfig, timestep_embedding

CFG = UNetConfig(in_channels=3, out_channels=3, block_out_channels=(8, 16), norm_num_groups=4,
                 num_attention_heads=2, cross_attention_dim=6,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


@pytest.fixture(scope="module")
def model():
    m = UNet(CFG)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    t = jnp.array([4, 900])
    ctx = jax.random.normal(jax.random.key(2), (2, 5, 6))
    params = random_params(m, x, t, ctx)
    return m, params, x, t, ctx


@pytest.mark.parametrize("dim,flip,shift", [(8, True, 0.0), (8, False, 1.0), (7, True, 0.0)])
def test_timestep_embedding_matches_numpy(dim, flip, shift):
    t = np.array([0.0, 1.0, 17.0, 999.0])
    half = dim // 2
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / (half - shift))
    args = t[:, None] * freqs[None]
    want = np.concatenate([np.cos(args), np.sin(args)] if flip else [np.sin(args), np.cos(args)], axis=1)
    if dim % 2:
        want = np.pad(want, ((0, 0), (0, 1)))
    got = timestep_embedding(jnp.asarray(t), dim, flip_sin_to_cos=flip, freq_shift=shift)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-4)   # float32 sin/cos of args up to 999


def test_zero_residuals_equal_none(model):
    m, params, x, t, ctx = model
    base, feats = m.apply({"params": params}, x, t, ctx, return_features=True)
    zeros = jax.tree.map(jnp.zeros_like, feats)
    out = m.apply({"params": params}, x, t, ctx, mid_residual=zeros["mid"], up_residuals=zeros["up"])
    np.testing.assert_array_equal(np.asarray(out), np.asarray(base))


def _group_norm(x, scale, bias, groups, eps):
    b, h, w, c = x.shape
    g = x.reshape(b, h * w, groups, c // groups)
    mu = g.mean(axis=(1, 3), keepdims=True)
    var = g.var(axis=(1, 3), keepdims=True)
    return ((g - mu) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def _conv3x3(x, kernel, bias):
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = x.shape[1:3]
    out = sum(np.einsum("bhwi,io->bhwo", xp[:, i:i + h, j:j + w], kernel[i, j]) for i in range(3) for j in range(3))
    return out + bias


def test_up_residual_equals_hand_computation(model):
    """Adding r to the last up block's output = running the output head (GroupNorm, SiLU, conv_out) by hand in
    float64 on (that feature map + r)."""
    m, params, x, t, ctx = model
    _, feats = m.apply({"params": params}, x, t, ctx, return_features=True)
    r = np.asarray(jax.random.normal(jax.random.key(9), feats["up"][-1].shape), np.float64)
    out = m.apply({"params": params}, x, t, ctx, up_residuals=[None, jnp.asarray(r, jnp.float32)])
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    h = np.asarray(feats["up"][-1], np.float64) + r
    h = _group_norm(h, p["conv_norm_out"]["scale"], p["conv_norm_out"]["bias"], CFG.norm_num_groups, CFG.norm_eps)
    h = h / (1 + np.exp(-h))
    want = _conv3x3(h, p["conv_out"]["kernel"], p["conv_out"]["bias"])
    np.testing.assert_allclose(np.asarray(out), want, atol=1e-4)
    base = m.apply({"params": params}, x, t, ctx)
    assert np.abs(np.asarray(out) - np.asarray(base)).max() > 0.1


def test_mid_residual_changes_output_and_features(model):
    m, params, x, t, ctx = model
    base, feats = m.apply({"params": params}, x, t, ctx, return_features=True)
    r = jax.random.normal(jax.random.key(5), feats["mid"].shape)
    out, f2 = m.apply({"params": params}, x, t, ctx, mid_residual=r, return_features=True)
    np.testing.assert_allclose(np.asarray(f2["mid"]), np.asarray(feats["mid"] + r), atol=1e-6)
    assert np.abs(np.asarray(out - base)).max() > 1e-2
    assert [f.shape for f in feats["up"]] == [(2, 8, 8, 16), (2, 8, 8, 8)]


def test_attention_goes_through_shared_stack(model, monkeypatch):
    """Every self- and cross-attention calls jaxmm.attention.dot_product_attention: 2 transformer blocks at the
    attention levels (down 0, up 1 x 2 layers) + 1 mid block = 4 blocks, 2 attentions each."""
    m, params, x, t, ctx = model
    calls = []
    real = unet_mod.attention.dot_product_attention
    monkeypatch.setattr(unet_mod.attention, "dot_product_attention",
                        lambda q, k, v, **kw: calls.append(k.shape[1]) or real(q, k, v, **kw))
    m.apply({"params": params}, x, t, ctx)
    assert len(calls) == 8 and calls.count(ctx.shape[1]) == 4   # half of them attend to the 5 context tokens


def test_scalar_timestep_broadcasts_and_grad(model):
    m, params, x, t, ctx = model
    a = m.apply({"params": params}, x, 7, ctx)
    b = m.apply({"params": params}, x, jnp.array([7, 7]), ctx)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    g = jax.grad(lambda p: jnp.sum(m.apply({"params": p}, x, t, ctx) ** 2))(params)
    norms = [float(jnp.abs(v).max()) for v in jax.tree.leaves(g)]
    assert all(np.isfinite(norms)) and min(norms) > 0


def test_bad_arguments_are_named(model):
    m, params, x, t, ctx = model
    call = lambda **kw: m.apply({"params": params}, kw.pop("x", x), kw.pop("t", t), kw.pop("c", ctx), **kw)  # noqa
    with pytest.raises(ValueError, match="x: expected 3 channels"):
        call(x=jnp.zeros((2, 8, 8, 4)))
    with pytest.raises(ValueError, match="divisible by 2"):
        call(x=jnp.zeros((2, 6, 7, 3)))
    with pytest.raises(ValueError, match="context"):
        call(c=jnp.zeros((2, 5, 7)))
    with pytest.raises(ValueError, match="timesteps"):
        call(t=jnp.zeros((3,)))
    with pytest.raises(ValueError, match=r"up_residuals\[0\]: expected shape \(2, 8, 8, 16\)"):
        call(up_residuals=[jnp.zeros((2, 4, 4, 16)), None])
    with pytest.raises(ValueError, match="up_residuals: expected 2 entries"):
        call(up_residuals=[None])
    with pytest.raises(ValueError, match="down_residuals: expected 4 maps"):
        call(down_residuals=[None])
    with pytest.raises(ValueError, match="down_block_types"):
        UNetConfig(down_block_types=("CrossAttnDownBlock2D", "Down"))
    with pytest.raises(ValueError, match="num_attention_heads"):
        UNetConfig(num_attention_heads=(1, 2, 3))
