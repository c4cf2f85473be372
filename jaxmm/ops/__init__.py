"""Pure JAX functions (no Flax, no parameters): the maths of every method, in plain XLA. Names resolve lazily.

The attention functions here are the reference maths; `jaxmm.attention` holds the same names with the backend
dispatch (cuDNN, Pallas) and its `implementation=` argument. `jaxmm.ops` never imports `jaxmm.kernels`."""
import importlib

_EXPORTS = {
    "dot_product_attention": "attention", "causal_mask": "attention", "prefix_attention": "attention",
    "rope_frequencies": "rope", "apply_rope": "rope",
    "rms_norm": "norms", "layer_norm": "norms",
    "masked_cross_entropy": "losses",
    "polynomial_features": "polynomial", "multi_indices": "polynomial",
    "ntk_attention": "ntk",
    "tensor_attention": "tensor", "tensor_attention_loss_grad": "tensor",
    "log_mel_spectrogram": "audio",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"jaxmm.ops.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'jaxmm.ops' has no attribute {name!r}")
