"""jaxmm.hf.io against the committed HF fixtures and a hand-written safetensors reader/writer (no torch)."""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from jaxmm.hf.io import load_safetensors, load_tokenizer, read_config

HF = Path(__file__).resolve().parents[1] / "fixtures" / "hf"
LLMS = ["llama_mha", "llama3_gqa_tied", "mistral", "qwen2_tied"]
RAW_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
              "BF16": np.dtype(ml_dtypes.bfloat16)}


# ------------------------------------------------------------------- an independent safetensors reader/writer
def raw_read(file: Path) -> dict[str, np.ndarray]:
    """Parse the format by hand: u64 little-endian header size, JSON header, raw little-endian data."""
    blob = file.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        out[name] = np.frombuffer(data[begin:end], dtype=RAW_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def raw_write(file: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    """Write {name: (safetensors dtype string, array whose bytes are stored)}."""
    header, chunks, offset = {}, [], 0
    for name, (dtype, array) in tensors.items():
        raw = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    file.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(chunks))


def expected_llm_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """HF tensor names and shapes of a Llama/Mistral/Qwen2 checkpoint, from its config alone."""
    h, v, inter = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or h // heads
    qkv_bias = cfg["model_type"] == "qwen2" or cfg.get("attention_bias", False)
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, h)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (heads * hd, h), p + "self_attn.k_proj.weight": (kv * hd, h),
            p + "self_attn.v_proj.weight": (kv * hd, h), p + "self_attn.o_proj.weight": (h, heads * hd),
            p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
        })
        if qkv_bias:
            shapes.update({p + "self_attn.q_proj.bias": (heads * hd,), p + "self_attn.k_proj.bias": (kv * hd,),
                           p + "self_attn.v_proj.bias": (kv * hd,)})
    return shapes


def expected_clip_vision_shapes(vc: dict, prefix: str) -> dict[str, tuple[int, ...]]:
    h, inter, p, c = vc["hidden_size"], vc["intermediate_size"], vc["patch_size"], vc.get("num_channels", 3)
    n_pos = (vc["image_size"] // p) ** 2 + 1
    shapes = {"embeddings.class_embedding": (h,), "embeddings.patch_embedding.weight": (h, c, p, p),
              "embeddings.position_embedding.weight": (n_pos, h), "pre_layrnorm.weight": (h,),
              "pre_layrnorm.bias": (h,), "post_layernorm.weight": (h,), "post_layernorm.bias": (h,)}
    for i in range(vc["num_hidden_layers"]):
        q = f"encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            shapes.update({q + norm + ".weight": (h,), q + norm + ".bias": (h,)})
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes.update({q + f"self_attn.{proj}.weight": (h, h), q + f"self_attn.{proj}.bias": (h,)})
        shapes.update({q + "mlp.fc1.weight": (inter, h), q + "mlp.fc1.bias": (inter,),
                       q + "mlp.fc2.weight": (h, inter), q + "mlp.fc2.bias": (h,)})
    return {prefix + k: v for k, v in shapes.items()}


# ------------------------------------------------------------------- loading the fixtures
@pytest.mark.parametrize("name", LLMS)
def test_llm_names_and_shapes_follow_config(name):
    cfg = read_config(HF / name)
    weights = load_safetensors(HF / name)
    got = {k: v.shape for k, v in weights.items()}
    assert got == expected_llm_shapes(cfg)
    assert all(v.dtype == np.float32 for v in weights.values())
    assert ("lm_head.weight" in weights) == (not cfg["tie_word_embeddings"])


def test_clip_names_and_shapes_follow_config():
    vision = load_safetensors(HF / "clip_vision")
    assert {k: v.shape for k, v in vision.items()} == expected_clip_vision_shapes(read_config(HF / "clip_vision"), "")
    cfg = read_config(HF / "clip_full")
    full = load_safetensors(HF / "clip_full")
    tower = {k: v.shape for k, v in full.items() if k.startswith("vision_model.")}
    assert tower == expected_clip_vision_shapes(cfg["vision_config"], "vision_model.")
    assert full["visual_projection.weight"].shape == (cfg["projection_dim"], cfg["vision_config"]["hidden_size"])
    assert full["logit_scale"].shape == ()
    assert any(k.startswith("text_model.") for k in full)


@pytest.mark.parametrize("name", LLMS[:2] + ["clip_full"])
def test_values_equal_a_hand_parse_of_the_file(name):
    weights = load_safetensors(HF / name / "model.safetensors")
    raw = raw_read(HF / name / "model.safetensors")
    assert weights.keys() == raw.keys()
    for k in raw:
        np.testing.assert_array_equal(weights[k], raw[k])


def test_sharded_equals_single_file(tmp_path):
    folder = HF / "mistral"
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(index.values())) == 3
    sharded = load_safetensors(folder)
    assert sharded.keys() == index.keys()
    # the same tensors as one hand-written model.safetensors in a fresh folder
    raw = {}
    for shard in sorted(set(index.values())):
        raw.update(raw_read(folder / shard))
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(folder / "config.json", single / "config.json")
    raw_write(single / "model.safetensors", {k: ("F32", v) for k, v in raw.items()})
    one = load_safetensors(single)
    assert one.keys() == sharded.keys()
    for k in one:
        np.testing.assert_array_equal(one[k], sharded[k])
        np.testing.assert_array_equal(one[k], raw[k])
    # the index file given directly, and the shards without an index (any *.safetensors), read the same
    by_index = load_safetensors(folder / "model.safetensors.index.json")
    no_index = tmp_path / "no_index"
    no_index.mkdir()
    for shard in set(index.values()):
        shutil.copy(folder / shard, no_index / shard)
    loose = load_safetensors(no_index)
    for k in sharded:
        np.testing.assert_array_equal(by_index[k], sharded[k])
        np.testing.assert_array_equal(loose[k], sharded[k])


