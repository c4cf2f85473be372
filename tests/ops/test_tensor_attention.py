"""Tensor attention (2405.16411): the exact path against a float64 NumPy evaluation of the definition, its
custom VJP against jax.grad of the naive version, the poly path against the Taylor-remainder bound (and its
blow-up past the phase transition), its custom VJP against autodiff of the same approximation, and the
objective's gradient (Definition 3.8) exact against the closed form A1ᵀF(A2⊗A3), fast within the bound."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.ops import polynomial
from jaxmm.attention import tensor_attention  # the public entry point (implementation=...)
from jaxmm.ops.tensor import (_monomials, taylor_error_bound,
                                        tensor_attention_loss_grad, tensor_attention_reference)


def np_tensor_attention(q, k1, k2, v1, v2, scale, causal=False, key_mask=None):
    """Float64 definition: softmax over the m² pairs of S_ijk = s Σ_l q_il k1_jl k2_kl, then Σ P V1_j∘V2_k."""
    q, k1, k2, v1, v2 = (np.asarray(x, np.float64) for x in (q, k1, k2, v1, v2))
    s = np.einsum("bihl,bjhl,bkhl->bhijk", q, k1, k2) * scale
    n, m = q.shape[1], k1.shape[1]
    ok = np.ones((q.shape[0], 1, n, m, m), bool)
    if causal:
        i = np.arange(n)[:, None, None]
        ok = ok & ((np.arange(m)[None, :, None] <= i) & (np.arange(m)[None, None, :] <= i))[None, None]
    if key_mask is not None:
        km = np.asarray(key_mask, bool)
        ok = ok & km[:, None, None, :, None] & km[:, None, None, None, :]
    s = np.where(ok, s, -np.inf)
    p = np.exp(s - s.max(axis=(3, 4), keepdims=True))
    p /= p.sum(axis=(3, 4), keepdims=True)
    return np.einsum("bhijk,bjhe,bkhe->bihe", p, v1, v2), np.abs(np.where(ok, s, 0)).max()


def _inputs(b=2, n=11, h=2, d=4, dv=3, bound=None, seed=0):
    rng = np.random.default_rng(seed)
    if bound is None:
        qk = [rng.normal(size=(b, n, h, d)) for _ in range(3)]
    else:  # entries uniform in [-B, B]: the paper's bounded-entry regime
        qk = [rng.uniform(-bound, bound, size=(b, n, h, d)) for _ in range(3)]
    v = [rng.normal(size=(b, n, h, dv)) for _ in range(2)]
    return [x.astype(np.float32) for x in qk + v]


def _rel(a, ref):
    return float(np.abs(np.asarray(a, np.float64) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("causal", [False, True])
def test_exact_matches_float64_definition(causal):
    x = _inputs()
    ref, _ = np_tensor_attention(*x, 1 / 4, causal)
    out = tensor_attention(*x, is_causal=causal, block_q=8, block_k=4)  # n=11: padded tiles on both axes
    assert out.shape == ref.shape and out.dtype == jnp.float32
    assert _rel(out, ref) <= 1e-5


def test_exact_key_mask_and_scale_and_cross_lengths():
    rng = np.random.default_rng(3)
    q = (0.6 * rng.normal(size=(2, 5, 1, 4))).astype(np.float32)
    k1, k2 = ((0.6 * rng.normal(size=(2, 9, 1, 4))).astype(np.float32) for _ in range(2))
    v1, v2 = (rng.normal(size=(2, 9, 1, 2)).astype(np.float32) for _ in range(2))
    km = np.arange(9)[None] < np.array([[6], [9]])
    ref, beta = np_tensor_attention(q, k1, k2, v1, v2, 0.5, key_mask=km)
    out = tensor_attention(q, k1, k2, v1, v2, scale=0.5, key_mask=jnp.asarray(km), block_q=4, block_k=4)
    assert _rel(out, ref) <= 1e-5
    poly = tensor_attention(q, k1, k2, v1, v2, scale=0.5, key_mask=jnp.asarray(km), method="poly", degree=12)
    eps = float(taylor_error_bound(beta, 12))
    assert eps < 0.05
    vmax = np.abs(np.einsum("bjhe,bkhe->bjkhe", v1.astype(np.float64), v2)).max()
    assert np.abs(np.asarray(poly, np.float64) - ref).max() <= 2 * eps / (1 - eps) * vmax + 1e-5


@pytest.mark.parametrize("causal", [False, True])
def test_exact_gradients_equal_grad_of_naive(causal):
    x = [jnp.asarray(a) for a in _inputs(b=1, n=9, d=4, dv=3, seed=1)]
    w = jax.random.normal(jax.random.key(0), (1, 9, 2, 3))

    def loss(fn):
        return lambda *a: jnp.sum(fn(*a, is_causal=causal) * w)

    fast = jax.grad(loss(lambda *a, **k: tensor_attention(*a, block_q=4, block_k=4, **k)), argnums=range(5))(*x)
    naive = jax.grad(loss(tensor_attention_reference), argnums=range(5))(*x)
    for name, g, r in zip(("q", "k1", "k2", "v1", "v2"), fast, naive):
        assert _rel(g, np.asarray(r, np.float64)) <= 2e-5, name


def test_local_monomials_match_polynomial_module():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32))
    ref = polynomial.monomials(x, polynomial.multi_indices(3, 4))
    np.testing.assert_allclose(_monomials(x, 4), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bound,degree", [(0.6, 2), (1.0, 6)])
def test_poly_error_within_taylor_bound(causal, bound, degree):
    """|O_poly − O| ≤ 2ε/(1−ε)·max|V1∘V2| with ε = e^{2β}β^{g+1}/(g+1)!, β = max|S| (module docstring)."""
    x = _inputs(bound=bound, seed=2)
    ref, beta = np_tensor_attention(*x, 1 / 4, causal)
    eps = float(taylor_error_bound(beta, degree))
    assert eps < 0.05  # the regime where the bound says something
    vmax = np.abs(np.einsum("bjhe,bkhe->bjkhe", x[3].astype(np.float64), x[4])).max()
    out = tensor_attention(*x, method="poly", degree=degree, is_causal=causal)
    err = np.abs(np.asarray(out, np.float64) - ref).max()
    assert err <= 2 * eps / (1 - eps) * vmax + 1e-5


def test_poly_error_blows_up_past_the_phase_transition():
    """Same degree, entries bounded by B = 2.5 (β ≈ B³ far beyond g): the approximation breaks down."""
    x = _inputs(bound=2.5, seed=2)
    ref, beta = np_tensor_attention(*x, 1 / 4)
    assert beta > 4
    out = np.asarray(tensor_attention(*x, method="poly", degree=2), np.float64)
    err = np.abs(out - ref).max() if np.all(np.isfinite(out)) else np.inf
    assert err > 0.3 * np.abs(ref).max()


def _poly_autodiff(q, k1, k2, v1, v2, degree, causal):
    """The same approximation, written densely with polynomial.polynomial_features, for jax.grad."""
    s = 1 / q.shape[-1]
    exps = polynomial.multi_indices(q.shape[-1], degree)
    w = jnp.asarray(polynomial.multinomial_weights(exps, s), jnp.float32)
    u1 = polynomial.monomials(q, exps) * w
    u2, u3 = polynomial.monomials(k1, exps), polynomial.monomials(k2, exps)
    t = jnp.einsum("bihr,bjhr,bkhr->bhijk", u1, u2, u3)  # ≈ exp(S)
    if causal:
        n = q.shape[1]
        i = jnp.arange(n)[:, None, None]
        t = jnp.where((jnp.arange(n)[None, :, None] <= i) & (jnp.arange(n)[None, None, :] <= i), t, 0.0)
    num = jnp.einsum("bhijk,bjhe,bkhe->bihe", t, v1, v2)
    return num / jnp.sum(t, axis=(3, 4)).transpose(0, 2, 1)[..., None]


@pytest.mark.parametrize("causal", [False, True])
def test_poly_custom_vjp_equals_autodiff_of_the_approximation(causal):
    x = [jnp.asarray(a) for a in _inputs(b=1, n=7, d=3, dv=2, bound=1.0, seed=4)]
    w = jax.random.normal(jax.random.key(1), (1, 7, 2, 2))
    f = lambda *a: jnp.sum(tensor_attention(*a, method="poly", degree=3, is_causal=causal) * w)
    g = lambda *a: jnp.sum(_poly_autodiff(*a, 3, causal) * w)
    np.testing.assert_allclose(tensor_attention(*x, method="poly", degree=3, is_causal=causal),
                               _poly_autodiff(*x, 3, causal), rtol=1e-5, atol=1e-6)
    for name, a, b in zip(("q", "k1", "k2", "v1", "v2"), jax.grad(f, argnums=range(5))(*x),
                          jax.grad(g, argnums=range(5))(*x)):
        assert _rel(a, np.asarray(b, np.float64)) <= 1e-4, name


# ---- Definition 3.8: the objective's gradient ------------------------------------------------------------------
def _khatri_rao(a, b):
    return np.einsum("jl,kl->jkl", a, b).reshape(-1, a.shape[1])


def np_loss_grad(a1, a2, a3, a4, a5, x1, x2, x3, y, e, s):
    """L = ½‖D⁻¹exp(s·A1 X (A2⊗A3)ᵀ)(A4⊗A5)Y − E‖², ∇_X = A1ᵀ F (A2⊗A3), all dense in float64."""
    a1, a2, a3, a4, a5, x1, x2, x3, y, e = (np.asarray(t, np.float64) for t in (a1, a2, a3, a4, a5, x1, x2, x3, y, e))
    x = x1 @ _khatri_rao(x2, x3).T
    a23, a45 = np.kron(a2, a3), np.kron(a4, a5)
    logits = s * a1 @ x @ a23.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    v = a45 @ y
    o = p @ v
    g = o - e
    f = s * (p * (g @ v.T) - np.sum(o * g, 1)[:, None] * p)
    return 0.5 * np.sum(g * g), a1.T @ f @ a23, dict(beta=np.abs(logits).max(), v=v, g=g, o=o, x=x)


def _loss_inputs(n=10, d=3, dv=2, scale=0.6, seed=5):
    rng = np.random.default_rng(seed)
    a = [rng.normal(size=(n, d)) * scale for _ in range(5)]
    x = [rng.normal(size=(d, d)) * scale for _ in range(3)]
    return [t.astype(np.float32) for t in a + x + [rng.normal(size=(d * d, dv)), rng.normal(size=(n, dv))]]


def test_loss_grad_exact_matches_closed_form_and_jax_grad():
    args = _loss_inputs()
    loss_ref, grad_ref, aux = np_loss_grad(*args, 1 / 3)
    loss, grad = tensor_attention_loss_grad(*args, block_q=4, block_k=4)
    assert grad.shape == (3, 9)
    assert abs(float(loss) - loss_ref) <= 1e-5 * loss_ref
    assert _rel(grad, grad_ref) <= 1e-5

    a1, a2, a3, a4, a5, _, _, _, y, e = (jnp.asarray(t) for t in args)

    def dense_loss(xm):  # jax.grad of the naive objective in X
        logits = a1 @ xm @ jnp.kron(a2, a3).T / 3
        o = jax.nn.softmax(logits, axis=-1) @ jnp.kron(a4, a5) @ y
        return 0.5 * jnp.sum((o - e) ** 2)

    assert _rel(grad, np.asarray(jax.grad(dense_loss)(jnp.asarray(aux["x"], jnp.float32)), np.float64)) <= 1e-4


def test_loss_grad_fast_within_the_approximation_error():
    """First-order bound: with η = 2ε/(1−ε) the pair weights move by Σ_jk|P̃−P| ≤ η, O by ≤ η·|V|max, and
    ∇ = A1ᵀF(A2⊗A3) by ≤ n·Π max|A_t| · max_i Σ_jk |F̃−F|_ijk (terms written out below)."""
    args = _loss_inputs()
    _, grad_ref, aux = np_loss_grad(*args, 1 / 3)
    n, d = args[0].shape
    dv = args[8].shape[1]
    errs = []
    for degree in (2, 4, 6):
        eps = float(taylor_error_bound(aux["beta"], degree))
        eta = 2 * eps / (1 - eps)
        vmax, gmax = np.abs(aux["v"]).max(), np.abs(aux["g"]).max()
        do = eta * vmax  # |Õ − O| per entry
        dh = dv * do * vmax  # |H̃ − H|, H = G Vᵀ
        ddelta = dv * do * (gmax + do + vmax)
        hmax, deltamax = dv * (gmax + do) * vmax, dv * (vmax + do) * (gmax + do)
        per_row = (1 / 3) * (eta * (hmax + deltamax) + (1 + eta) * (dh + ddelta))
        bound = n * np.prod([np.abs(a).max() for a in args[:3]]) * per_row
        _, grad = tensor_attention_loss_grad(*args, method="poly", degree=degree)
        err = np.abs(np.asarray(grad, np.float64) - grad_ref).max()
        assert err <= bound + 1e-5 * np.abs(grad_ref).max(), (degree, err, bound)
        errs.append(err)
    assert errs[2] < errs[1] < errs[0]
    assert errs[2] <= 1e-2 * np.abs(grad_ref).max()


# ---- argument checks -------------------------------------------------------------------------------------------
def test_bad_arguments_name_the_argument():
    q, k1, k2, v1, v2 = _inputs(b=1, n=4)
    cases = [
        (dict(q=q[0]), "q"), (dict(k2=k2[:, :3]), "k2"), (dict(k1=k1[..., :3]), "k1"), (dict(v2=v2[..., :2]), "v2"),
        (dict(method="fast"), "method"), (dict(method="poly"), "degree"), (dict(degree=3), "degree"),
        (dict(key_mask=np.ones((1, 5), bool)), "key_mask"), (dict(scale=-1.0), "scale"),
        (dict(implementation="triton"), "implementation"), (dict(block_q=0), "block_q"),
    ]
    for kw, name in cases:
        a = dict(q=q, k1=k1, k2=k2, v1=v1, v2=v2)
        a.update({k: v for k, v in kw.items() if k in a})
        opts = {k: v for k, v in kw.items() if k not in a}
        with pytest.raises(ValueError, match=f"^{name}:"):
            tensor_attention(a["q"], a["k1"], a["k2"], a["v1"], a["v2"], **opts)
    with pytest.raises(ValueError, match="^is_causal:"):
        tensor_attention(q[:, :3], k1, k2, v1, v2, is_causal=True)
    args = _loss_inputs()
    with pytest.raises(ValueError, match="^y:"):
        tensor_attention_loss_grad(*args[:8], args[8][:4], args[9])
    with pytest.raises(ValueError, match="^e:"):
        tensor_attention_loss_grad(*args[:9], args[9][:, :1])
    with pytest.raises(ValueError, match="^a3:"):
        tensor_attention_loss_grad(args[0], args[1], args[2][:5], *args[3:])
