"""`jaxmm.hf.pretrained`'s family table: every built-in row resolves to a loader, user families register without
editing jaxmm, and a re-registration or an unknown name is a clear error."""
import json

import numpy as np
import pytest

from jaxmm.hf import pretrained
from jaxmm.hf import SUPPORTED_ARCHITECTURES, from_pretrained, register_architecture


def test_every_builtin_architecture_resolves_to_its_family_loader():
    from jaxmm.hf import clip, convnext, diffusers, dinov2, llava, siglip, whisper
    from jaxmm.models import llm

    want = {"LlamaForCausalLM": llm.from_hf, "Qwen2ForCausalLM": llm.from_hf, "CLIPModel": clip.from_hf,
            "SiglipModel": siglip.from_hf, "CLIPTextModel": clip.text_from_hf, "WhisperEncoder": whisper.from_hf,
            "LlavaForConditionalGeneration": llava.from_hf, "AutoencoderKL": diffusers.from_hf,
            "ConvNextModel": convnext.from_hf, "Dinov2Model": dinov2.from_hf}
    for arch, fn in want.items():
        assert pretrained.loader(arch) is fn, arch
    assert pretrained.loader("CLIPModel", tower="text") is clip.text_from_hf
    for arch in SUPPORTED_ARCHITECTURES:
        assert callable(pretrained.loader(arch)), arch


def test_register_architecture_routes_from_pretrained(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "_LOADERS", dict(pretrained._LOADERS))
    monkeypatch.setattr(pretrained, "WEIGHT_READERS", dict(pretrained.WEIGHT_READERS))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["MyNet"], "width": 3}))
    seen = {}

    def from_hf(config, tensors, dtype=None, **overrides):
        seen.update(config=config, tensors=tensors, overrides=overrides)
        return "module", {"w": tensors["w"] * 2}

    register_architecture("MyNet", from_hf, weights=lambda folder: {"w": np.arange(3.0)})
    module, params = from_pretrained(tmp_path, scale=1)
    assert module == "module" and np.array_equal(params["w"], [0.0, 2.0, 4.0])
    assert seen["config"]["width"] == 3 and seen["overrides"] == {"scale": 1}
    with pytest.raises(ValueError, match="architecture.*not yet registered.*'MyNet'"):
        register_architecture("MyNet", from_hf)
    with pytest.raises(ValueError, match="architecture.*non-empty"):
        register_architecture("", from_hf)


def test_unknown_architecture_and_bad_tower_are_named():
    with pytest.raises(ValueError, match="architectures\\[0\\].*'GPT2LMHeadModel'"):
        pretrained.loader("GPT2LMHeadModel")
    with pytest.raises(ValueError, match="tower.*'text' for LlamaForCausalLM"):
        pretrained.loader("LlamaForCausalLM", tower="text")
