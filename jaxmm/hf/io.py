"""Read a local Hugging Face model folder without torch or Flax: config, safetensors weights, tokenizer.

Weights are read only from safetensors files (single `model.safetensors`, any `*.safetensors`, or a sharded
`*.safetensors.index.json`). Pickled checkpoints (`*.bin`, `*.pt`, `*.pth`, `*.ckpt`) are refused: unpickling
runs arbitrary code from the file. Arrays come back as NumPy arrays with HF's names and layouts (Linear weights
are `[out_features, in_features]`); mapping them onto jaxmm parameter trees is the job of the per-family loaders.

    cfg = read_config("path/to/model")          # dict from config.json
    weights = load_safetensors("path/to/model")  # {"model.embed_tokens.weight": np.ndarray [V, H], ...}
    tok = load_tokenizer("path/to/model")        # tokenizers.Tokenizer from tokenizer.json
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

PathLike = str | os.PathLike


def _existing(path: PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what}: path does not exist: {str(p)!r}")
    return p


def read_config(path: PathLike) -> dict[str, Any]:
    """The parsed `config.json` of an HF model folder (or the JSON file itself) as a plain dict.

    Nested configs (CLIP's `vision_config` / `text_config`) stay nested dicts. No defaults are filled in: the
    reader of a key must supply HF's default where the key is absent (e.g. `head_dim` = hidden_size // heads;
    rope theta is either top-level `rope_theta` or `rope_parameters["rope_theta"]` in transformers >= 5).
    """
    p = _existing(path, "read_config")
    file = p / "config.json" if p.is_dir() else p
    if not file.is_file():
        raise FileNotFoundError(f"read_config: no config.json in {str(p)!r}")
    try:
        with open(file, encoding="utf-8") as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"read_config: {str(file)!r} is not valid JSON ({e})") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"read_config: {str(file)!r} must hold a JSON object, got {type(cfg).__name__}")
    return cfg


def _refuse_pickles(folder: Path, pickled: list[Path]) -> None:
    names = ", ".join(sorted(p.name for p in pickled))
    raise ValueError(
        f"load_safetensors: {str(folder)!r} holds only pickled weights ({names}) and no *.safetensors. jaxmm never "
        "loads pickled checkpoints (.bin/.pt/.pth/.ckpt) because unpickling a file executes arbitrary code. "
        "Convert it once, in an environment you trust, with transformers: "
        "`AutoModelForCausalLM.from_pretrained(src)` (or the model's own class, e.g. CLIPVisionModel) followed "
        "by `.save_pretrained(dst, safe_serialization=True)`, or with "
        "`safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors')`; then point jaxmm "
        "at the folder holding model.safetensors."
    )


def _weight_files(path: Path) -> tuple[list[Path], dict[str, Path] | None]:
    """The safetensors files to read and, for a sharded checkpoint, the index's name -> shard file map."""
    if path.is_file():
        name = path.name
        if name.endswith(".safetensors.index.json"):
            return _index_files(path)
        if name.endswith(".safetensors"):
            return [path], None
        if name.endswith(PICKLED_SUFFIXES):
            _refuse_pickles(path.parent, [path])
        raise ValueError(f"load_safetensors: expected a folder, a *.safetensors file or a *.safetensors.index.json,"
                         f" got {str(path)!r}")
    if (path / INDEX_NAME).is_file():
        return _index_files(path / INDEX_NAME)
    if (path / SINGLE_NAME).is_file():
        return [path / SINGLE_NAME], None
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) == 1:
        return _index_files(indexes[0])
    if len(indexes) > 1:
        raise ValueError(f"load_safetensors: {str(path)!r} has several index files "
                         f"({', '.join(p.name for p in indexes)}); pass the one to read")
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files, None
    pickled = [p for p in path.iterdir() if p.is_file() and p.name.endswith(PICKLED_SUFFIXES)]
    if pickled:
        _refuse_pickles(path, pickled)
    raise FileNotFoundError(f"load_safetensors: no *.safetensors weights in {str(path)!r}")


