"""HF parity of the families added in issue 15 (fixtures by tests/fixtures/make_hf_fixtures_families.py, torch +
transformers): SigLIP vision, the Whisper encoder, the CLIP text tower (CLIPTextModel and CLIPModel's text side),
and the image processors of preprocessor_config.json. No torch needed here."""
import functools
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.hf import from_pretrained, load_safetensors, read_config
from jaxmm.hf.preprocess import ImageProcessor

HF = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "hf")
TOL = 1e-4


@functools.cache
def loaded(name, tower=None):
    model, params = from_pretrained(os.path.join(HF, name), tower=tower)
    return model, params, dict(np.load(os.path.join(HF, name, "reference.npz")))


def max_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.parametrize("name", ["siglip_vision", "clip_model"])
def test_vision_towers_match_hf(name):
    model, params, ref = loaded(name)
    out = model.apply({"params": params}, jnp.asarray(ref["pixel_values"]))
    assert out["last_hidden_state"].shape == ref["last_hidden_state"].shape
    assert max_err(out["last_hidden_state"], ref["last_hidden_state"]) < TOL
    assert max_err(out["pooler_output"], ref["pooler_output"]) < TOL
    assert len(out["hidden_states"]) == len(ref["hidden_states"])
    for h, r in zip(out["hidden_states"], ref["hidden_states"]):
        assert max_err(h, r) < TOL
    if "image_embeds" in ref:
        assert max_err(out["image_embeds"], ref["image_embeds"]) < TOL


def test_siglip_has_no_class_token_and_features_are_every_patch():
    model, params, ref = loaded("siglip_vision")
    cfg = model.config
    assert not cfg.class_token and cfg.pool == "map" and cfg.num_features == cfg.num_patches == 16
    out = model.apply({"params": params}, jnp.asarray(ref["pixel_values"]))
    assert max_err(out["features"], ref["hidden_states"][cfg.feature_layer]) < TOL
    assert "class_embedding" not in params and "pre_norm" not in params


def test_siglip_without_head_and_from_a_siglipmodel_prefix(tmp_path):
    """vision_use_head=False drops the head (no pooler); `vision_model.`-prefixed SiglipModel tensors load."""
    from safetensors.numpy import save_file

    tensors = load_safetensors(os.path.join(HF, "siglip_vision"))
    cfg = read_config(os.path.join(HF, "siglip_vision"))
    folder = tmp_path / "siglip_model"
    folder.mkdir()
    vision = {k: v for k, v in cfg.items() if k != "architectures"} | {"vision_use_head": False}
    (folder / "config.json").write_text(json.dumps({"architectures": ["SiglipModel"], "vision_config": vision}))
    kept = {f"vision_model.{k}": v for k, v in tensors.items() if not k.startswith("head.")}
    save_file(kept | {"logit_scale": np.ones(1, np.float32), "text_model.x": np.zeros(2, np.float32)},
              str(folder / "model.safetensors"))
    model, params = from_pretrained(folder)
    _, _, ref = loaded("siglip_vision")
    out = model.apply({"params": params}, jnp.asarray(ref["pixel_values"]))
    assert "pooler_output" not in out and "head" not in params
    assert max_err(out["last_hidden_state"], ref["last_hidden_state"]) < TOL


def test_whisper_encoder_matches_hf():
    model, params, ref = loaded("whisper_encoder")
    cfg = model.config
    assert (cfg.n_mels, cfg.max_frames, cfg.d_model, cfg.num_layers) == (16, 24, 32, 2)
    out = model.apply({"params": params}, jnp.asarray(ref["input_features"]))
    assert out["last_hidden_state"].shape == ref["last_hidden_state"].shape
    assert max_err(out["last_hidden_state"], ref["last_hidden_state"]) < TOL
    assert "decoder" not in str(list(params))


def test_whisper_refuses_learned_positions(tmp_path):
    from safetensors.numpy import save_file

    src = os.path.join(HF, "whisper_encoder")
    tensors = load_safetensors(src)
    tensors["model.encoder.embed_positions.weight"] = tensors["model.encoder.embed_positions.weight"] + 0.5
    shutil.copy(os.path.join(src, "config.json"), tmp_path / "config.json")
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="embed_positions.*sinusoids"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize("name,tower", [("clip_text", None), ("clip_model", "text")])
def test_clip_text_tower_matches_hf(name, tower):
    model, params, ref = loaded(name, tower)
    out = model.apply({"params": params}, jnp.asarray(ref["input_ids"]), jnp.asarray(ref["attention_mask"]))
    assert max_err(out["last_hidden_state"], ref["text_last_hidden_state"]) < TOL
    assert max_err(out["pooler_output"], ref["text_pooler_output"]) < TOL
    for h, r in zip(out["hidden_states"], ref["text_hidden_states"], strict=True):
        assert max_err(h, r) < TOL
    if "text_embeds" in ref:
        assert max_err(out["text_embeds"], ref["text_embeds"]) < TOL


def test_clip_text_pooling_rules_differ():
    """eos_token_id=2 (legacy) pools at argmax(ids); CLIPModel's eos 5 at the first 5 (not the largest id)."""
    assert loaded("clip_text")[0].config.eos_token_id == 2
    model, params, ref = loaded("clip_model", "text")
    assert model.config.eos_token_id == 5
    ids = ref["input_ids"]
    first_eos = np.argmax(ids == 5, axis=1)
    assert (first_eos != np.argmax(ids, axis=1)).all()  # the two rules pick different tokens here
    last = np.asarray(model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(ref["attention_mask"]))
                      ["last_hidden_state"])
    np.testing.assert_allclose(last[np.arange(2), first_eos], ref["text_pooler_output"], atol=TOL)


@pytest.mark.parametrize("name", ["siglip_vision", "clip_model"])
def test_image_processor_matches_hf(name):
    proc = ImageProcessor.from_folder(os.path.join(HF, name))
    ref = loaded(name)[2]
    out = proc(ref["preprocess_image"])
    assert out.shape == ref["preprocess_pixel_values"].shape[1:]
    assert max_err(out, ref["preprocess_pixel_values"][0]) < 1e-5
    assert proc.output_size == out.shape[:2]
    # the device half equals the host one
    assert max_err(proc.normalize(jnp.asarray(proc.geometric(ref["preprocess_image"])), xp=jnp), out) < 1e-6


def test_image_processor_refuses_other_types(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "ViTImageProcessor"}))
    with pytest.raises(ValueError, match="image_processor_type.*ViTImageProcessor"):
        ImageProcessor.from_folder(tmp_path)
