"""Pallas flash attention (interpret mode on CPU) against float64 NumPy softmax attention and jax.grad of a
dense jnp softmax attention (including the log-sum-exp's cotangent)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _ntk_np as npref
from jaxmm.kernels.flash_attention import flash_attention


def _qkv(b, lq, lk, h, hkv, d, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(ks[0], (b, lq, h, d)), jax.random.normal(ks[1], (b, lk, hkv, d)),
            jax.random.normal(ks[2], (b, lk, hkv, d)))


def _dense(q, k, v, is_causal):
    """Softmax attention in plain jnp (GQA by repeating kv heads): (out [B,L,H,d], lse [B,L,H])."""
    g = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if is_causal:
        s = jnp.where(jnp.tril(jnp.ones(s.shape[-2:], bool)), s, -jnp.inf)
    lse = jax.nn.logsumexp(s, -1)
    out = jnp.einsum("bhqk,bkhd->bqhd", jnp.exp(s - lse[..., None]), v)
    return out, jnp.transpose(lse, (0, 2, 1))


# (is_causal, lq, lk, h, hkv): lengths that are not block multiples exercise the padded-key path
CASES = [(False, 32, 24, 2, 2), (True, 27, 27, 4, 2)]


@pytest.mark.parametrize("is_causal,lq,lk,h,hkv", CASES)
def test_forward_and_lse_match_float64(is_causal, lq, lk, h, hkv):
    q, k, v = _qkv(1, lq, lk, h, hkv, 16)
    f = jax.jit(lambda q, k, v: flash_attention(q, k, v, is_causal=is_causal, return_lse=True, block_q=16,
                                                block_k=16, interpret=True))
    out, lse = f(q, k, v)
    want, want_lse = npref.attention(q, k, v, is_causal=is_causal)
    assert out.shape == q.shape and lse.shape == q.shape[:3]
    assert npref.rel_err(out, want) <= 1e-5
    np.testing.assert_allclose(np.asarray(lse), want_lse, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("is_causal,lq,lk,h,hkv", CASES)
def test_gradients_including_lse_cotangent(is_causal, lq, lk, h, hkv):
    q, k, v = _qkv(1, lq, lk, h, hkv, 16, seed=1)
    ct = jax.random.normal(jax.random.key(2), q.shape)
    ct_lse = jax.random.normal(jax.random.key(3), q.shape[:3])
    loss = lambda fn: lambda q, k, v: (lambda o, l: jnp.sum(o * ct) + jnp.sum(l * ct_lse))(*fn(q, k, v))
    kernel = lambda q, k, v: flash_attention(q, k, v, is_causal=is_causal, return_lse=True, block_q=16,
                                             block_k=16, interpret=True)
    got = jax.jit(jax.grad(loss(kernel), argnums=(0, 1, 2)))(q, k, v)
    want = jax.jit(jax.grad(loss(lambda q, k, v: _dense(q, k, v, is_causal)), argnums=(0, 1, 2)))(q, k, v)
    for name, a, b in zip("qkv", got, want):
        assert a.shape == b.shape and npref.rel_err(a, b) <= 2e-5, name


def test_bad_arguments_name_the_argument():
    q, k, v = _qkv(1, 16, 16, 4, 2, 8)
    with pytest.raises(ValueError, match=r"^k: expected a number of kv heads"):
        flash_attention(q, k[:, :, :1].repeat(3, 2), v[:, :, :1].repeat(3, 2))
    with pytest.raises(ValueError, match=r"^v: expected"):
        flash_attention(q, k, v[:, :8])
    with pytest.raises(ValueError, match=r"^q: expected a rank-4"):
        flash_attention(q[0], k, v)
    with pytest.raises(ValueError, match=r"^block_q: expected a positive"):
        flash_attention(q, k, v, block_q=0, interpret=True)
