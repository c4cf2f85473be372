"""Issue 18: jaxmm's ConvNeXt against HF's ConvNextModel on tiny random weights (tests/fixtures/hf/convnext, made
by tests/fixtures/make_hf_fixtures_convnext.py in the torch side env): every output <= 1e-4."""
from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.hf import from_pretrained, load_safetensors, read_config
from jaxmm.hf.convnext import from_hf

FOLDER = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf", "convnext")
TOL = 1e-4


@pytest.fixture(scope="module")
def loaded():
    model, params = from_pretrained(FOLDER)
    ref = dict(np.load(os.path.join(FOLDER, "reference.npz")))
    return model, params, ref, model.apply({"params": params}, jnp.asarray(ref["pixel_values"]))


def test_outputs_match_hf(loaded):
    model, params, ref, out = loaded
    assert model.config.hidden_sizes == (8, 16) and model.config.depths == (1, 2)
    assert out["last_hidden_state"].shape == ref["last_hidden_state"].shape == (2, 4, 3, 16)
    np.testing.assert_allclose(out["last_hidden_state"], ref["last_hidden_state"], atol=TOL, rtol=0)
    np.testing.assert_allclose(out["pooler_output"], ref["pooler_output"], atol=TOL, rtol=0)
    assert len(out["hidden_states"]) == int(ref["num_hidden_states"]) == 3
    for i, h in enumerate(out["hidden_states"]):
        np.testing.assert_allclose(h, ref[f"hidden_states_{i}"], atol=TOL, rtol=0)
    assert out["features"].shape == (2, 12, 16)
    np.testing.assert_allclose(out["features"], ref["last_hidden_state"].reshape(2, 12, 16), atol=TOL, rtol=0)


def test_layer_scale_is_loaded_not_defaulted(loaded):
    """The fixture redraws layer_scale ~ N(0, 1); HF's init value 1e-6 would make every block nearly inert."""
    _, params, _, _ = loaded
    assert float(jnp.abs(params["stages_1_blocks_0"]["gamma"]).max()) > 0.1


def test_classification_prefix_and_bad_tensors():
    cfg, tensors = read_config(FOLDER), load_safetensors(FOLDER)
    cls = {"convnext." + k: v for k, v in tensors.items()} | {"classifier.weight": np.zeros((3, 16), np.float32)}
    _, params = from_hf(cfg | {"architectures": ["ConvNextForImageClassification"]}, cls)
    ref = dict(np.load(os.path.join(FOLDER, "reference.npz")))
    model, _ = from_hf(cfg, tensors)
    out = model.apply({"params": params}, jnp.asarray(ref["pixel_values"]))
    np.testing.assert_allclose(out["pooler_output"], ref["pooler_output"], atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="missing tensors"):
        from_hf(cfg, {k: v for k, v in tensors.items() if "layer_scale" not in k})
    with pytest.raises(ValueError, match="architectures"):
        from_hf(cfg | {"architectures": ["ResNetModel"]}, tensors)
