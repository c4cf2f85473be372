"""TensorAttention layer: output against a float64 NumPy evaluation from its own parameters, key padding,
the poly method, use inside the transformer Block by config, argument errors."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.nn.tensor_attention import TensorAttention
from jaxmm.nn.transformer import Block, BlockConfig

CFG = BlockConfig(d_model=8, num_heads=2, mlp_dim=16, rope_theta=None)


def np_layer(params, x, causal=False, key_mask=None):
    x = np.asarray(x, np.float64)
    p = {k: np.asarray(v["kernel"], np.float64) for k, v in nn.unbox(params)["params"].items()}
    b, l, _ = x.shape
    h, d = CFG.num_heads, CFG.resolved_head_dim
    q, k1, k2, v1, v2 = ((x @ p[n]).reshape(b, l, h, d) for n in ("q", "k1", "k2", "v1", "v2"))
    s = np.einsum("bihl,bjhl,bkhl->bhijk", q, k1, k2) / d
    ok = np.ones((b, 1, l, l, l), bool)
    if causal:
        i = np.arange(l)[:, None, None]
        ok = ok & ((np.arange(l)[None, :, None] <= i) & (np.arange(l)[None, None, :] <= i))
    if key_mask is not None:
        ok = ok & key_mask[:, None, None, :, None] & key_mask[:, None, None, None, :]
    s = np.where(ok, s, -np.inf)
    pr = np.exp(s - s.max(axis=(3, 4), keepdims=True))
    pr /= pr.sum(axis=(3, 4), keepdims=True)
    o = np.einsum("bhijk,bjhe,bkhe->bihe", pr, v1, v2).reshape(b, l, h * d)
    return o @ p["o"]


def _x(b=2, l=6, seed=0):
    return jax.random.normal(jax.random.key(seed), (b, l, CFG.d_model))


@pytest.mark.parametrize("causal", [False, True])
def test_layer_matches_numpy(causal):
    x = _x()
    layer = TensorAttention(CFG)
    params = layer.init(jax.random.key(1), x)
    assert set(params["params"]) == {"q", "k1", "k2", "v1", "v2", "o"}
    # scale the weights up so the attention is far from uniform
    params = jax.tree.map(lambda w: w * 20, params)
    out = layer.apply(params, x, is_causal=causal)
    ref = np_layer(params, x, causal)
    assert np.abs(np.asarray(out, np.float64) - ref).max() <= 1e-5 * np.abs(ref).max()


def test_key_padding_mask_and_poly_method():
    x = _x()
    km = np.array([[True] * 6, [True] * 4 + [False] * 2])
    layer = TensorAttention(CFG)
    params = jax.tree.map(lambda w: w * 10, layer.init(jax.random.key(1), x))
    ref = np_layer(params, x, key_mask=km)
    out = layer.apply(params, x, mask=jnp.asarray(km)[:, None, None, :])
    assert np.abs(np.asarray(out, np.float64) - ref).max() <= 1e-5 * np.abs(ref).max()
    poly = TensorAttention(CFG, method="poly", degree=4).apply(params, x, mask=jnp.asarray(km))
    exact = layer.apply(params, x, mask=jnp.asarray(km))
    assert np.abs(np.asarray(poly - exact)).max() <= 1e-3 * np.abs(np.asarray(exact)).max()


def test_block_uses_tensor_attention_by_config():
    cfg = dataclasses.replace(CFG, attention="tensor")
    x = _x()
    block = Block(cfg)
    params = block.init(jax.random.key(2), x, is_causal=True)
    assert set(params["params"]["attn"]) == {"q", "k1", "k2", "v1", "v2", "o"}
    y = block.apply(params, x, is_causal=True)
    assert y.shape == x.shape
    # causal: changing the last token leaves the earlier outputs unchanged
    y2 = block.apply(params, x.at[:, -1].set(5.0), is_causal=True)
    np.testing.assert_allclose(y[:, :-1], y2[:, :-1], rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(y[:, -1] - y2[:, -1])).max() > 1e-3
    g = jax.grad(lambda p: jnp.sum(block.apply(p, x, is_causal=True) ** 2))(params)
    assert all(np.all(np.isfinite(t)) for t in jax.tree.leaves(g))


def test_layer_argument_errors():
    x = _x()
    layer = TensorAttention(CFG)
    params = layer.init(jax.random.key(1), x)
    with pytest.raises(ValueError, match="^mask:"):
        layer.apply(params, x, mask=jnp.ones((2, 1, 6, 6), bool))
    with pytest.raises(ValueError, match="^decode:"):
        layer.apply(params, x, decode=True)
    with pytest.raises(ValueError, match="^x:"):
        layer.apply(params, x[0])


def test_block_selects_tensor_attention_by_config():
    cfg = dataclasses.replace(CFG, attention="tensor")
    x = jax.random.normal(jax.random.key(3), (2, 5, CFG.d_model))
    params = Block(cfg).init(jax.random.key(4), x)
    assert set(params["params"]["attn"]) == {"q", "k1", "k2", "v1", "v2", "o"}
    params = jax.tree.map(lambda a: a * 4.0, nn.unbox(params))  # logits of order 1: the degree matters
    exact = Block(cfg).apply(params, x, is_causal=True)
    poly = lambda g: Block(dataclasses.replace(cfg, attention_args={"method": "poly", "degree": g})).apply(
        params, x, is_causal=True)
    err = lambda g: float(np.abs(np.asarray(exact - poly(g))).max())
    assert err(1) > 10 * err(6) and err(6) > 0
