"""Hugging Face checkpoints in and out: `from_pretrained(path)` (safetensors only; a new
family: `register_architecture`), the readers in `jaxmm.hf.io`,
`save_pretrained(module, params, folder)` (jaxmm.hf.export) and `generation_kwargs(folder, prompt_length)`
(generation_config.json as `generate` arguments)."""
from jaxmm.hf.export import save_pretrained
from jaxmm.hf.generation import generation_kwargs
from jaxmm.hf.io import load_safetensors, load_tokenizer, read_config
from jaxmm.hf.pretrained import SUPPORTED_ARCHITECTURES, from_pretrained, register_architecture

__all__ = ["from_pretrained", "save_pretrained", "generation_kwargs", "SUPPORTED_ARCHITECTURES", "load_safetensors",
           "load_tokenizer", "read_config", "register_architecture"]
