"""Issue 18: LLaVA-HR-style fusion in the dual-resolution encoder. Zero-init leaves the ViT's function unchanged;
the fusion gets a gradient; once trained it injects high-res detail that the low-res view cannot carry, exactly
after the chosen blocks."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.models import encoders
from jaxmm.models.dual_encoder import DualEncoder, DualEncoderConfig, avg_pool_to
from jaxmm.models.vit import ViT

CFG = DualEncoderConfig(image_size=32, low_res=16, vit=dict(patch_size=4, d_model=16, num_layers=2, num_heads=2,
                                                             mlp_dim=32, feature_layer=-1),
                        convnext=dict(patch_size=2, hidden_sizes=(8,), depths=(1,)), fuse_after=(2,))


@pytest.fixture(scope="module")
def setup():
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    model = DualEncoder(CFG)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(1), x)["params"])
    return model, params, x


@jax.jit
def vit_alone(params, x):
    return ViT(CFG.vit).apply({"params": params["vit"]}, avg_pool_to(x, CFG.low_res))


@jax.jit
def apply(params, x):
    return DualEncoder(CFG).apply({"params": params}, x)


def test_avg_pool_matches_numpy():
    x = np.random.default_rng(0).standard_normal((1, 6, 6, 2))
    ref = x.reshape(1, 3, 2, 3, 2, 2).transpose(0, 1, 3, 5, 2, 4).reshape(1, 3, 3, 2, 4).mean(-1)
    np.testing.assert_allclose(avg_pool_to(jnp.asarray(x), 3), ref, atol=1e-6)


def test_zero_init_is_the_vit_on_the_low_res_view(setup):
    model, params, x = setup
    out, ref = apply(params, x), vit_alone(params, x)
    np.testing.assert_allclose(out["features"], ref["features"], atol=1e-6, rtol=0)   # two jit programs: rounding
    np.testing.assert_allclose(out["last_hidden_state"], ref["last_hidden_state"], atol=1e-6, rtol=0)
    assert float(jnp.abs(ref["features"]).max()) > 0.1
    assert set(params) == {"vit", "convnext", "fusion_2"}
    low_only = DualEncoder(dataclasses.replace(CFG, low_res_only=True))
    assert set(jax.eval_shape(low_only.init, jax.random.key(1), x)["params"]) == {"vit"}
    np.testing.assert_allclose(jax.jit(low_only.apply)({"params": {"vit": params["vit"]}}, x)["features"],
                               ref["features"], atol=1e-6)


def _objective(model, params, x):
    return jnp.sum(model.apply({"params": params}, x)["features"] ** 2)


def test_fusion_gets_a_gradient_and_then_injects_high_res_detail(setup):
    model, params, x = setup
    grads = jax.jit(jax.grad(lambda p: _objective(model, p, x)))(params)
    assert float(jnp.abs(grads["fusion_2"]["proj"]["kernel"]).max()) > 1e-4   # the zero projection can learn
    params1 = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    # detail inside each 2x2 pooling cell: invisible to the low-res ViT, visible to the ConvNeXt
    cell = jnp.array([[1.0, -1.0], [-1.0, 1.0]])
    x2 = x + jnp.tile(cell, (16, 16))[None, :, :, None]
    np.testing.assert_allclose(avg_pool_to(x2, 16), avg_pool_to(x, 16), atol=1e-5)
    a, b = apply(params1, x), apply(params1, x2)
    va, vb = vit_alone(params1, x), vit_alone(params1, x2)
    np.testing.assert_allclose(va["features"], vb["features"], atol=1e-4)         # the ViT alone cannot see it
    assert float(jnp.abs(a["features"] - b["features"]).max()) > 1e-3               # the fused encoder does
    # injected after block 2 only: hidden_states[0..1] (embeddings, block 1) equal the ViT alone
    for i in range(2):
        np.testing.assert_allclose(a["hidden_states"][i], va["hidden_states"][i], atol=1e-5)
    assert float(jnp.abs(a["hidden_states"][2] - va["hidden_states"][2]).max()) > 1e-4


def test_registered_and_bad_configs():
    spec = encoders.get("dual_res")
    cfg = spec.build_config(dict(spec.defaults))
    assert cfg.fuse_after == (1, 4, 7) and cfg.vit.num_layers == 8 and spec.feature_shape(cfg, None) == (36, 64)
    with pytest.raises(ValueError, match="fuse_after"):
        DualEncoderConfig(image_size=32, low_res=16, vit=dict(patch_size=4, num_layers=2), fuse_after=(1, 4))
    with pytest.raises(ValueError, match="image_size"):
        DualEncoderConfig(image_size=40, low_res=16, vit=dict(patch_size=4, num_layers=2), fuse_after=(1,))
    with pytest.raises(ValueError, match="set by the dual encoder"):
        DualEncoderConfig(image_size=32, low_res=16, vit=dict(image_size=32, num_layers=2), fuse_after=(1,))
    with pytest.raises(ValueError, match="image: expected"):
        DualEncoder(CFG).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
