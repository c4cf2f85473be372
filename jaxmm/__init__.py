"""jaxmm: JAX/Flax reimplementations of ten 2024 methods for multimodal LLMs, efficient and private attention,
and diffusion. Subpackages load on first use, so `import jaxmm; jaxmm.models.llm` works:

    ops       pure maths (attention, NTK / tensor attention, RoPE, norms, losses, ...)
    kernels   Pallas kernels beside their references in ops
    attention the attention functions with the backend chosen per platform (cuDNN / Pallas / XLA)
    nn        Flax Linen layers          models   assembled networks (llm, vit, audio, mllm, ...)
    data      tokenizers, datasets, loaders       hf  Hugging Face safetensors import
    privacy   DP mechanisms, DP-NTK, DP cross-attention          tuning  CoMMIT, PEFT helpers
    ocr       OCR engines (rapidocr / PP-OCR, tesseract, oracle), disk cache, layout recovery
    diffusion noise schedules, training targets, DDPM / DDIM / DPM-Solver++(2M) samplers, guidance
"""
import importlib
import importlib.metadata
import pkgutil

try:
    __version__ = importlib.metadata.version("jaxmm")
except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0.0.0+unknown"

_SUBMODULES = frozenset(info.name for info in pkgutil.iter_modules(__path__))


def lazy_submodules(package_name: str, package_path):
    """A module-level `__getattr__` that imports `<package>.<name>` on first access (PEP 562)."""
    names = frozenset(info.name for info in pkgutil.iter_modules(package_path))

    def __getattr__(name):
        if name in names:
            return importlib.import_module(f"{package_name}.{name}")
        raise AttributeError(f"module {package_name!r} has no attribute {name!r}")

    return __getattr__


__getattr__ = lazy_submodules(__name__, __path__)


def __dir__():
    return sorted(set(globals()) | _SUBMODULES)
