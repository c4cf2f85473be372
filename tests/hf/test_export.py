"""jaxmm.hf.save_pretrained: the written tensors are the HF fixture files' tensors bit for bit, folders load back
with from_pretrained to the same logits, LoRA is merged, shards + index above max_shard_size, config.json, the
LLaVA layout for an MLLM; the encoder families (SigLIP vision, CLIP text, CLIP vision/text with projection, the
Whisper encoder) round trip to the fixtures' HF reference outputs. (transformers loading the folders:
tests/hf/export_parity.py, side env.)"""
import dataclasses
import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.hf import from_pretrained, load_safetensors, read_config, save_pretrained
from jaxmm.hf.export import hf_tensors, parse_size
from jaxmm.models import encoders
from jaxmm.models.llm import LLMConfig
from jaxmm.models.mllm import MLLM, MLLMConfig

HF = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "hf")
LLMS = {"llama_mha": "LlamaForCausalLM", "llama3_gqa_tied": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
        "qwen2_tied": "Qwen2ForCausalLM"}


@functools.cache
def loaded(name, tower=None):
    return from_pretrained(os.path.join(HF, name), tower=tower)


def max_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.parametrize("name", sorted(LLMS) + ["clip_vision"])
def test_written_tensors_are_the_hf_files_tensors(name):
    model, params = loaded(name)
    out = hf_tensors(model, params)
    ref = load_safetensors(os.path.join(HF, name))
    assert set(out) == set(ref)  # tied models: no lm_head in either
    for k in ref:
        assert out[k].dtype == ref[k].dtype and np.array_equal(out[k], ref[k]), k


@pytest.mark.parametrize("name", sorted(LLMS))
def test_llm_round_trip_config_and_logits(name, tmp_path):
    model, params = loaded(name)
    # a Mistral without sliding window is a Llama to jaxmm: its class is inferred as Llama unless given
    save_pretrained(model, params, tmp_path, architecture="MistralForCausalLM" if name == "mistral" else None)
    cfg, orig = read_config(tmp_path), read_config(os.path.join(HF, name))
    assert cfg["architectures"] == [LLMS[name]]
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "tie_word_embeddings"):
        assert cfg[key] == orig[key], key
    assert cfg["num_key_value_heads"] == orig.get("num_key_value_heads", orig["num_attention_heads"])
    if name == "llama3_gqa_tied":
        assert cfg["rope_theta"] == orig["rope_theta"] and cfg["rope_scaling"] == orig["rope_scaling"]
    model2, params2 = from_pretrained(tmp_path)
    assert model2.config == model.config
    ref = np.load(os.path.join(HF, name, "reference.npz"))
    logits = model2.apply({"params": params2}, jnp.asarray(ref["input_ids"]))
    assert max_err(logits, ref["logits"]) < 1e-4


def test_lora_is_merged_into_the_written_kernels(tmp_path):
    model, params = from_pretrained(os.path.join(HF, "qwen2_tied"), lora_rank=4, lora_alpha=8.0,
                                    lora_targets=("q", "v", "up"))
    # a "trained" adapter: lora_b nonzero
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: jax.random.normal(jax.random.key(len(str(p))), x.shape) * 0.3 if p[-1].key == "lora_b" else x,
        params)
    ids = jnp.asarray(np.load(os.path.join(HF, "qwen2_tied", "reference.npz"))["input_ids"])
    with_lora = model.apply({"params": params}, ids)
    base = from_pretrained(os.path.join(HF, "qwen2_tied"))
    assert max_err(with_lora, base[0].apply({"params": base[1]}, ids)) > 0.1  # the adapter matters
    save_pretrained(model, params, tmp_path)
    assert not any("lora" in k for k in load_safetensors(tmp_path))
    model2, params2 = from_pretrained(tmp_path)
    assert model2.config.lora_rank == 0
    assert max_err(model2.apply({"params": params2}, ids), with_lora) < 1e-4
    # the kernel is W + A·B·alpha/rank
    a, b = params["layers_0"]["attn"]["q"]["lora_a"], params["layers_0"]["attn"]["q"]["lora_b"]
    want = np.asarray(params["layers_0"]["attn"]["q"]["kernel"]) + np.asarray(a) @ np.asarray(b) * (8.0 / 4)
    np.testing.assert_allclose(params2["layers_0"]["attn"]["q"]["kernel"], want, rtol=1e-6, atol=1e-6)


