"""A folder's `generation_config.json` as `jaxmm.models.llm.generate` arguments, with transformers' defaults.

    kw = generation_kwargs("path/to/model", prompt_length=ids.shape[1])
    new = generate(model, params, ids, mask, rng=key, **kw)

transformers 5.24 semantics (`GenerationConfig` + `generate`):
  * values: the call's overrides > generation_config.json > (without that file) bos/eos/pad ids of config.json
    > HF's global defaults `max_length=20, do_sample=False, temperature=1.0, top_k=50, top_p=1.0,
    repetition_penalty=1.0`;
  * length: `max_new_tokens` when set; else an explicitly set `max_length` counts the prompt
    (max_new_tokens = max_length - prompt_length); else 20 new tokens, capped so that prompt + new <=
    config.json's `max_position_embeddings`;
  * do_sample False: greedy, whatever temperature / top_k / top_p say (HF only warns); do_sample True with
    temperature 0 is refused by HF and here;
  * eos_token_id: an int or a list (any of them stops a row); pad_token_id None falls back to the first EOS
    (as HF does, with a warning there), then to 0.
"""
from __future__ import annotations

import json
import os
from typing import Any

from jaxmm.checks import fail

HF_DEFAULTS = {"max_length": 20, "do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0,
               "repetition_penalty": 1.0}
FIELDS = ("max_new_tokens", "max_length", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty",
          "eos_token_id", "pad_token_id")


def read_generation_config(path) -> dict[str, Any]:
    """generation_config.json of the folder as a dict; without it, the bos/eos/pad ids of config.json (what HF's
    `GenerationConfig.from_model_config` keeps); {} when neither exists."""
    folder = os.fspath(path)
    for name, keys in (("generation_config.json", None), ("config.json", ("bos_token_id", "eos_token_id",
                                                                          "pad_token_id"))):
        file = os.path.join(folder, name)
        if os.path.isfile(file):
            with open(file, encoding="utf-8") as f:
                cfg = json.load(f)
            if keys is not None:  # a multimodal config.json keeps them in text_config
                src = cfg if "eos_token_id" in cfg else cfg.get("text_config", {})
                cfg = {k: src[k] for k in keys if src.get(k) is not None}
            return cfg
    return {}


def generation_kwargs(path_or_config, prompt_length: int, **overrides) -> dict[str, Any]:
    """`generate` keyword arguments (max_new_tokens, temperature, top_k, top_p, repetition_penalty, eos_id,
    pad_id) from a model folder (or an already-read generation config dict) for prompts of `prompt_length`
    tokens (the padded length, as HF counts it). overrides: HF field names (do_sample=False, max_new_tokens=...).
    """
    if isinstance(path_or_config, dict):
        cfg, max_pos = dict(path_or_config), None
    else:
        cfg = read_generation_config(path_or_config)
        model_cfg = os.path.join(os.fspath(path_or_config), "config.json")
        max_pos = None
        if os.path.isfile(model_cfg):
            with open(model_cfg, encoding="utf-8") as f:
                mc = json.load(f)
            max_pos = mc.get("max_position_embeddings", mc.get("text_config", {}).get("max_position_embeddings"))
    unknown = sorted(set(overrides) - set(FIELDS))
    if unknown:
        fail("overrides", f"generation_config fields among {FIELDS}", unknown)
    cfg.update(overrides)
    value = {k: cfg[k] if cfg.get(k) is not None else HF_DEFAULTS.get(k) for k in FIELDS}
    if value["max_new_tokens"] is not None:
        new = int(value["max_new_tokens"])
    elif cfg.get("max_length") is not None:
        new = int(cfg["max_length"]) - int(prompt_length)
    else:
        new = HF_DEFAULTS["max_length"]
        if max_pos is not None:
            new = min(new, int(max_pos) - int(prompt_length))
    if new <= 0:
        fail("max_length", f"more than the prompt length {prompt_length} (or set max_new_tokens)",
             cfg.get("max_length", max_pos))
    eos = value["eos_token_id"]
    eos = () if eos is None else (int(eos),) if isinstance(eos, int) else tuple(int(e) for e in eos)
    pad = value["pad_token_id"]
    pad = int(pad) if pad is not None else (eos[0] if eos else 0)
    sample = bool(value["do_sample"])
    if sample and not float(value["temperature"]) > 0:
        fail("temperature", "> 0 when do_sample is True (HF refuses it too)", value["temperature"])
    return {"max_new_tokens": new, "temperature": float(value["temperature"]) if sample else 0.0,
            "top_k": int(value["top_k"] or 0), "top_p": float(value["top_p"]),
            "repetition_penalty": float(value["repetition_penalty"]), "eos_id": eos, "pad_id": pad}
