"""NTK-Attention op (2406.14036) against a float64 NumPy evaluation of its formula, and its gradients against
jax.grad of the dense reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _ntk_np as npref
from jaxmm.attention import ntk_attention  # the public entry point (implementation=...)
from jaxmm.ops.attention import prefix_attention
from jaxmm.ops.flash import flash_attention_xla
from jaxmm.ops.ntk import ntk_attention_reference


def _inputs(b=2, l=24, h=4, hkv=2, d=8, seed=0, qk_scale=1.0):
    ks = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(ks[0], (b, l, h, d)) * qk_scale
    k = jax.random.normal(ks[1], (b, l, hkv, d)) * qk_scale
    v = jax.random.normal(ks[2], (b, l, hkv, d))
    z = jax.random.normal(ks[3], (h, d, d)) * 0.5
    kvec = jax.random.normal(ks[4], (h, d))
    return q, k, v, z, kvec


def _padding_mask(b, l, seed=1):
    lengths = np.array([l - 5, l][:b])
    return jnp.asarray(np.arange(l)[None, None, None, :] < lengths[:, None, None, None])   # [B, 1, 1, L]


CASES = [(True, None, 4), (True, "pad", 1), (False, "rows", 2)]   # (is_causal, mask kind, kv heads)


def _mask(kind, b, h, l):
    if kind == "pad":
        return _padding_mask(b, l)
    if kind == "rows":   # per-query mask with one fully masked row: only the prefix remains there
        m = np.random.default_rng(0).random((b, h, l, l)) < 0.6
        m[:, :, 3] = False
        return jnp.asarray(m)
    return None


def _jitted(impl, is_causal, block_k=7):
    return jax.jit(lambda q, k, v, z, kvec, mask: ntk_attention(
        q, k, v, z, kvec, is_causal=is_causal, mask=mask, implementation=impl, block_k=block_k))


@pytest.mark.parametrize("is_causal,mask_kind,hkv", CASES)
def test_matches_float64_formula(is_causal, mask_kind, hkv):
    q, k, v, z, kvec = _inputs(hkv=hkv)
    mask = _mask(mask_kind, 2, 4, 24)
    want, _ = npref.attention(q, k, v, is_causal=is_causal, mask=mask, z=z, kvec=kvec)
    for impl in ("xla", "reference"):
        got = _jitted(impl, is_causal)(q, k, v, z, kvec, mask)
        assert got.shape == q.shape and got.dtype == q.dtype
        assert npref.rel_err(got, want) <= 1e-5, impl


def test_extreme_logits_no_overflow():
    # scores of size ~1e4 (both signs): exp(S) overflows float32 (and float64) if taken naively
    q, k, v, z, kvec = _inputs(hkv=4, d=16, qk_scale=1.0)
    q, k = q * 70.0, k * 70.0
    s = np.einsum("bqhd,bkhd->bhqk", np.asarray(q), np.asarray(k)) / 4
    assert np.abs(s).max() > 1e4 and s.min() < -1e4
    want, _ = npref.attention(q, k, v, is_causal=True, z=z, kvec=kvec)
    for impl in ("xla", "reference"):
        got = _jitted(impl, True, block_k=8)(q, k, v, z, kvec, None)
        assert np.all(np.isfinite(np.asarray(got)))
        assert npref.rel_err(got, want) <= 1e-5


def test_causal_with_longer_keys_is_bottom_right_aligned():
    # chunked prefill against a cache: 6 new queries, 24 keys; query i sees keys j <= i + 18
    q, k, v, z, kvec = _inputs(hkv=2)
    q = q[:, :6]
    want, _ = npref.attention(q, k, v, is_causal=True, z=z, kvec=kvec)
    for impl in ("xla", "reference"):
        assert npref.rel_err(_jitted(impl, True, block_k=5)(q, k, v, z, kvec, None), want) <= 1e-5, impl
    g = jax.jit(jax.grad(lambda *a: jnp.sum(ntk_attention(*a, is_causal=True, block_k=5) ** 2), argnums=(0, 1)))(
        q, k, v, z, kvec)
    g_ref = jax.jit(jax.grad(lambda *a: jnp.sum(ntk_attention_reference(*a, is_causal=True) ** 2), argnums=(0, 1)))(
        q, k, v, z, kvec)
    assert all(npref.rel_err(a, b) <= 2e-5 for a, b in zip(g, g_ref))


def test_prefix_dominates_when_every_score_is_very_negative():
    q, k, v, z, kvec = _inputs(b=1, l=8, h=2, hkv=2, d=4)
    q = jnp.abs(q) * 300.0
    k = -jnp.abs(k) * 300.0                                   # every score ≈ −1e4 or below
    got = ntk_attention(q, k, v, z, kvec, implementation="xla")
    want, _ = npref.attention(q, k, v, z=z, kvec=kvec)
    pq = npref.phi(np.asarray(q, np.float64), 4)
    c_over_w = np.einsum("blhd,hde->blhe", pq, np.asarray(z, np.float64)) / np.einsum(
        "blhd,hd->blh", pq, np.abs(np.asarray(kvec, np.float64)))[..., None]
    assert npref.rel_err(want, c_over_w) < 1e-12                # the formula's limit
    assert npref.rel_err(got, want) <= 1e-5


def test_zero_prefix_parameters_give_softmax_attention():
    q, k, v, z, kvec = _inputs(hkv=2)
    z, kvec = jnp.zeros_like(z), jnp.zeros_like(kvec)
    got = _jitted("xla", True)(q, k, v, z, kvec, None)
    want, _ = npref.attention(q, k, v, is_causal=True)
    assert npref.rel_err(got, want) <= 1e-5
    g = jax.jit(jax.grad(lambda kv: jnp.sum(ntk_attention(q, k, v, z, kv, implementation="xla") ** 2)))(kvec)
    g_ref = jax.jit(jax.grad(lambda kv: jnp.sum(ntk_attention_reference(q, k, v, z, kv) ** 2)))(kvec)
    assert np.all(np.isfinite(np.asarray(g))) and npref.rel_err(g, g_ref) <= 1e-5


@pytest.mark.parametrize("is_causal,mask_kind,hkv", [(True, "pad", 2), (False, "rows", 4)])
def test_gradients_match_reference(is_causal, mask_kind, hkv):
    q, k, v, z, kvec = _inputs(hkv=hkv)
    mask = _mask(mask_kind, 2, 4, 24)
    ct = jax.random.normal(jax.random.key(7), q.shape)

    def loss(impl):
        return lambda *a: jnp.sum(ntk_attention(*a, is_causal=is_causal, mask=mask, implementation=impl,
                                                block_k=5) * ct)
    got = jax.jit(jax.grad(loss("xla"), argnums=(0, 1, 2, 3, 4)))(q, k, v, z, kvec)
    want = jax.jit(jax.grad(loss("reference"), argnums=(0, 1, 2, 3, 4)))(q, k, v, z, kvec)
    for name, a, b in zip("q k v z kvec".split(), got, want):
        assert npref.rel_err(a, b) <= 2e-5, name


def test_reference_gradient_against_float64_finite_differences():
    q, k, v, z, kvec = _inputs(b=1, l=6, h=2, hkv=1, d=4)
    ct = np.random.default_rng(3).normal(size=q.shape)
    f64 = lambda *a: float(np.sum(npref.attention(*a[:3], is_causal=True, z=a[3], kvec=a[4])[0] * ct))
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(ntk_attention_reference(*a, is_causal=True) * ct),
                             argnums=(0, 3, 4)))(q, k, v, z, kvec)
    args = [np.asarray(x, np.float64) for x in (q, k, v, z, kvec)]
    for slot, g in zip((0, 3, 4), grads):
        idx = (0,) * args[slot].ndim
        hi, lo = [a.copy() for a in args], [a.copy() for a in args]
        hi[slot][idx] += 1e-6
        lo[slot][idx] -= 1e-6
        fd = (f64(*hi) - f64(*lo)) / 2e-6
        assert abs(float(np.asarray(g)[idx]) - fd) <= 1e-4 * max(1.0, abs(fd))


def test_flash_attention_xla_lse_and_output():
    q, k, v, _, _ = _inputs(hkv=2)
    mask = _padding_mask(2, 24)
    o, lse = flash_attention_xla(q, k, v, is_causal=True, mask=mask, block_k=5)
    want, want_lse = npref.attention(q, k, v, is_causal=True, mask=mask)
    assert npref.rel_err(o, want) <= 1e-5
    np.testing.assert_allclose(np.asarray(lse), want_lse, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("is_causal", [False, True])
def test_prefix_attention_matches_float64(is_causal):
    q, k, v, _, _ = _inputs(hkv=2)
    ks = jax.random.split(jax.random.key(5), 2)
    kp = jax.random.normal(ks[0], (1, 9, 2, 8))
    vp = jax.random.normal(ks[1], (1, 9, 2, 8))
    got = prefix_attention(q, k, v, kp, vp, is_causal=is_causal)
    want, _ = npref.attention(q, k, v, is_causal=is_causal, k_prefix=kp, v_prefix=vp)
    assert npref.rel_err(got, want) <= 1e-5


def test_jit_and_determinism():
    q, k, v, z, kvec = _inputs()
    f = jax.jit(lambda *a: ntk_attention(*a, is_causal=True, implementation="xla"))
    a, b = f(q, k, v, z, kvec), f(q, k, v, z, kvec)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_arguments_name_the_argument():
    q, k, v, z, kvec = _inputs(hkv=2)
    bad = [
        (dict(z=z[:, :4]), "z"), (dict(kvec=kvec[:2]), "kvec"), (dict(q=q[0]), "q"),
        (dict(k=jnp.zeros((2, 24, 3, 8)), v=jnp.zeros((2, 24, 3, 8))), "k"), (dict(v=v[:, :5]), "v"),
        (dict(mask=jnp.ones((2, 3, 24, 24), bool)), "mask"), (dict(implementation="fast"), "implementation"),
    ]
    base = dict(q=q, k=k, v=v, z=z, kvec=kvec)
    for change, name in bad:
        args = {**base, **change}
        kw = {kk: args.pop(kk) for kk in ("mask", "implementation") if kk in args}
        with pytest.raises(ValueError, match=rf"^{name}: expected"):
            ntk_attention(args["q"], args["k"], args["v"], args["z"], args["kvec"], **kw)
    with pytest.raises(ValueError, match=r"^k: expected length"):   # the Pallas kernel needs Lq = Lk if causal
        ntk_attention(q[:, :20], k, v, z, kvec, is_causal=True, implementation="pallas")
    with pytest.raises(ValueError, match=r"^k_prefix: expected"):
        prefix_attention(q, k, v, jnp.zeros((1, 4, 3, 8)), jnp.zeros((1, 4, 3, 8)))
    with pytest.raises(ValueError, match=r"^v_prefix: expected"):
        prefix_attention(q, k, v, jnp.zeros((1, 4, 2, 8)), jnp.zeros((1, 5, 2, 8)))


def test_combine_autodiff_exact_at_zero_kvec():
    # training code may differentiate `combine` directly (no custom VJP): it must stay exact where w = 0
    from jaxmm.ops.ntk import combine, prefix_terms
    q, k, v, z, kvec = _inputs(b=1, l=8, h=2, hkv=2, d=4)
    o, lse = flash_attention_xla(q, k, v)
    ct = jax.random.normal(jax.random.key(1), q.shape)
    via_parts = lambda zz, kk: jnp.sum(combine(o, lse, *prefix_terms(q, zz, kk))[0] * ct)
    via_ref = lambda zz, kk: jnp.sum(ntk_attention_reference(q, k, v, zz, kk) * ct)
    zero = jnp.zeros_like(kvec)
    got = jax.jit(jax.grad(via_parts, argnums=(0, 1)))(z, zero)
    want = jax.jit(jax.grad(via_ref, argnums=(0, 1)))(z, zero)
    assert float(jnp.abs(want[1]).max()) > 1e-3
    for a, b in zip(got, want):
        assert npref.rel_err(a, b) <= 1e-5


def test_low_rank_z_factors():
    q, k, v, _, kvec = _inputs(b=1, l=10, h=2, hkv=2, d=8)
    ks = jax.random.split(jax.random.key(11), 2)
    z_a, z_b = jax.random.normal(ks[0], (2, 8, 3)), jax.random.normal(ks[1], (2, 3, 8))
    z = np.einsum("hds,hse->hde", np.asarray(z_a, np.float64), np.asarray(z_b, np.float64))
    want, _ = npref.attention(q, k, v, is_causal=True, z=z, kvec=kvec)
    got = jax.jit(lambda *a: ntk_attention(a[0], a[1], a[2], (a[3], a[4]), a[5], is_causal=True))(
        q, k, v, z_a, z_b, kvec)
    assert npref.rel_err(got, want) <= 1e-5
    with pytest.raises(ValueError, match=r"^z_b: expected shape \(2, 3, 8\)"):
        ntk_attention(q, k, v, (z_a, z_b[:, :2]), kvec)