def test_sharded_above_max_shard_size(tmp_path):
    model, params = loaded("llama_mha")
    save_pretrained(model, params, tmp_path, max_shard_size="100KB")
    index = json.load(open(tmp_path / "model.safetensors.index.json"))
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 4 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (tmp_path / "model.safetensors").exists()
    tensors = load_safetensors(tmp_path)
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in tensors.values())
    for shard in shards:
        part = load_safetensors(tmp_path / shard)
        assert sum(a.nbytes for a in part.values()) <= 100_000 or len(part) == 1
    ref = np.load(os.path.join(HF, "llama_mha", "reference.npz"))
    model2, params2 = from_pretrained(tmp_path)
    assert max_err(model2.apply({"params": params2}, jnp.asarray(ref["input_ids"])), ref["logits"]) < 1e-4
    # below the limit: one file
    save_pretrained(model, params, tmp_path, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    assert parse_size("5GB") == 5 * 10 ** 9 and parse_size("64KiB") == 65536 and parse_size(123) == 123
    with pytest.raises(ValueError, match="max_shard_size"):
        parse_size("lots")


def test_existing_folder_needs_overwrite_and_bf16_is_kept(tmp_path):
    model, params = loaded("qwen2_tied")
    save_pretrained(model, params, tmp_path)
    with pytest.raises(ValueError, match="overwrite"):
        save_pretrained(model, params, tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    save_pretrained(model, p16, tmp_path, overwrite=True, extra_config={"eos_token_id": [5, 6]})
    assert (tmp_path / "tokenizer.json").exists()
    cfg = read_config(tmp_path)
    assert cfg["dtype"] == "bfloat16" and cfg["eos_token_id"] == [5, 6]
    t = load_safetensors(tmp_path)
    assert all(str(a.dtype) == "bfloat16" for a in t.values())
    assert np.array_equal(t["model.embed_tokens.weight"], np.asarray(p16["embedder"]["embedding"]))


def test_unexportable_configs_and_leftover_params_are_named():
    model, params = loaded("llama_mha")
    with pytest.raises(ValueError, match="Qwen2ForCausalLM"):
        save_pretrained(model, params, "/nonexistent/never", architecture="Qwen2ForCausalLM")
    extra = {**params, "layers_0": {**params["layers_0"], "ntk": {"z": jnp.zeros(3)}}}
    with pytest.raises(ValueError, match="layers_0/ntk/z"):
        hf_tensors(model, extra)
    with pytest.raises(ValueError, match="module"):
        save_pretrained(object(), {}, "/nonexistent/never")


def tiny_mllm(projector="mlp2x_gelu", encoder="vit"):
    spec = encoders.get(encoder)
    enc = spec.build_config({"image_size": 16, "patch_size": 8, "d_model": 32, "num_layers": 2, "num_heads": 2,
                             "mlp_dim": 64} if encoder == "vit" else {})
    llm = LLMConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64,
                    tie_embeddings=False, lora_rank=2, lora_targets=("q", "v"))
    model = MLLM(MLLMConfig(llm=llm, placeholder_id=7, encoder=encoder, encoder_config=enc, projector=projector))
    return model


def mllm_inputs():
    ids = jnp.asarray([[3, 7, 9, 10, 11, 12], [4, 5, 7, 20, 21, 22]], jnp.int32)
    img = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
    return ids, img


def test_mllm_exports_the_llava_layout_and_loads_back(tmp_path):
    model = tiny_mllm()
    ids, img = mllm_inputs()
    params = nn.unbox(model.init(jax.random.key(0), ids, img)["params"])
    params = jax.tree_util.tree_map_with_path(  # nonzero LoRA B and biases: every tensor matters
        lambda p, x: x + 0.2 * jax.random.normal(jax.random.key(len(str(p))), x.shape), params)
    save_pretrained(model, params, tmp_path)
    names = set(load_safetensors(tmp_path))
    # transformers 5.24's LlavaForConditionalGeneration.save_pretrained names (checked in the side env)
    for n in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight",
              "language_model.model.layers.1.self_attn.q_proj.weight", "language_model.model.norm.weight",
              "multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_2.bias",
              "vision_tower.embeddings.patch_embedding.weight",
              "vision_tower.pre_layrnorm.weight", "vision_tower.post_layernorm.bias",
              "vision_tower.encoder.layers.1.self_attn.out_proj.weight"):
        assert n in names, n
    assert all(n.startswith(("language_model.", "multi_modal_projector.", "vision_tower.")) for n in names)
    assert not any("lora" in n for n in names)
    cfg = read_config(tmp_path)
    assert cfg["architectures"] == ["LlavaForConditionalGeneration"] and cfg["image_token_index"] == 7
    assert cfg["vision_feature_layer"] == -2 and cfg["vision_feature_select_strategy"] == "default"
    assert cfg["text_config"]["model_type"] == "llama" and cfg["vision_config"]["model_type"] == "clip_vision_model"
    assert cfg["image_seq_length"] == 4
    model2, params2 = from_pretrained(tmp_path)
    assert model2.config.llm.lora_rank == 0 and model2.config.encoder_config == model.config.encoder_config
    want = model.apply({"params": params}, ids, img)
    assert max_err(model2.apply({"params": params2}, ids, img), want) < 1e-4
    # the LLM part alone is the llm subtree's function
    from jaxmm.models.llm import LLM
    text = LLM(model2.config.llm).apply({"params": params2["llm"]}, ids)
    assert max_err(text, LLM(model.config.llm).apply({"params": params["llm"]}, ids)) < 1e-4


def test_mllm_without_clip_encoder_or_with_linear_projector_is_refused(tmp_path):
    for kw, match in ((dict(projector="linear"), "projector"), (dict(encoder="audio"), "encoder")):
        model = tiny_mllm(**kw)
        with pytest.raises(ValueError, match=match):
            save_pretrained(model, {}, tmp_path)


# ------------------------------------------------------------------------------------------- encoder families
# (fixture, tower) -> (architecture written, prefix of the fixture's names for the written ones, prefixes of the
# fixture's names that belong to this tower)
ENCODERS = {("siglip_vision", None): ("SiglipVisionModel", "", ("",)),
            ("clip_text", None): ("CLIPTextModel", "", ("",)),
            ("clip_model", "text"): ("CLIPTextModelWithProjection", "", ("text_model.", "text_projection.")),
            ("clip_model", None): ("CLIPVisionModelWithProjection", "", ("vision_model.", "visual_projection.")),
            ("whisper_encoder", None): ("WhisperEncoder", "model.encoder.", ("model.encoder.",))}


@pytest.mark.parametrize("name,tower", sorted(ENCODERS, key=str))
def test_encoder_written_tensors_are_the_hf_files_tensors(name, tower):
    model, params = loaded(name, tower)
    _, prefix, tower_names = ENCODERS[name, tower]
    out = hf_tensors(model, params)
    ref = load_safetensors(os.path.join(HF, name))
    assert {prefix + k for k in out} == {k for k in ref if k.startswith(tower_names)}
    for k in out:
        want = ref[prefix + k]
        assert out[k].dtype == want.dtype, k
        if k.endswith("embed_positions.weight"):  # written from jaxmm's sinusoids, torch computed the fixture's
            np.testing.assert_allclose(out[k], want, atol=1e-6, err_msg=k)
        else:
            assert np.array_equal(out[k], want), k


def _outputs(model, params, ref):
    if "input_features" in ref:
        return model.apply({"params": params}, jnp.asarray(ref["input_features"])), ""
    if "input_ids" in ref and type(model).__name__ == "TextEncoder":
        out = model.apply({"params": params}, jnp.asarray(ref["input_ids"]), jnp.asarray(ref["attention_mask"]))
        return out, "text_"
    return model.apply({"params": params}, jnp.asarray(ref["pixel_values"])), ""


@pytest.mark.parametrize("name,tower", sorted(ENCODERS, key=str))
def test_encoder_round_trip_config_and_outputs(name, tower, tmp_path):
    model, params = loaded(name, tower)
    save_pretrained(model, params, tmp_path)
    assert read_config(tmp_path)["architectures"] == [ENCODERS[name, tower][0]]
    model2, params2 = from_pretrained(tmp_path)
    assert model2.config == model.config
    ref = dict(np.load(os.path.join(HF, name, "reference.npz")))
    out, p = _outputs(model2, params2, ref)
    assert max_err(out["last_hidden_state"], ref[p + "last_hidden_state"]) < 1e-4
    for h, r in zip(out.get("hidden_states", ()), ref[p + "hidden_states"]):  # AudioEncoder returns none
        assert max_err(h, r) < 1e-4
    if p + "pooler_output" in ref:
        assert max_err(out["pooler_output"], ref[p + "pooler_output"]) < 1e-4
    if getattr(model.config, "projection_dim", None):
        embeds = "text_embeds" if p else "image_embeds"
        assert max_err(out[embeds], ref[embeds]) < 1e-4


def test_siglip_without_head_writes_vision_use_head_false(tmp_path):
    model, params = loaded("siglip_vision")
    from jaxmm.models.vit import ViT
    headless = ViT(dataclasses.replace(model.config, pool="none"))
    p = {k: v for k, v in params.items() if k != "head"}
    save_pretrained(headless, p, tmp_path)
    assert read_config(tmp_path)["vision_use_head"] is False
    assert not any(k.startswith("head.") for k in load_safetensors(tmp_path))
    model2, params2 = from_pretrained(tmp_path)
    assert model2.config.pool == "none"
    ref = np.load(os.path.join(HF, "siglip_vision", "reference.npz"))
    out = model2.apply({"params": params2}, jnp.asarray(ref["pixel_values"]))
    assert max_err(out["last_hidden_state"], ref["last_hidden_state"]) < 1e-4


def test_lora_in_an_encoder_is_merged(tmp_path):
    model, params = from_pretrained(os.path.join(HF, "whisper_encoder"), lora_rank=2, lora_targets=("q", "v"))
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: 0.3 * jax.random.normal(jax.random.key(len(str(p))), x.shape) if p[-1].key == "lora_b" else x,
        params)
    mel = jnp.asarray(np.load(os.path.join(HF, "whisper_encoder", "reference.npz"))["input_features"])
    want = model.apply({"params": params}, mel)["last_hidden_state"]
    base = loaded("whisper_encoder")
    assert max_err(want, base[0].apply({"params": base[1]}, mel)["last_hidden_state"]) > 0.05  # adapter matters
    save_pretrained(model, params, tmp_path)
    model2, params2 = from_pretrained(tmp_path)
    assert max_err(model2.apply({"params": params2}, mel)["last_hidden_state"], want) < 1e-4


def test_mixed_vit_and_unexportable_encoders_are_named(tmp_path):
    from jaxmm.models.audio import AudioConfig, AudioEncoder
    from jaxmm.models.vit import ViT, ViTConfig
    siglip = dict(class_token=False, pre_norm=False, patch_bias=True, pool="map", mlp="gelu_tanh")
    for cfg, match in ((ViTConfig(class_token=False), "SigLIP tower"),  # SigLIP without its patch bias
                       (ViTConfig(**siglip, projection_dim=8), "projection_dim"),
                       (ViTConfig(**{**siglip, "mlp": "quick_gelu"}), "mlp among")):
        with pytest.raises(ValueError, match=match):
            save_pretrained(ViT(cfg), {}, tmp_path)
    with pytest.raises(ValueError, match="pool=1"):
        save_pretrained(AudioEncoder(AudioConfig(pool=2)), {}, tmp_path)
    model, params = loaded("whisper_encoder")
    with pytest.raises(ValueError, match="WhisperEncoder"):
        save_pretrained(model, params, tmp_path, architecture="WhisperModel")
