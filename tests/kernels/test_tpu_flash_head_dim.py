"""Regression: `jax.lax.platform_dependent` traces every platform's branch, so a head dim JAX's TPU flash kernel
refuses at trace time (> 128 and not a multiple of 128: Stable Diffusion 1.5's 160) must route the TPU branch to
XLA, or the attention cannot even be traced on CPU."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxmm import attention
from jaxmm.attention.dispatch import tpu_flash_fits


def test_head_dim_160_traces_and_matches_softmax():
    q = jax.random.normal(jax.random.PRNGKey(0), (1, 128, 1, 160))
    assert not tpu_flash_fits(q, q, bias=None, mask=None, is_causal=False)
    assert tpu_flash_fits(q[..., :128], q[..., :128], bias=None, mask=None, is_causal=False)
    out = attention.dot_product_attention(q, q, q)
    qq = np.asarray(q, np.float64)[0, :, 0]
    s = qq @ qq.T / np.sqrt(160)
    p = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(out)[0, :, 0], (p / p.sum(-1, keepdims=True)) @ qq, atol=1e-4)
