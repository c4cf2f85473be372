"""Pure JAX functions (no Flax, no parameters): the maths of every method. Names resolve lazily."""
import importlib

_EXPORTS = {
    "dot_product_attention": "attention", "causal_mask": "attention",
    "rope_frequencies": "rope", "apply_rope": "rope",
    "rms_norm": "norms", "layer_norm": "norms",
    "masked_cross_entropy": "losses",
    "polynomial_features": "polynomial", "multi_indices": "polynomial",
    "ntk_attention": "ntk", "prefix_attention": "ntk",
    "tensor_attention": "tensor", "tensor_attention_loss_grad": "tensor",
    "log_mel_spectrogram": "audio",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"jaxmm.ops.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'jaxmm.ops' has no attribute {name!r}")
