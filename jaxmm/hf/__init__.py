"""Hugging Face checkpoint import: `from_pretrained(path)` (safetensors only) and the readers in `jaxmm.hf.io`."""
from jaxmm.hf.io import load_safetensors, load_tokenizer, read_config
from jaxmm.hf.pretrained import SUPPORTED_ARCHITECTURES, from_pretrained

__all__ = ["from_pretrained", "SUPPORTED_ARCHITECTURES", "load_safetensors", "load_tokenizer", "read_config"]
