"""jaxmm.hf.init: module configs from HF folders (shape settings from config.json, explicit overrides checked),
weights into a model's param groups (vocabulary growth, LoRA kept), checked against HF's own outputs."""
import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.hf import from_pretrained
from jaxmm.hf import init as hf_init
from jaxmm.models.encoders import get as get_encoder

HF = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "hf")
VIT_DEFAULTS = get_encoder("vit").defaults
AUDIO_DEFAULTS = get_encoder("audio").defaults


def test_encoder_settings_come_from_config_json_and_the_rest_from_the_section():
    section = dict(VIT_DEFAULTS, feature_layer=-2, lora_rank=2)  # the trainer's model.vit: defaults + two fields
    cfg = hf_init.encoder_config(os.path.join(HF, "siglip_vision"), "vit", section, VIT_DEFAULTS, remat=True)
    ref, _ = from_pretrained(os.path.join(HF, "siglip_vision"))
    for k in hf_init.FOLDER_FIELDS["ViTConfig"]:
        assert getattr(cfg, k) == getattr(ref.config, k), k
    assert cfg.image_size == 32 and VIT_DEFAULTS["image_size"] != 32  # the section's default yielded
    assert (cfg.feature_layer, cfg.lora_rank, cfg.remat) == (-2, 2, True)


def test_a_mismatching_explicit_override_names_both_values():
    section = dict(VIT_DEFAULTS, d_model=128)  # explicit (not the default 64), folder says 32
    with pytest.raises(ValueError, match=r"model\.vit\.d_model.*32.*128"):
        hf_init.encoder_config(os.path.join(HF, "siglip_vision"), "vit", section, VIT_DEFAULTS)
    # equal to the folder's value: fine
    cfg = hf_init.encoder_config(os.path.join(HF, "siglip_vision"), "vit", dict(VIT_DEFAULTS, d_model=32),
                                 VIT_DEFAULTS)
    assert cfg.d_model == 32
    with pytest.raises(ValueError, match=r"model\.llm\.num_layers.*2.*5"):
        hf_init.llm_config(os.path.join(HF, "llama_mha"), {"num_layers": 5}, {"num_layers": 2, "d_model": 64})


def test_encoder_kind_must_match_the_folder():
    with pytest.raises(ValueError, match=r"model\.encoder.*'audio'.*WhisperForConditionalGeneration"):
        hf_init.encoder_config(os.path.join(HF, "whisper_encoder"), "vit", {}, {})
    with pytest.raises(ValueError, match="architectures"):
        hf_init.encoder_config(os.path.join(HF, "llama_mha"), "vit", {}, {})
    cfg = hf_init.encoder_config(os.path.join(HF, "whisper_encoder"), "audio", dict(AUDIO_DEFAULTS, pool=3),
                                 AUDIO_DEFAULTS)
    assert (cfg.n_mels, cfg.max_frames, cfg.d_model, cfg.pool) == (16, 24, 32, 3)  # pool: not the folder's


def test_grown_vocabulary_keeps_the_checkpoint_logits():
    """A tokenizer larger than the checkpoint's vocab (LLaVA adds <image>): new rows / lm_head columns are the
    mean of the stored ones; the logits of the original vocabulary equal HF's."""
    folder = os.path.join(HF, "llama_mha")
    cfg = hf_init.llm_config(folder, {"lora_rank": 2}, vocab_size=260)
    assert cfg.vocab_size == 260 and cfg.lora_rank == 2
    params = hf_init.load_params(folder, cfg)
    emb = np.asarray(params["embedder"]["embedding"])
    np.testing.assert_allclose(emb[256:], np.broadcast_to(emb[:256].mean(0), (4, emb.shape[1])), atol=1e-6)
    from jaxmm.models.llm import LLM

    ref = np.load(os.path.join(folder, "reference.npz"))
    logits = np.asarray(LLM(cfg).apply({"params": params}, jnp.asarray(ref["input_ids"])))
    assert logits.shape[-1] == 260
    assert np.max(np.abs(logits[..., :256] - ref["logits"])) < 1e-4
    head = np.asarray(params["lm_head"]["kernel"])
    np.testing.assert_allclose(logits[..., 256:], np.broadcast_to(
        logits[..., :256].mean(-1, keepdims=True), logits[..., 256:].shape), atol=1e-4)  # mean column -> mean logit
    assert head.shape == (64, 260)