def test_bf16_comes_back_as_bfloat16_or_cast(tmp_path):
    rng = np.random.default_rng(0)
    x32 = rng.standard_normal((3, 5)).astype(np.float32)
    bits = (x32.view(np.uint32) >> 16).astype(np.uint16)  # bf16 = top 16 bits of float32 (truncation)
    truncated = (bits.astype(np.uint32) << 16).view(np.float32)
    ints = np.arange(4, dtype=np.int64)
    raw_write(tmp_path / "model.safetensors", {"w": ("BF16", bits), "steps": ("I64", ints),
                                               "h": ("F16", x32.astype(np.float16))})
    kept = load_safetensors(tmp_path)
    assert kept["w"].dtype == ml_dtypes.bfloat16 and kept["w"].shape == (3, 5)
    np.testing.assert_array_equal(kept["w"].astype(np.float32), truncated)
    assert kept["h"].dtype == np.float16 and kept["steps"].dtype == np.int64
    cast = load_safetensors(tmp_path, float_dtype=np.float32)
    assert cast["w"].dtype == np.float32 and cast["h"].dtype == np.float32
    np.testing.assert_array_equal(cast["w"], truncated)
    np.testing.assert_array_equal(cast["h"], x32.astype(np.float16).astype(np.float32))
    assert cast["steps"].dtype == np.int64  # integers are never cast
    np.testing.assert_array_equal(cast["steps"], ints)


# ------------------------------------------------------------------- refusals and errors
def test_pickle_only_folder_is_refused_without_unpickling(monkeypatch):
    import pickle

    def no_unpickling(*a, **k):
        raise AssertionError("load_safetensors must never unpickle")

    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(pickle, "Unpickler", no_unpickling)
    for target in (HF / "pickle_only", HF / "pickle_only" / "pytorch_model.bin"):
        with pytest.raises(ValueError) as err:
            load_safetensors(target)
        msg = str(err.value)
        assert "pytorch_model.bin" in msg and "pickle_only" in msg
        assert "executes arbitrary code" in msg and "safe_serialization=True" in msg
    assert read_config(HF / "pickle_only")["model_type"] == "llama"  # the config itself is fine


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt"])
def test_other_pickle_suffixes_are_refused(tmp_path, suffix):
    (tmp_path / f"weights{suffix}").write_bytes(b"\x80\x04not read")
    with pytest.raises(ValueError, match="unpickling"):
        load_safetensors(tmp_path)


def test_missing_paths_are_named(tmp_path):
    missing = tmp_path / "no_such_model"
    for fn in (read_config, load_safetensors, load_tokenizer):
        with pytest.raises(FileNotFoundError, match="no_such_model"):
            fn(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json in .*empty"):
        read_config(empty)
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors weights in .*empty"):
        load_safetensors(empty)
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json in .*empty"):
        load_tokenizer(empty)


def test_broken_index_and_files_are_reported(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(HF / "mistral", folder)
    index_file = folder / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    # a tensor listed under the wrong shard
    wrong = json.loads(json.dumps(index))
    wrong["weight_map"]["model.norm.weight"] = "model-00001-of-00003.safetensors"
    index_file.write_text(json.dumps(wrong))
    with pytest.raises(ValueError, match="model.norm.weight"):
        load_safetensors(folder)
    # a shard that is gone
    index_file.write_text(json.dumps(index))
    (folder / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00003.safetensors"):
        load_safetensors(folder)
    # a truncated file
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_safetensors(tmp_path / "bad")
    # invalid config.json
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_config(tmp_path / "bad")


def test_same_tensor_in_two_files_is_an_error(tmp_path):
    raw_write(tmp_path / "a.safetensors", {"x": ("F32", np.zeros(2, np.float32))})
    raw_write(tmp_path / "b.safetensors", {"x": ("F32", np.ones(2, np.float32))})
    with pytest.raises(ValueError, match="'x' is in both"):
        load_safetensors(tmp_path)


# ------------------------------------------------------------------- config and tokenizer
def test_read_config_values():
    assert read_config(HF / "mistral")["num_key_value_heads"] == 2
    cfg = read_config(HF / "llama3_gqa_tied" / "config.json")
    assert cfg["rope_scaling"]["rope_type"] == "llama3" and cfg["rope_theta"] == 500000.0
    assert read_config(HF / "clip_full")["vision_config"]["patch_size"] == 8


def test_tokenizer_ids_equal_hf():
    ref = np.load(HF / "llama_mha" / "reference.npz")
    tok = load_tokenizer(HF / "llama_mha")
    for i, text in enumerate(ref["tokenizer_texts"]):
        ids = tok.encode(str(text)).ids
        assert ids == ref[f"tokenizer_ids_{i}"].tolist()
        assert ids[0] == tok.token_to_id("<s>")
        assert tok.decode(ids) == str(text)
    assert load_tokenizer(HF / "llama_mha" / "tokenizer.json").encode("the dog").ids == tok.encode("the dog").ids
