import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.ops.losses import masked_cross_entropy
from jaxmm.ops.norms import layer_norm, rms_norm
from jaxmm.ops.rope import apply_rope, rope_frequencies


def test_rope_closed_form_rotation():
    d, theta = 8, 10000.0
    x = np.random.default_rng(0).normal(size=(1, 3, 2, d)).astype(np.float32)
    pos = np.array([[0, 5, 17]])
    out = np.asarray(apply_rope(jnp.asarray(x), pos, rope_frequencies(d, theta)))
    inv = theta ** (-np.arange(0, d, 2) / d)
    for t in range(3):
        for i in range(d // 2):  # pair (i, i + d/2) rotates by angle pos·inv_i
            a = pos[0, t] * inv[i]
            x1, x2 = x[0, t, :, i], x[0, t, :, i + d // 2]
            np.testing.assert_allclose(out[0, t, :, i], x1 * math.cos(a) - x2 * math.sin(a), atol=1e-5)
            np.testing.assert_allclose(out[0, t, :, i + d // 2], x2 * math.cos(a) + x1 * math.sin(a), atol=1e-5)


def test_rope_scores_depend_on_relative_position_only():
    d = 16
    inv = rope_frequencies(d, 500000.0)
    rng = np.random.default_rng(1)
    q, k = (jnp.asarray(rng.normal(size=(1, 1, 1, d)), jnp.float32) for _ in range(2))
    s = lambda m, n: float(jnp.sum(apply_rope(q, [[m]], inv) * apply_rope(k, [[n]], inv)))
    assert abs(s(3, 1) - s(12, 10)) < 1e-4 and abs(s(3, 1) - s(1, 3)) > 1e-3


def test_llama3_scaling_closed_form():
    d, theta = 64, 500000.0
    sc = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}
    inv = theta ** (-np.arange(0, d, 2) / d)
    got = rope_frequencies(d, theta, sc)
    wl = 2 * np.pi / inv
    for f, g, w in zip(inv, got, wl):
        if w < 8192 / 4:
            assert g == pytest.approx(f)
        elif w > 8192 / 1:
            assert g == pytest.approx(f / 8)
        else:
            s = (8192 / w - 1) / (4 - 1)
            assert g == pytest.approx((1 - s) * f / 8 + s * f)
    assert np.any(got != inv) and np.any(got == inv)
    with pytest.raises(ValueError, match="scaling"):
        rope_frequencies(d, theta, {"rope_type": "yarn"})


def test_norms_against_numpy():
    x = np.random.default_rng(2).normal(size=(3, 10)).astype(np.float32)
    s, b = np.linspace(0.5, 1.5, 10, dtype=np.float32), np.linspace(-1, 1, 10, dtype=np.float32)
    ref_rms = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6) * s
    np.testing.assert_allclose(rms_norm(jnp.asarray(x), jnp.asarray(s)), ref_rms, rtol=1e-5)
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(layer_norm(jnp.asarray(x), jnp.asarray(s), jnp.asarray(b)),
                               (x - mu) / np.sqrt(var + 1e-5) * s + b, rtol=1e-5, atol=1e-6)


def test_masked_cross_entropy_counts_only_answer_tokens():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, size=(2, 5))
    mask = np.array([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]])
    logp = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    loss, n = masked_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    assert float(n) == 6
    np.testing.assert_allclose(loss, (nll * mask).sum() / 6, rtol=1e-6)
    # changing a masked-out logit changes nothing
    logits2 = logits.copy(); logits2[0, 0] += 100
    np.testing.assert_allclose(masked_cross_entropy(jnp.asarray(logits2), jnp.asarray(targets), jnp.asarray(mask))[0],
                               loss, rtol=1e-6)
    with pytest.raises(ValueError, match="targets"):
        masked_cross_entropy(jnp.asarray(logits), jnp.asarray(targets[:, :4]))