def _index_files(index: Path) -> tuple[list[Path], dict[str, Path]]:
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"load_safetensors: {str(index)!r} is not a safetensors index with a 'weight_map' "
                         f"({e!r})") from e
    shards = []
    for shard in dict.fromkeys(weight_map.values()):  # each shard once, in first-use order
        file = index.parent / shard
        if not file.is_file():
            raise FileNotFoundError(f"load_safetensors: shard {shard!r} named in {str(index)!r} is missing: "
                                    f"{str(file)!r}")
        shards.append(file)
    return shards, {name: index.parent / shard for name, shard in weight_map.items()}


def load_safetensors(path: PathLike, *, float_dtype=None) -> dict[str, np.ndarray]:
    """All tensors of an HF checkpoint as `{hf_name: np.ndarray}`, read with the `safetensors` package (no torch).

    path: a model folder, a `*.safetensors` file, or a `*.safetensors.index.json`. In a folder the order of
      preference is `model.safetensors.index.json` (every shard read once), `model.safetensors`, a single other
      `*.safetensors.index.json`, then every `*.safetensors` file in it.
    float_dtype: None keeps each tensor's stored dtype: float32 stays float32, **bf16 comes back as
      `ml_dtypes.bfloat16`** (the exact stored values, as `jnp.bfloat16` arrays are), float16 as float16.
      Given (e.g. `np.float32`), every floating tensor is cast to it; integer and bool tensors are never cast.

    Returns arrays in HF's layouts: Linear weights `[out_features, in_features]`, conv weights `[out, in, kh, kw]`.
    Raises FileNotFoundError naming the path when it, its weights or a shard named in the index is missing;
    ValueError when a folder holds only pickled weights (`*.bin`, `*.pt`, `*.pth`, `*.ckpt`: refused, never
    unpickled), when an index names a tensor its shard lacks, or when two files hold the same tensor name.
    """
    from safetensors import safe_open

    p = _existing(path, "load_safetensors")
    files, weight_map = _weight_files(p)
    out: dict[str, np.ndarray] = {}
    origin: dict[str, Path] = {}
    for file in files:
        try:
            handle = safe_open(str(file), framework="np")
        except Exception as e:  # SafetensorError on a corrupt header or truncated file
            raise ValueError(f"load_safetensors: {str(file)!r} is not a readable safetensors file ({e})") from e
        with handle as f:
            for name in f.keys():
                if name in out:
                    raise ValueError(f"load_safetensors: tensor {name!r} is in both {str(origin[name])!r} and "
                                     f"{str(file)!r}")
                array = f.get_tensor(name)
                if float_dtype is not None and _is_float(array.dtype):
                    array = array.astype(float_dtype)
                out[name] = array
                origin[name] = file
    if weight_map is not None:
        for name, shard in weight_map.items():
            if origin.get(name) != shard:
                where = f"found in {origin[name].name!r}" if name in origin else "found in no shard"
                raise ValueError(f"load_safetensors: the index maps {name!r} to {shard.name!r} but it was {where}")
    return out


def _is_float(dtype: np.dtype) -> bool:
    """True for NumPy floats and ml_dtypes' (bfloat16, float8_*), which NumPy files under kind 'V'."""
    if np.issubdtype(dtype, np.floating):
        return True
    try:
        import ml_dtypes

        ml_dtypes.finfo(dtype)
        return True
    except (ImportError, ValueError, TypeError):
        return False


def load_tokenizer(path: PathLike):
    """A `tokenizers.Tokenizer` built from `tokenizer.json` in an HF folder (or that file itself).

    `tok.encode(text).ids` gives the same ids as transformers' fast tokenizer (special tokens added by the
    file's post-processor, e.g. a leading BOS); `tok.decode(ids)` inverts it. Raises FileNotFoundError when there
    is no tokenizer.json (a folder with only a sentencepiece `tokenizer.model` must be converted first).
    """
    from tokenizers import Tokenizer

    p = _existing(path, "load_tokenizer")
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        hint = ""
        if p.is_dir() and (p / "tokenizer.model").is_file():
            hint = (" (it has a sentencepiece tokenizer.model: write tokenizer.json once with transformers, "
                    "`AutoTokenizer.from_pretrained(path).save_pretrained(path)`)")
        raise FileNotFoundError(f"load_tokenizer: no tokenizer.json in {str(p)!r}{hint}")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as e:  # the Rust side raises a bare Exception on malformed files
        raise ValueError(f"load_tokenizer: {str(file)!r} is not a valid tokenizers JSON file ({e})") from e
