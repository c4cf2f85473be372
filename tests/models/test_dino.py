"""jaxmm.models.dino: DINO's loss, centring, EMA and multi-crop against float64 NumPy; the ViT's shapes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.models import dino


def _np_loss(s, t, c, ts, tt):
    s, t, c = (np.asarray(a, np.float64) for a in (s, t, c))
    total, n = 0.0, 0
    for i in range(t.shape[0]):
        p = np.exp((t[i] - c) / tt)
        p /= p.sum(-1, keepdims=True)
        for j in range(s.shape[0]):
            if i == j:
                continue
            z = s[j] / ts
            logq = z - z.max(-1, keepdims=True)
            logq -= np.log(np.exp(logq).sum(-1, keepdims=True))
            total += -(p * logq).sum(-1).mean()
            n += 1
    return total / n


def test_dino_loss_matches_numpy_and_skips_same_view_pairs():
    rng = np.random.default_rng(0)
    s, t, c = rng.normal(size=(5, 3, 7)), rng.normal(size=(2, 3, 7)), rng.normal(size=7) * 0.1
    got = dino.dino_loss(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(c, jnp.float32),
                         student_temp=0.1, teacher_temp=0.04)
    assert float(got) == pytest.approx(_np_loss(s, t, c, 0.1, 0.04), rel=1e-5)
    # changing the student's view 0 must not change the (teacher 0, student 0) term: it is excluded
    s2 = s.copy()
    s2[0] = s[0] + 3 * rng.normal(size=s[0].shape)
    got2 = dino.dino_loss(jnp.asarray(s2, jnp.float32), jnp.asarray(t[:1], jnp.float32), jnp.asarray(c, jnp.float32))
    ref = dino.dino_loss(jnp.asarray(s, jnp.float32), jnp.asarray(t[:1], jnp.float32), jnp.asarray(c, jnp.float32))
    assert float(got2) == pytest.approx(float(ref), rel=1e-6)


def test_teacher_side_gets_no_gradient():
    rng = np.random.default_rng(1)
    s, t = jnp.asarray(rng.normal(size=(3, 2, 5))), jnp.asarray(rng.normal(size=(2, 2, 5)))
    gs, gt = jax.grad(lambda a, b: dino.dino_loss(a, b, jnp.zeros(5)), argnums=(0, 1))(s, t)
    assert np.abs(gs).max() > 0 and np.abs(gt).max() == 0


def test_center_and_ema_closed_form():
    t = jnp.arange(24.0).reshape(2, 3, 4)
    c = dino.update_center(jnp.ones(4), t, momentum=0.9)
    np.testing.assert_allclose(c, 0.9 + 0.1 * np.arange(24.0).reshape(6, 4).mean(0), rtol=1e-6)
    e = dino.ema({"a": jnp.ones(3)}, {"a": jnp.zeros(3)}, 0.99)
    np.testing.assert_allclose(e["a"], 0.99)


def test_multi_crop_shapes_and_full_crop_is_identity():
    img = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
    g, loc = jax.jit(dino.multi_crop, static_argnames=("num_local", "local_size"))(jax.random.key(1), img,
                                                                                   num_local=3, local_size=8)
    assert g.shape == (2, 2, 16, 16, 3) and loc.shape == (3, 2, 8, 8, 3)
    crop = jax.jit(dino._crop, static_argnums=(2, 3, 4))
    # a whole-image crop (area 1, aspect 1) at full size is the image or its mirror, exactly
    for k in range(4):
        out = np.asarray(crop(img[0], jax.random.key(k), 16, (1.0, 1.0), (1.0, 1.0)))
        err = min(np.abs(out - np.asarray(img[0])).max(), np.abs(out - np.asarray(img[0])[:, ::-1]).max())
        assert err < 1e-5
    half = np.asarray(crop(img[0], jax.random.key(0), 8, (0.25, 0.25), (1.0, 1.0)))
    assert half.shape == (8, 8, 3) and np.abs(half - np.asarray(img[0])[:8, :8]).max() > 1e-3  # a real crop moves


def test_vit_shapes_positions_resize_and_bad_input():
    cfg = dino.DinoConfig(image_size=16, patch_size=4, d_model=16, num_layers=1, num_heads=2)
    m = dino.DinoStudent(cfg, num_prototypes=8)
    p = jax.jit(m.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
    logits, out = jax.jit(m.apply)({"params": p}, jnp.ones((2, 16, 16, 3)))
    assert logits.shape == (2, 8) and out["patch_tokens"].shape == (2, 16, 16)
    logits8, out8 = jax.jit(m.apply)({"params": p}, jnp.ones((2, 8, 8, 3)))           # local crop: 2x2 grid
    assert out8["patch_tokens"].shape == (2, 4, 16)
    with pytest.raises(ValueError, match="images"):
        m.apply({"params": p}, jnp.ones((2, 10, 10, 3)))
    with pytest.raises(ValueError, match="d_model"):
        dino.DinoConfig(d_model=10, num_heads=4)


def _np_sinkhorn(t, temp, iters):
    q = np.exp(np.asarray(t, np.float64) / temp).T          # [K, B], DINOv2's layout
    q /= q.sum()
    k, b = q.shape
    for _ in range(iters):
        q /= q.sum(1, keepdims=True) * k
        q /= q.sum(0, keepdims=True) * b
    return (q * b).T


def test_sinkhorn_knopp_matches_numpy_and_balances_prototypes():
    rng = np.random.default_rng(3)
    t = rng.uniform(-1, 1, size=(2, 6, 5))
    got = np.asarray(dino.sinkhorn_knopp(jnp.asarray(t, jnp.float32), teacher_temp=0.1, iterations=3), np.float64)
    for v in range(2):
        np.testing.assert_allclose(got[v], _np_sinkhorn(t[v], 0.1, 3), rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)            # each sample a distribution
    # many iterations: every prototype gets an equal share of the batch, even when the logits all favour one
    skew = np.zeros((8, 4))
    skew[:, 0] = 1.0
    skew += rng.normal(size=skew.shape) * 0.05
    q = np.asarray(dino.sinkhorn_knopp(jnp.asarray(skew, jnp.float32), teacher_temp=0.5, iterations=50))
    np.testing.assert_allclose(q.sum(0), 8 / 4, rtol=1e-3)
    plain = np.asarray(jax.nn.softmax(jnp.asarray(skew) / 0.5, -1)).sum(0)
    assert plain[0] > 2 * plain[1:].max()                             # softmax alone would not balance them


def test_cross_view_loss_is_dino_loss_with_centred_targets():
    rng = np.random.default_rng(4)
    s, t, c = rng.normal(size=(4, 3, 6)), rng.normal(size=(2, 3, 6)), rng.normal(size=6) * 0.1
    p = np.exp((t - c) / 0.04)
    p /= p.sum(-1, keepdims=True)
    got = dino.cross_view_loss(jnp.asarray(s, jnp.float32), jnp.asarray(p, jnp.float32), student_temp=0.1)
    assert float(got) == pytest.approx(_np_loss(s, t, c, 0.1, 0.04), rel=1e-5)


def test_koleo_matches_numpy_and_punishes_near_duplicates():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 4))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = np.linalg.norm(xn[:, None] - xn[None], axis=-1) + np.diag(np.full(6, np.inf))
    want = -np.mean(np.log(d.min(1) + 1e-8))
    assert float(dino.koleo_loss(jnp.asarray(x, jnp.float32))) == pytest.approx(want, rel=1e-5)
    close = x.copy()
    close[1] = x[0] + 1e-3 * rng.normal(size=4)                      # two samples nearly collapsed
    assert float(dino.koleo_loss(jnp.asarray(close, jnp.float32))) > want + 0.5
    g = jax.grad(dino.koleo_loss)(jnp.asarray(close, jnp.float32))
    assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g[1])).max() > 0
