"""Encoder-to-LLM projectors (LLaVA): "linear" (LLaVA-1) or "mlp2x_gelu" (LLaVA-1.5: Linear, GELU, Linear)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from jaxmm.nn.layers import Dense
from jaxmm.checks import fail

KINDS = ("linear", "mlp2x_gelu")


class Projector(nn.Module):
    """[B, N, D_enc] -> [B, N, D_llm]. Params: linear_1 (and linear_2 for mlp2x_gelu)."""

    features: int
    kind: str = "mlp2x_gelu"
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        if self.kind not in KINDS:
            fail("kind", f"one of {KINDS}", repr(self.kind))
        x = Dense(self.features, use_bias=True, axes=(None, "embed"), dtype=self.dtype, name="linear_1")(x)
        if self.kind == "linear":
            return x
        x = jax.nn.gelu(x, approximate=False)
        return Dense(self.features, use_bias=True, axes=("embed", "embed"), dtype=self.dtype, name="linear_2")(x)
