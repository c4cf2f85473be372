"""NTK-Attention Pallas kernel (interpret mode on CPU) against the float64 formula, the op's XLA path and
jax.grad of the dense reference; the cuDNN composite on NVIDIA GPUs (marked gpu)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _ntk_np as npref
from jaxmm.kernels.ntk_attention import ntk_attention_cudnn, ntk_attention_pallas
from jaxmm.attention import ntk_attention
from jaxmm.ops.ntk import ntk_attention_reference


def _inputs(b=1, l=24, h=4, hkv=2, d=16, seed=0, zero_kvec=False):
    ks = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(ks[0], (b, l, h, d))
    k = jax.random.normal(ks[1], (b, l, hkv, d))
    v = jax.random.normal(ks[2], (b, l, hkv, d))
    z = jax.random.normal(ks[3], (h, d, d)) * 0.3
    kvec = jnp.zeros((h, d)) if zero_kvec else jax.random.normal(ks[4], (h, d))
    return q, k, v, z, kvec


def _pallas(is_causal):
    return lambda *a: ntk_attention_pallas(*a, is_causal=is_causal, block_q=16, block_k=16, interpret=True)


@pytest.mark.parametrize("is_causal,hkv,zero_kvec", [(False, 4, False), (True, 2, True)])
def test_matches_float64_and_xla_path(is_causal, hkv, zero_kvec):
    args = _inputs(hkv=hkv, zero_kvec=zero_kvec)
    got = jax.jit(_pallas(is_causal))(*args)
    want, _ = npref.attention(*args[:3], is_causal=is_causal, z=args[3], kvec=args[4])
    xla = ntk_attention(*args, is_causal=is_causal, implementation="xla")
    assert npref.rel_err(got, want) <= 1e-5
    assert npref.rel_err(got, xla) <= 1e-5


def test_extreme_logits_and_op_dispatch():
    q, k, v, z, kvec = _inputs(hkv=4, seed=4)
    q, k = q * 70.0, k * 70.0                        # scores up to ~1e4 in size
    got = jax.jit(lambda *a: ntk_attention(*a, is_causal=True, implementation="pallas"))(q, k, v, z, kvec)
    want, _ = npref.attention(q, k, v, is_causal=True, z=z, kvec=kvec)
    assert np.all(np.isfinite(np.asarray(got))) and npref.rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("is_causal", [False, True])
def test_gradients_match_reference(is_causal):
    args = _inputs(l=20, hkv=2, seed=1)
    ct = jax.random.normal(jax.random.key(5), args[0].shape)
    loss = lambda fn: lambda *a: jnp.sum(fn(*a) * ct)
    got = jax.jit(jax.grad(loss(_pallas(is_causal)), argnums=(0, 1, 2, 3, 4)))(*args)
    ref = lambda *a: ntk_attention_reference(*a, is_causal=is_causal)
    want = jax.jit(jax.grad(loss(ref), argnums=(0, 1, 2, 3, 4)))(*args)
    for name, a, b in zip("q k v z kvec".split(), got, want):
        assert npref.rel_err(a, b) <= 2e-5, name


def test_bad_arguments_name_the_argument():
    q, k, v, z, kvec = _inputs()
    with pytest.raises(ValueError, match=r"^z: expected shape \(4, 16, 16\)"):
        ntk_attention_pallas(q, k, v, z[:2], kvec)
    with pytest.raises(ValueError, match=r"^kvec: expected shape \(4, 16\)"):
        ntk_attention_pallas(q, k, v, z, kvec[:, :8])
    with pytest.raises(ValueError, match=r"^mask: expected None with implementation='pallas'"):
        ntk_attention(q, k, v, z, kvec, mask=jnp.ones((1, 1, 1, 24), bool), implementation="pallas")


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="compiled kernels need an NVIDIA GPU")
@pytest.mark.parametrize("impl", ["cudnn", "pallas"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_compiled_on_gpu(impl, is_causal):
    q, k, v, z, kvec = _inputs(b=2, l=256, h=4, hkv=4, d=64)
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    ct = jax.random.normal(jax.random.key(5), q.shape)
    fn = {"cudnn": lambda *a: ntk_attention_cudnn(*a, is_causal=is_causal),
          "pallas": lambda *a: ntk_attention_pallas(*a, is_causal=is_causal, block_q=64, block_k=64,
                                                    interpret=False)}[impl]
    ref = lambda *a: ntk_attention_reference(*(x.astype(jnp.float32) for x in a[:3]), *a[3:], is_causal=is_causal)
    loss = lambda f: lambda *a: jnp.sum(f(*a).astype(jnp.float32) * ct)
    assert npref.rel_err(jax.jit(fn)(q, k, v, z, kvec).astype(jnp.float32), ref(q, k, v, z, kvec)) <= 2e-2
    got = jax.jit(jax.grad(loss(fn), argnums=(0, 1, 2, 3, 4)))(q, k, v, z, kvec)
    want = jax.grad(loss(ref), argnums=(0, 1, 2, 3, 4))(q, k, v, z, kvec)
    for name, a, b in zip("q k v z kvec".split(), got, want):
        assert npref.rel_err(a.astype(jnp.float32), b.astype(jnp.float32)) <= 3e-2, name
