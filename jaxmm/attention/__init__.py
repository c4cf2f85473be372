"""Attention with the backend chosen per lowering platform: one dispatch layer, one `implementation` vocabulary
(None, "xla", "reference", "cudnn", "pallas") for every attention kind. See `jaxmm.attention.dispatch`."""
from jaxmm.attention.dispatch import (IMPLEMENTATIONS, cudnn_available, dot_product_attention, ntk_attention,
                                      prefix_attention, tensor_attention)

__all__ = ["IMPLEMENTATIONS", "cudnn_available", "dot_product_attention", "ntk_attention", "prefix_attention",
           "tensor_attention"]
