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
