"""Flax Linen layers (thin wrappers around jaxmm.ops)."""
from jaxmm.nn.layers import Dense, Embed, LayerNorm, RMSNorm, merge_lora
from jaxmm.nn.transformer import MLP, Attention, Block, BlockConfig, Stack

__all__ = ["Dense", "Embed", "LayerNorm", "RMSNorm", "merge_lora", "MLP", "Attention", "Block", "BlockConfig", "Stack"]
from jaxmm.nn import peft  # noqa: E402,F401  registers the "ntk" and "prefix" attention kinds