@functools.cache
def _mllm(enc_folder, llm_folder, lora=0, encoder="vit"):
    from jaxmm.models.mllm import MLLM, MLLMConfig

    defaults = get_encoder(encoder).defaults
    enc = hf_init.encoder_config(enc_folder, encoder, dict(defaults, lora_rank=lora), defaults)
    llm = hf_init.llm_config(llm_folder, {"lora_rank": lora})
    model = MLLM(MLLMConfig(llm=llm, placeholder_id=5, encoder=encoder, encoder_config=enc))
    ids = jnp.array([[1, 5, 7, 8]])
    image = jnp.zeros((1, enc.image_size, enc.image_size, 3) if encoder == "vit" else (1, enc.max_frames, enc.n_mels))
    import flax.linen as nn

    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(1), ids, image)["params"])
    rng = np.random.default_rng(0)  # stand-in "random init" values (an MLLM init costs 20-40 s to compile here)
    params = jax.tree_util.tree_map_with_path(  # lora_b = 0 as Dense initialises it
        lambda p, s: jnp.asarray(rng.standard_normal(s.shape) * (p[-1].key != "lora_b"), s.dtype), shapes)
    return model, params, ids, image


def test_load_group_puts_the_folders_weights_into_the_mllm():
    enc_folder, llm_folder = os.path.join(HF, "siglip_vision"), os.path.join(HF, "llama_mha")
    model, params, ids, _ = _mllm(enc_folder, llm_folder, lora=2)
    before = jax.tree.map(np.asarray, params)
    params = hf_init.load_group(params, "encoder", enc_folder, model.config.encoder_config)
    params = hf_init.load_group(params, "llm", llm_folder, model.config.llm)
    ref = np.load(os.path.join(HF, "siglip_vision", "reference.npz"))
    feats = model.apply({"params": params}, jnp.asarray(ref["pixel_values"]), method=lambda m, x: m.encoder(x))
    assert np.max(np.abs(np.asarray(feats["last_hidden_state"]) - ref["last_hidden_state"])) < 1e-4
    ref = np.load(os.path.join(HF, "llama_mha", "reference.npz"))
    logits = model.apply({"params": params}, jnp.asarray(ref["input_ids"]), method=lambda m, x: m.llm(x))
    assert np.max(np.abs(np.asarray(logits) - ref["logits"])) < 1e-4
    # LoRA leaves and the projector are the model's own init, untouched
    lora_a = ("llm", "layers_0", "attn", "q", "lora_a")
    get = lambda t, p: t[p[0]][p[1]][p[2]][p[3]][p[4]]  # noqa: E731
    np.testing.assert_array_equal(get(params, lora_a), get(before, lora_a))
    np.testing.assert_array_equal(params["projector"]["linear_1"]["kernel"], before["projector"]["linear_1"]["kernel"])


def test_whisper_encoder_loads_into_an_audio_mllm():
    folder = os.path.join(HF, "whisper_encoder")
    model, params, _, _ = _mllm(folder, os.path.join(HF, "qwen2_tied"), encoder="audio")
    params = hf_init.load_group(params, "encoder", folder, model.config.encoder_config)
    ref = np.load(os.path.join(folder, "reference.npz"))
    out = model.apply({"params": params}, jnp.asarray(ref["input_features"]), method=lambda m, x: m.encoder(x))
    assert np.max(np.abs(np.asarray(out["last_hidden_state"]) - ref["last_hidden_state"])) < 1e-4
    assert out["features"].shape[1] == 12 // 2  # the section's time pooling (2) on the folder's encoder


def test_load_group_refuses_a_config_of_another_folder():
    model, params, _, _ = _mllm(os.path.join(HF, "siglip_vision"), os.path.join(HF, "llama_mha"), lora=2)
    other = dataclasses.replace(model.config.llm, num_layers=1)
    with pytest.raises(ValueError, match="module_config"):
        hf_init.load_group(params, "llm", os.path.join(HF, "llama_mha"), other)
    with pytest.raises(ValueError, match=r"params\['llm'\].*shapes differ.*embedder"):
        hf_init.replace_group(params, "llm", {**params["llm"], "embedder": {"embedding": jnp.zeros((3, 64))}},
                              source="x")
    with pytest.raises(ValueError, match="group"):
        hf_init.load_group(params, "vision", os.path.join(HF, "llama_mha"), model.config.llm)


def test_image_processor_of_a_folder_without_one_warns(tmp_path):
    with pytest.warns(UserWarning, match="preprocessor_config"):
        assert hf_init.image_processor(os.path.join(HF, "clip_vision")) is None
    assert hf_init.image_processor(os.path.join(HF, "clip_model")).crop == (16, 16)


@pytest.mark.parametrize("name", ["siglip_vision", "clip_model", "whisper_encoder", "llama3_gqa_tied", "qwen2_tied",
                                  "mistral"])
def test_folder_fields_list_every_field_a_folder_sets(name):
    """FOLDER_FIELDS must name every config field the loaders read from config.json: any other field of the
    folder's config is the dataclass default (else a section's value would silently replace a folder's)."""
    cfg = hf_init._module_config(os.path.join(HF, name), hf_init.architecture(os.path.join(HF, name)))
    keys = hf_init.FOLDER_FIELDS[type(cfg).__name__]
    for f in dataclasses.fields(cfg):
        if f.name not in keys and f.default is not dataclasses.MISSING:
            assert getattr(cfg, f.name) == f.default, f.name
