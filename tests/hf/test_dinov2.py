"""jaxmm.hf.dinov2 against a tiny random HF Dinov2Model (tests/fixtures/make_hf_fixtures_dinov2.py)."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.hf import from_pretrained, load_safetensors, read_config

FOLDER = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf", "dinov2")
TOL = 1e-4


@pytest.fixture(scope="module")
def loaded():
    model, params = from_pretrained(FOLDER)
    return model, params, dict(np.load(os.path.join(FOLDER, "reference.npz")))


def test_dinov2_matches_hf(loaded):
    model, params, ref = loaded
    out = model.apply({"params": params}, jnp.asarray(ref["pixel_values"]))
    assert out["last_hidden_state"].shape == (2, 17, 32)
    np.testing.assert_allclose(out["last_hidden_state"], ref["last_hidden_state"], atol=TOL)
    np.testing.assert_allclose(out["pooler_output"], ref["pooler_output"], atol=TOL)
    np.testing.assert_allclose(out["patch_tokens"], ref["last_hidden_state"][:, 1:], atol=TOL)
    assert len(out["hidden_states"]) == 3
    for i, h in enumerate(out["hidden_states"]):
        np.testing.assert_allclose(h, ref[f"hidden_states_{i}"], atol=TOL)


def test_layer_scale_is_loaded_not_defaulted(loaded):
    # the fixture's γ are 0.5 + 0.2 N: a loader that kept the config's layerscale_value (1.0) would differ
    model, params, ref = loaded
    g = np.asarray(params["layers_0"]["layer_scale1"])
    assert np.abs(g - 1.0).min() > 1e-3
    bad = dict(params, layers_0=dict(params["layers_0"], layer_scale1=jnp.ones_like(g)))
    out = model.apply({"params": bad}, jnp.asarray(ref["pixel_values"]))
    assert np.abs(np.asarray(out["last_hidden_state"]) - ref["last_hidden_state"]).max() > 1e-2


def test_prefixed_and_in_memory_names_load(tmp_path, loaded):
    from safetensors.numpy import save_file

    from jaxmm.hf.dinov2 import _RENAMES

    tensors = load_safetensors(FOLDER)
    renamed = {}
    for k, v in tensors.items():
        for old, new in _RENAMES.items():
            k = k.replace(old, new)
        renamed["dinov2." + k] = v
    renamed["classifier.weight"] = np.zeros((3, 64), np.float32)
    (tmp_path / "config.json").write_text(json.dumps(read_config(FOLDER)))
    save_file(renamed, str(tmp_path / "model.safetensors"))
    model, params = from_pretrained(tmp_path)
    _, _, ref = loaded
    out = model.apply({"params": params}, jnp.asarray(ref["pixel_values"]))
    np.testing.assert_allclose(out["last_hidden_state"], ref["last_hidden_state"], atol=TOL)


def test_unsupported_variants_are_refused():
    from jaxmm.hf.dinov2 import dino_config_from_hf

    with pytest.raises(ValueError, match="use_swiglu_ffn"):
        dino_config_from_hf({"architectures": ["Dinov2Model"], "use_swiglu_ffn": True})
    with pytest.raises(ValueError, match="architectures"):
        dino_config_from_hf({"architectures": ["Dinov2ForImageClassification"]})
