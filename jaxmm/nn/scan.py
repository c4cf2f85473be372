"""Convert params between the unrolled layer layout of `jaxmm.nn.Stack` (`layers_0` … `layers_{n-1}`, one subtree
per block) and the scanned one (`scan_layers=True`: one `layers` subtree whose every leaf has a leading
[num_layers] axis). Checkpoint import (e.g. jaxmm.models.llm.from_hf) builds the unrolled layout and stacks it;
an exporter unstacks first. Both work at every dict level (an MLLM's `llm/layers_i`, a ViT's `encoder/layers_i`),
on arrays or on boxed params (`init`'s `nn.LogicallyPartitioned`: the logical axis name "layers" is added /
removed as `nn.scan` does).
"""
from __future__ import annotations

import re
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

from jaxmm.checks import fail


SCAN_AXIS = {nn.PARTITION_NAME: "layers"}  # the metadata Stack gives nn.scan: logical axis name of axis 0


def _is_box(x) -> bool:
    return isinstance(x, meta.AxisMetadata)


def _stack(*leaves):
    if _is_box(leaves[0]):
        return leaves[0].replace_boxed(_stack(*(x.unbox() for x in leaves))).add_axis(0, SCAN_AXIS)
    return np.stack(leaves) if all(isinstance(x, np.ndarray) for x in leaves) else jnp.stack(leaves)


def _take(x, i: int):
    return x.replace_boxed(x.unbox()[i]).remove_axis(0, SCAN_AXIS) if _is_box(x) else x[i]


def _shape(x):
    return np.shape(x.unbox() if _is_box(x) else x)


def stack_layers(params: Mapping, name: str = "layers") -> dict:
    """Replace, at every dict level, the keys `{name}_0` … `{name}_{n-1}` by one `name` whose leaves are the
    per-layer leaves stacked on a new axis 0 (NumPy stays NumPy). Other keys are kept (recursively converted).
    The layer indices must run 0 … n-1 and every layer must have the same tree structure and shapes."""
    pattern = re.compile(rf"{re.escape(name)}_(\d+)")
    out, layers = {}, {}
    for key, value in params.items():
        m = pattern.fullmatch(str(key))
        if m:
            layers[int(m.group(1))] = value
        else:
            out[key] = stack_layers(value, name) if isinstance(value, Mapping) else value
    if not layers:
        return out
    if name in out:
        fail("params", f"either {name}_i subtrees or a `{name}` subtree at one level", f"both, keys {sorted(params)}")
    if sorted(layers) != list(range(len(layers))):
        fail("params", f"layers {name}_0 … {name}_{len(layers) - 1} without gaps", f"indices {sorted(layers)}")
    trees = [_plain(layers[i]) for i in range(len(layers))]
    structures = [jax.tree.structure(t, is_leaf=_is_box) for t in trees]
    shapes = [[_shape(x) for x in jax.tree.leaves(t, is_leaf=_is_box)] for t in trees]
    for i in range(1, len(trees)):
        if structures[i] != structures[0] or shapes[i] != shapes[0]:
            fail(f"params[{name}_{i}]", f"the structure and shapes of {name}_0", "a different tree")
    out[name] = jax.tree.map(_stack, *trees, is_leaf=_is_box)
    return out


def unstack_layers(params: Mapping, name: str = "layers") -> dict:
    """The inverse of `stack_layers`: every `name` subtree (leaves [num_layers, ...]) becomes `{name}_0` …"""
    out = {}
    for key, value in params.items():
        if key == name and isinstance(value, Mapping):
            shapes = [_shape(x) for x in jax.tree.leaves(value, is_leaf=_is_box)]
            counts = {s[0] if s else None for s in shapes}
            if len(counts) != 1 or None in counts:
                fail(f"params[{name!r}]", "leaves that share a leading [num_layers] axis",
                     f"leading sizes {sorted(map(str, counts))}")
            n = counts.pop()
            for i in range(n):
                k = f"{name}_{i}"
                if k in params:
                    fail("params", f"either {name}_i subtrees or a `{name}` subtree at one level", f"both ({k})")
                out[k] = jax.tree.map(lambda x, i=i: _take(x, i), _plain(value), is_leaf=_is_box)
        else:
            out[key] = unstack_layers(value, name) if isinstance(value, Mapping) else value
    return out


def _plain(tree):
    """Nested Mappings (FrozenDict included) as plain dicts, so tree structures compare equal."""
    return {k: _plain(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree
