"""HF parity: jaxmm.hf.from_pretrained on the fixture folders (tests/fixtures/hf, made by make_hf_fixtures.py with
torch + transformers) reproduces HF's float32 logits, hidden states and greedy tokens. No torch needed here."""
import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.hf import SUPPORTED_ARCHITECTURES, from_pretrained, load_safetensors, read_config
from jaxmm.models import llm as llm_lib

HF = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "hf")
LLM_FIXTURES = ["llama_mha", "llama3_gqa_tied", "mistral", "qwen2_tied"]
CLIP_FIXTURES = ["clip_vision", "clip_full"]
TOL = 1e-4


@functools.cache
def loaded(name):
    model, params = from_pretrained(os.path.join(HF, name))
    return model, params, dict(np.load(os.path.join(HF, name, "reference.npz")))


def max_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.parametrize("name", LLM_FIXTURES)
def test_llm_logits_and_hidden_states_match_hf(name):
    model, params, ref = loaded(name)
    logits, hidden = model.apply({"params": params}, jnp.asarray(ref["input_ids"]), return_hidden=True)
    assert logits.dtype == jnp.float32 and logits.shape == ref["logits"].shape
    assert max_err(logits, ref["logits"]) < TOL
    assert len(hidden) == len(ref["hidden_states"])
    for h, r in zip(hidden, ref["hidden_states"]):
        assert max_err(h, r) < TOL


@pytest.mark.parametrize("name", LLM_FIXTURES)
def test_llm_left_padded_logits_match_hf(name):
    model, params, ref = loaded(name)
    ids, mask = jnp.asarray(ref["padded_input_ids"]), jnp.asarray(ref["padded_attention_mask"])
    real = ref["padded_attention_mask"].astype(bool)
    assert not real.all()  # the batch really is padded
    # default positions (cumsum(mask) - 1) and HF's explicit ones agree on the real tokens
    for positions in (None, jnp.asarray(ref["padded_position_ids"])):
        logits, hidden = model.apply({"params": params}, ids, attention_mask=mask, positions=positions,
                                     return_hidden=True)
        assert max_err(np.asarray(logits)[real], ref["padded_logits"][real]) < TOL
        for h, r in zip(hidden, ref["padded_hidden_states"]):
            assert max_err(np.asarray(h)[real], r[real]) < TOL


@pytest.mark.parametrize("name", LLM_FIXTURES)
def test_greedy_generate_matches_hf_generate(name):
    model, params, ref = loaded(name)
    assert ref["gen_min_top2_margin"] > 1e-3  # no near-ties in HF's path
    new, seqs = llm_lib.generate(model, params, jnp.asarray(ref["gen_prompt_ids"]),
                                 jnp.asarray(ref["gen_attention_mask"]), max_new_tokens=20,
                                 pad_id=int(ref["gen_pad_token_id"]), return_sequences=True)
    np.testing.assert_array_equal(np.asarray(new), ref["gen_new_ids"])
    np.testing.assert_array_equal(np.asarray(seqs), ref["gen_sequences"])


@pytest.mark.parametrize("name", CLIP_FIXTURES)
def test_clip_vision_matches_hf(name):
    model, params, ref = loaded(name)
    out = model.apply({"params": params}, jnp.asarray(ref["pixel_values"]))  # NHWC
    assert max_err(out["last_hidden_state"], ref["last_hidden_state"]) < TOL
    assert max_err(out["pooler_output"], ref["pooler_output"]) < TOL
    assert len(out["hidden_states"]) == len(ref["hidden_states"])
    for h, r in zip(out["hidden_states"], ref["hidden_states"]):
        assert max_err(h, r) < TOL
    assert max_err(out["features"], ref["hidden_states"][-2][:, 1:]) < TOL  # LLaVA: penultimate, CLS dropped
    if "image_embeds" in ref:
        assert max_err(out["image_embeds"], ref["image_embeds"]) < TOL
    else:
        assert "image_embeds" not in out


def test_pickle_only_folder_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"(?s)pickled.*unpickling.*executes arbitrary code.*safetensors"):
        from_pretrained(os.path.join(HF, "pickle_only"))


def test_sharded_folder_loads_every_shard():
    folder = os.path.join(HF, "mistral")
    index = json.load(open(os.path.join(folder, "model.safetensors.index.json")))
    assert len(set(index["weight_map"].values())) > 1
    _, params, _ = loaded("mistral")
    tensors = load_safetensors(folder)
    assert set(tensors) == set(index["weight_map"])
    total = sum(int(np.size(v)) for v in tensors.values())
    assert sum(int(np.size(x)) for x in jax.tree.leaves(params)) == total


def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match="GPT2LMHeadModel") as e:
        from_pretrained(tmp_path)
    for arch in SUPPORTED_ARCHITECTURES:
        assert arch in str(e.value)


def test_from_hf_names_unmapped_and_missing_tensors():
    folder = os.path.join(HF, "qwen2_tied")
    config, tensors = read_config(folder), load_safetensors(folder)
    tensors["model.layers.0.self_attn.o_proj.bias"] = np.zeros(32, np.float32)  # Qwen2 has no o bias
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(ValueError) as e:
        llm_lib.from_hf(config, tensors)
    msg = str(e.value)
    assert "unmapped tensors ['model.layers.0.self_attn.o_proj.bias']" in msg
    assert "missing tensors ['model.layers.1.self_attn.k_proj.bias']" in msg


def test_from_hf_names_a_tensor_of_the_wrong_shape():
    folder = os.path.join(HF, "llama_mha")
    config, tensors = read_config(folder), load_safetensors(folder)
    tensors["model.layers.1.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"][:, :-1]
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*layers_1/mlp/up/kernel"):
        llm_lib.from_hf(config, tensors)


def test_config_reader_accepts_legacy_and_v5_rope_forms():
    legacy = read_config(os.path.join(HF, "llama3_gqa_tied"))  # top-level rope_theta + rope_scaling
    assert "rope_parameters" not in legacy
    cfg = llm_lib.llm_config_from_hf(legacy)
    assert cfg.rope_theta == 500000.0 and dict(cfg.rope_scaling)["rope_type"] == "llama3"
    assert cfg.tie_embeddings and cfg.num_kv_heads == 2 and cfg.head_dim == 16
    v5 = dict(legacy)
    v5["rope_parameters"] = dict(v5.pop("rope_scaling"), rope_theta=v5.pop("rope_theta"))
    assert llm_lib.llm_config_from_hf(v5) == cfg
    qwen = llm_lib.llm_config_from_hf(read_config(os.path.join(HF, "qwen2_tied")))
    assert qwen.qkv_bias and not qwen.out_bias and qwen.head_dim == 16 and qwen.rope_theta == 1e6
    bad = dict(v5, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4})
    with pytest.raises(ValueError, match="rope_scaling"):
        llm_lib.llm_config_from_hf(bad)


def test_mistral_sliding_window_shorter_than_the_input_is_refused(tmp_path):
    src = os.path.join(HF, "mistral")
    for f in os.listdir(src):
        shutil.copy(os.path.join(src, f), tmp_path / f)
    config = read_config(tmp_path)
    config["sliding_window"] = 8
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="sliding_window"):
        model, params = from_pretrained(tmp_path)
    model.apply({"params": params}, jnp.ones((1, 8), jnp.int32))  # within the window: fine
    with pytest.raises(ValueError, match="sliding_window"):
        model.apply({"params": params}, jnp.ones((1, 9), jnp.int32))


def test_bf16_import_is_close_to_float32():
    model, params, ref = loaded("llama_mha")
    model16, params16 = from_pretrained(os.path.join(HF, "llama_mha"), dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params16))
    logits = np.asarray(model16.apply({"params": params16}, jnp.asarray(ref["input_ids"])))
    assert logits.dtype == np.float32 and np.all(np.isfinite(logits))
    scale = np.abs(ref["logits"]).max()
    assert max_err(logits, ref["logits"]) < 0.05 * scale  # bf16 has 8 mantissa bits


def test_lora_on_an_imported_model_starts_as_the_checkpoint():
    _, _, ref = loaded("qwen2_tied")
    model, params = from_pretrained(os.path.join(HF, "qwen2_tied"), lora_rank=4, lora_targets=("q", "v", "up"))
    attn = params["layers_1"]["attn"]
    assert attn["q"]["lora_a"].shape == (32, 4) and not np.any(np.asarray(attn["v"]["lora_b"]))
    assert np.asarray(attn["q"]["lora_a"]).std() > 0.1
    logits = model.apply({"params": params}, jnp.asarray(ref["input_ids"]))
    assert max_err(logits, ref["logits"]) < TOL
