import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.models.audio import AudioConfig, AudioEncoder, sinusoids
from jaxmm.models.projector import Projector
from jaxmm.models.vit import ViT, ViTConfig


def test_vit_feature_layer_and_cls_handling():
    cfg = ViTConfig(image_size=16, patch_size=4, d_model=16, num_layers=3, num_heads=2, mlp_dim=32)
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    m = ViT(cfg)
    p = m.init(jax.random.key(1), x)
    out = m.apply(p, x)
    assert len(out["hidden_states"]) == 4 and out["last_hidden_state"].shape == (2, 17, 16)
    np.testing.assert_array_equal(out["features"], out["hidden_states"][-2][:, 1:])  # penultimate, CLS dropped
    np.testing.assert_array_equal(out["last_hidden_state"], out["hidden_states"][-1])
    keep = ViT(ViTConfig(**{**cfg.__dict__, "feature_layer": -1, "drop_cls": False})).apply(p, x)["features"]
    np.testing.assert_array_equal(keep, out["last_hidden_state"])
    assert cfg.num_features == 16
    # a patch only changes its own token at the embedding layer (hidden_states[0] is pre-normed embeddings)
    x2 = x.at[:, :4, :4].add(1.0)
    h0, h0b = out["hidden_states"][0], m.apply(p, x2)["hidden_states"][0]
    changed = np.where(np.abs(np.asarray(h0 - h0b)).max(axis=(0, 2)) > 1e-6)[0]
    np.testing.assert_array_equal(changed, [1])
    with pytest.raises(ValueError, match="pixel_values: expected shape"):
        m.apply(p, jnp.zeros((2, 3, 16, 16)))


def test_audio_encoder_lengths_positions_and_grad():
    cfg = AudioConfig(n_mels=8, max_frames=40, d_model=16, num_layers=1, num_heads=2, mlp_dim=32, pool=2)
    mel = jax.random.normal(jax.random.key(0), (2, 21, 8))
    m = AudioEncoder(cfg)
    p = m.init(jax.random.key(1), mel)
    out = m.apply(p, mel)
    assert out["last_hidden_state"].shape == (2, 11, 16)  # conv stride 2 with padding 1: ceil(21/2)
    assert out["features"].shape == (2, cfg.num_features(21), 16) == (2, 5, 16)
    np.testing.assert_allclose(out["features"][:, 0], out["last_hidden_state"][:, :2].mean(1), atol=1e-6)
    g = jax.grad(lambda p: jnp.sum(m.apply(p, mel)["features"] ** 2))(p)
    assert all(np.isfinite(np.asarray(l)).all() for l in jax.tree.leaves(g))
    with pytest.raises(ValueError, match="mel: expected shape"):
        m.apply(p, jnp.zeros((2, 50, 8)))
    # Whisper's sinusoids: channel i < C/2 is sin(t·exp(−i·ln(1e4)/(C/2−1))), channel C/2+i the cosine
    s = sinusoids(5, 8)
    inc = np.log(10000.0) / 3
    np.testing.assert_allclose(s[3, 2], np.sin(3 * np.exp(-2 * inc)), rtol=1e-6)
    np.testing.assert_allclose(s[4, 5], np.cos(4 * np.exp(-1 * inc)), rtol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "mlp2x_gelu"])
def test_projector_matches_closed_form(kind):
    x = jax.random.normal(jax.random.key(0), (2, 3, 5))
    m = Projector(7, kind)
    p = m.init(jax.random.key(1), x)["params"]
    p = jax.tree.map(lambda a: a + 0.1, __import__("flax").linen.unbox(p))
    y = np.asarray(x, np.float64) @ np.asarray(p["linear_1"]["kernel"]) + np.asarray(p["linear_1"]["bias"])
    if kind == "mlp2x_gelu":
        from scipy.special import erf
        y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
        y = y @ np.asarray(p["linear_2"]["kernel"]) + np.asarray(p["linear_2"]["bias"])
    np.testing.assert_allclose(m.apply({"params": p}, x), y, atol=1e-5)
    with pytest.raises(ValueError, match="kind"):
        Projector(7, "qformer").init(jax.random.key(1), x)
