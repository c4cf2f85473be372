"""Issue 12.5: every op with a custom VJP or a kernel keeps its dtypes under `jax_enable_x64` (common in
scientific JAX code). float32 inputs must give float32 outputs and gradients, and the gradients must still
equal jax.grad of the dense reference (a float64 intermediate used to leak into a cotangent and fail)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.kernels.flash_attention import flash_attention
from jaxmm.kernels.ntk_attention import ntk_attention_pallas
from jaxmm.kernels.tensor_attention import tensor_attention_pallas
from jaxmm.attention import ntk_attention, tensor_attention
from jaxmm.ops.ntk import ntk_attention_reference
from jaxmm.ops.tensor import tensor_attention_reference


def _rand(shapes, seed=0):
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return [jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, shapes)]


def _check_grads(fast, ref, args, atol):
    loss = lambda f: (lambda *a: jnp.sum(f(*a) * jnp.cos(jnp.arange(f(*a).size).reshape(f(*a).shape))))
    out = fast(*args)
    assert out.dtype == jnp.float32
    g_fast = jax.grad(loss(fast), argnums=tuple(range(len(args))))(*args)
    g_ref = jax.grad(loss(ref), argnums=tuple(range(len(args))))(*args)
    for a, gf, gr in zip(args, g_fast, g_ref):
        assert gf.dtype == a.dtype == jnp.float32
        np.testing.assert_allclose(gf, gr, atol=atol, rtol=1e-3)


def _ntk_args():
    return _rand([(1, 16, 4, 8), (1, 16, 2, 8), (1, 16, 2, 8), (4, 8, 8), (4, 8)])


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("is_causal", [False, True])
def test_ntk_xla_under_x64(x64, is_causal):
    args = _ntk_args()
    _check_grads(lambda *a: ntk_attention(*a, is_causal=is_causal, implementation="xla", block_k=8),
                 lambda *a: ntk_attention_reference(*a, is_causal=is_causal), args, atol=2e-5)


def test_ntk_pallas_interpret_under_x64(x64):
    args = _ntk_args()
    _check_grads(lambda *a: ntk_attention_pallas(*a, is_causal=True, block_q=8, block_k=8, interpret=True),
                 lambda *a: ntk_attention_reference(*a, is_causal=True), args, atol=2e-5)


def test_flash_pallas_interpret_under_x64(x64):
    q, k, v = _rand([(1, 16, 2, 8), (1, 16, 2, 8), (1, 16, 2, 8)])
    z, kv = jnp.zeros((2, 8, 8), jnp.float32), jnp.zeros((2, 8), jnp.float32)
    _check_grads(lambda *a: flash_attention(*a, is_causal=True, block_q=8, block_k=8, interpret=True),
                 lambda *a: ntk_attention_reference(*a, z, kv, is_causal=True), [q, k, v], atol=2e-5)


@pytest.mark.parametrize("method,impl", [("exact", "xla"), ("exact", "pallas"), ("poly", None)])
def test_tensor_attention_under_x64(x64, method, impl):
    args = [a * 0.5 for a in _rand([(1, 8, 2, 4)] * 3 + [(1, 8, 2, 3)] * 2)]
    kw = dict(method=method, implementation=impl, is_causal=True)
    if method == "poly":
        kw["degree"] = 6     # Taylor features: close to exact at these small logits
    # impl "pallas": the kernel runs in interpret mode on CPU (the dispatch's CPU branch)
    atol = 2e-4 if method == "poly" else 2e-5
    _check_grads(lambda *a: tensor_attention(*a, **kw),
                 lambda *a: tensor_attention_reference(*a, is_causal=True), args, atol=atol)


def test_ntk_xla_nan_query_stays_nan():
    """Issue 25.9: a NaN in q used to come out of the XLA path as a zero row (the reference gives NaN)."""
    q, k, v, z, kvec = _ntk_args()
    q = q.at[0, 3, 1, 2].set(jnp.nan)
    for impl in ("xla", "reference"):
        out = np.asarray(ntk_attention(q, k, v, z, kvec, implementation=impl))
        assert np.isnan(out[0, 3, 1]).all(), impl
        assert np.isfinite(np.delete(out.reshape(16 * 4, 8), 3 * 4 + 1, axis=0)).all(), impl
    # a row whose keys are all masked and whose prefix weight is 0 is still an empty row: zeros
    mask = jnp.zeros((1, 1, 16, 16), bool)
    out = ntk_attention(q.at[0, 3, 1, 2].set(0.0), k, v, z, jnp.zeros_like(kvec), mask=mask, implementation="xla")
    np.testing.assert_array_equal(out[..., 0:0], np.zeros((1, 16, 4, 0)))
