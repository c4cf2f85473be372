"""Pallas tensor-attention kernel in interpret mode (CPU): forward against a float64 NumPy evaluation, the three
backward kernels against jax.grad of the naive reference, padding (n not a multiple of the blocks), causal."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.kernels.tensor_attention import tensor_attention_pallas
from jaxmm.attention import tensor_attention
from jaxmm.ops.tensor import tensor_attention_reference


def np_tensor_attention(q, k1, k2, v1, v2, scale, causal):
    q, k1, k2, v1, v2 = (np.asarray(x, np.float64) for x in (q, k1, k2, v1, v2))
    s = np.einsum("bihl,bjhl,bkhl->bhijk", q, k1, k2) * scale
    if causal:
        n = q.shape[1]
        i = np.arange(n)[:, None, None]
        s = np.where((np.arange(n)[None, :, None] <= i) & (np.arange(n)[None, None, :] <= i), s, -np.inf)
    p = np.exp(s - s.max(axis=(3, 4), keepdims=True))
    p /= p.sum(axis=(3, 4), keepdims=True)
    return np.einsum("bhijk,bjhe,bkhe->bihe", p, v1, v2)


def _inputs(n=10, d=4, dv=3, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.normal(size=(1, n, 2, w)).astype(np.float32)) for w in (d, d, d, dv, dv)]


@pytest.mark.parametrize("causal", [False, True])
def test_kernel_forward_and_backward_match(causal):
    x = _inputs()
    kern = lambda *a: tensor_attention_pallas(*a, is_causal=causal, block_q=8, block_k=4, interpret=True)
    out = kern(*x)
    ref = np_tensor_attention(*x, 1 / 4, causal)
    assert np.abs(np.asarray(out, np.float64) - ref).max() <= 1e-5 * np.abs(ref).max()

    w = jax.random.normal(jax.random.key(0), out.shape)
    g_kernel = jax.grad(lambda *a: jnp.sum(kern(*a) * w), argnums=range(5))(*x)
    g_naive = jax.grad(lambda *a: jnp.sum(tensor_attention_reference(*a, is_causal=causal) * w),
                       argnums=range(5))(*x)
    for name, a, b in zip(("q", "k1", "k2", "v1", "v2"), g_kernel, g_naive):
        assert float(jnp.abs(a - b).max() / jnp.abs(b).max()) <= 2e-5, name


def test_op_dispatches_to_kernel_on_request():
    x = _inputs(n=6, seed=1)
    via_op = tensor_attention(*x, implementation="pallas")  # interpret mode on CPU
    xla = tensor_attention(*x, implementation="xla")
    np.testing.assert_allclose(via_op, xla, rtol=1e-5, atol=1e-6)


def test_kernel_bad_arguments():
    q, k1, k2, v1, v2 = _inputs(n=6)
    with pytest.raises(ValueError, match="^k2:"):
        tensor_attention_pallas(q, k1, k2[:, :5], v1, v2, interpret=True)
    with pytest.raises(ValueError, match="^v2:"):
        tensor_attention_pallas(q, k1, k2, v1, v2[..., :2], interpret=True)
    with pytest.raises(ValueError, match="^block_q:"):
        tensor_attention_pallas(q, k1, k2, v1, v2, block_q=-1, interpret=True)
    with pytest.raises(ValueError, match="^implementation:"):
        tensor_attention(q, k1, k2, v1, v2, key_mask=jnp.ones((1, 6), bool), implementation="pallas")
