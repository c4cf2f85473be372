"""Flax Linen layers (thin wrappers around jaxmm.ops and jaxmm.attention)."""
from jaxmm.nn.layers import Dense, Embed, LayerNorm, RMSNorm, merge_lora
from jaxmm.nn.scan import stack_layers, unstack_layers
from jaxmm.nn.transformer import (ATTENTION_KINDS, MLP, REMAT_POLICIES, Attention, Block, BlockConfig, Stack,
                                  register_attention_kind)

__all__ = ["ATTENTION_KINDS", "Dense", "Embed", "LayerNorm", "RMSNorm", "merge_lora", "MLP", "Attention", "Block",
           "BlockConfig", "REMAT_POLICIES", "Stack", "register_attention_kind", "stack_layers", "unstack_layers"]
# the modules that register the other attention kinds ("ntk", "prefix", "tensor")
from jaxmm.nn import peft  # noqa: E402,F401
from jaxmm.nn import tensor_attention  # noqa: E402,F401
