import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.attention import dot_product_attention  # the public entry point (dispatch over ops' maths)
from jaxmm.ops.attention import causal_mask


def np_attention(q, k, v, mask=None, scale=None):
    """float64 reference; q [B,Lq,H,d], k/v [B,Lk,Hkv,d]; mask [B,H|1,Lq,Lk]."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    g = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * (scale or q.shape[-1] ** -0.5)
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    m = np.max(s, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    p = np.exp(s - m)
    den = p.sum(-1, keepdims=True)
    p = np.where(den > 0, p / np.where(den > 0, den, 1), 0)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def rand(shape, seed):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.mark.parametrize("h,hkv", [(4, 4), (4, 2), (4, 1)])
def test_matches_float64_reference_mha_gqa_mqa(h, hkv):
    q, k, v = rand((2, 5, h, 8), 0), rand((2, 7, hkv, 8), 1), rand((2, 7, hkv, 8), 2)
    out = dot_product_attention(q, k, v)
    np.testing.assert_allclose(out, np_attention(q, k, v), atol=2e-6, rtol=1e-5)


def test_causal_is_bottom_right_aligned_and_padding_mask():
    q, k, v = rand((2, 3, 2, 4), 3), rand((2, 6, 2, 4), 4), rand((2, 6, 2, 4), 5)
    pad = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], bool)
    cm = np.tril(np.ones((3, 6), bool), k=3)
    ref = np_attention(q, k, v, mask=cm[None, None] & pad[:, None, None, :])
    out = dot_product_attention(q, k, v, is_causal=True, mask=pad)
    np.testing.assert_allclose(out, ref, atol=2e-6, rtol=1e-5)
    np.testing.assert_array_equal(causal_mask(3, 6), cm)


def test_gqa_equals_mha_with_repeated_heads_and_bias():
    q, k, v = rand((1, 4, 6, 8), 6), rand((1, 4, 2, 8), 7), rand((1, 4, 2, 8), 8)
    bias = rand((1, 6, 4, 4), 9)
    a = dot_product_attention(q, k, v, bias=bias)
    b = dot_product_attention(q, jnp.repeat(k, 3, 2), jnp.repeat(v, 3, 2), bias=bias)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_fully_masked_row_gives_zeros_and_grad_is_finite():
    q, k, v = rand((1, 2, 1, 4), 10), rand((1, 3, 1, 4), 11), rand((1, 3, 1, 4), 12)
    mask = np.array([[[[True, False, True], [False, False, False]]]])
    out = dot_product_attention(q, k, v, mask=mask)
    np.testing.assert_array_equal(out[0, 1], 0.0)
    g = jax.grad(lambda q: dot_product_attention(q, k, v, mask=mask).sum())(q)
    assert np.all(np.isfinite(g))


def test_bf16_inputs_keep_float32_softmax():
    q, k, v = (rand((1, 64, 2, 16), s).astype(jnp.bfloat16) for s in (13, 14, 15))
    out = dot_product_attention(q, k, v, is_causal=True)
    assert out.dtype == jnp.bfloat16
    ref = np_attention(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32),
                       mask=np.tril(np.ones((64, 64), bool))[None, None])
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=3e-2)


def test_shape_errors_name_the_argument():
    q = jnp.zeros((1, 4, 4, 8))
    with pytest.raises(ValueError, match="k: expected"):
        dot_product_attention(q, jnp.zeros((1, 4, 3, 8)), jnp.zeros((1, 4, 3, 8)))
    with pytest.raises(ValueError, match="q: expected a rank-4"):
        dot_product_attention(q[0], q, q)
    with pytest.raises(ValueError, match="mask: expected"):
        dot_product_attention(q, q, q, mask=jnp.ones((3, 3), bool))
    with pytest.raises(ValueError, match="implementation"):
        dot_product_attention(q, q, q, implementation="flash")


def test_rejects_float_mask_integer_inputs_and_bad_scale():
    """Issue 25.5: a 0/−inf additive mask read as boolean gave anti-causal attention; integer q/k/v gave
    zeros; scale 0 or NaN was accepted."""
    q, k, v = rand((1, 4, 2, 8), 0), rand((1, 4, 2, 8), 1), rand((1, 4, 2, 8), 2)
    additive = np.where(np.tril(np.ones((4, 4), bool)), 0.0, -np.inf).astype(np.float32)
    with pytest.raises(ValueError, match=r"mask: expected a boolean array.*bias.*float32"):
        dot_product_attention(q, k, v, mask=additive)
    # the same additive mask as `bias` is the causal attention
    np.testing.assert_allclose(dot_product_attention(q, k, v, bias=additive),
                               dot_product_attention(q, k, v, is_causal=True), atol=1e-6)
    with pytest.raises(ValueError, match=r"k: expected a floating-point array.*int32"):
        dot_product_attention(q, jnp.ones((1, 4, 2, 8), jnp.int32), v)
    for bad in (0.0, float("nan"), -1.0, float("inf")):
        with pytest.raises(ValueError, match=r"scale: expected a finite number > 0"):
            dot_product_attention(q, k, v, scale=bad)
    # a traced scale cannot be inspected and is passed through
    out = jax.jit(lambda s: dot_product_attention(q, k, v, scale=s))(0.5)
    np.testing.assert_allclose(out, np_attention(q, k, v, scale=0.5), atol=2e-6)
