"""Issue 14.7: `param_dtype` (params stored in bfloat16, compute in `dtype`) and the residual-stream sharding
constraint (`residual_axes`) at every block boundary, on 8 virtual CPU devices (tests/conftest.py)."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from jaxmm.models.llm import LLM, LLMConfig
from jaxmm.nn import stack_layers

CFG = LLMConfig(vocab_size=64, num_layers=3, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64, qkv_bias=True)
RESIDUAL = ("batch", "act_length", "act_embed")
# batch rows over data, the residual's sequence dimension over tensor (sequence parallelism)
RULES = (("batch", ("data", "fsdp")), ("act_length", "tensor"), ("act_embed", None), ("embed", "fsdp"),
         ("heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor"))


def realistic(params, seed=0):
    leaves, tree = jax.tree_util.tree_flatten_with_path(nn.unbox(params))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    out = [jax.random.normal(k, x.shape) / np.sqrt(x.shape[-2]) if path[-1].key == "kernel"
           else 1 + 0.1 * jax.random.normal(k, x.shape) if path[-1].key == "scale"
           else jax.random.normal(k, x.shape) * (1.0 if path[-1].key == "embedding" else 0.1)
           for (path, x), k in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(tree, out)


IDS = jnp.asarray(np.random.default_rng(0).integers(0, 64, size=(4, 8)), jnp.int32)


# ------------------------------------------------------------------------------------------- param_dtype
def test_bf16_params_with_float32_compute():
    cfg16 = dataclasses.replace(CFG, param_dtype=jnp.bfloat16, dtype=jnp.float32)
    boxed = LLM(cfg16).init(jax.random.key(0), IDS)["params"]
    assert {x.dtype for x in jax.tree.leaves(nn.unbox(boxed))} == {jnp.dtype(jnp.bfloat16)}
    f32 = realistic(LLM(CFG).init(jax.random.key(0), IDS)["params"])
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), f32)
    got = LLM(cfg16).apply({"params": bf16}, IDS)
    assert got.dtype == jnp.float32
    # float32 compute on the bf16-stored weights: the float32 model on the same (rounded) weights
    same_weights = LLM(CFG).apply({"params": jax.tree.map(lambda x: x.astype(jnp.float32), bf16)}, IDS)
    np.testing.assert_allclose(np.asarray(got), np.asarray(same_weights), rtol=1e-5, atol=1e-5)
    # ... and close to the float32 weights: bf16 rounding (2^-9 relative) moves logits of std ~1 by ~1e-2
    ref = np.asarray(LLM(CFG).apply({"params": f32}, IDS))
    err = np.abs(np.asarray(got) - ref).max()
    assert 1e-4 < err < 0.1 * ref.std(), (err, ref.std())
    # gradients come back in the storage dtype; a scanned stack stores bf16 too
    g = jax.grad(lambda p: LLM(cfg16).apply({"params": p}, IDS).sum())(bf16)
    assert {x.dtype for x in jax.tree.leaves(g)} == {jnp.dtype(jnp.bfloat16)}
    scan = jax.eval_shape(lambda: LLM(dataclasses.replace(cfg16, scan_layers=True)).init(jax.random.key(0), IDS))
    assert {x.dtype for x in jax.tree.leaves(nn.unbox(scan))} == {jnp.dtype(jnp.bfloat16)}


# --------------------------------------------------------------------------------- residual sharding
def _mesh():
    return jax.make_mesh((2, 1, 4), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)


def _hidden_fn(model):
    """The first block's output (a residual-stream array) of `model`, under RULES."""
    def f(params, ids):
        with nn.logical_axis_rules(RULES):
            logits, hidden = model.apply({"params": params}, ids, return_hidden=True)
        return logits, hidden[1]
    return f


@pytest.mark.parametrize("scan", [False, True])
def test_residual_stream_is_constrained_at_every_block_boundary(scan):
    assert jax.device_count() == 8
    params = realistic(LLM(CFG).init(jax.random.key(0), IDS)["params"])
    if scan:
        params = stack_layers(params)
    plain = LLM(dataclasses.replace(CFG, scan_layers=scan))
    constrained = LLM(dataclasses.replace(CFG, scan_layers=scan, residual_axes=RESIDUAL))
    spec = '[{"data", "fsdp"}, {"tensor"}, {}]>'  # the StableHLO (Shardy) form of P(("data","fsdp"), "tensor")

    def constraints(model):
        text = jax.jit(_hidden_fn(model)).lower(params, IDS).as_text()
        return [line for line in text.splitlines()
                if "sdy.sharding_constraint" in line and "tensor<4x8x32xf32>" in line]

    # without a mesh the option is a no-op (nothing to constrain to)
    assert constraints(constrained) == []
    with jax.set_mesh(_mesh()):
        assert constraints(plain) == []
        found = constraints(constrained)
        # the stack's input and every block's output (scanned: the input and the one block body)
        assert len(found) == (2 if scan else 1 + CFG.num_layers), found
        assert all(spec in line for line in found), found
        logits, hidden = jax.jit(_hidden_fn(constrained))(params, IDS)
        assert hidden.sharding.spec == P("data", "tensor")  # the requested layout, as compiled
        # gradients flow through the constraints too
        g = jax.jit(jax.grad(lambda p: _hidden_fn(constrained)(p, IDS)[0].sum()))(params)
    ref_logits, ref_hidden = _hidden_fn(plain)(params, IDS)  # no mesh, no constraint
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(hidden), np.asarray(ref_hidden), rtol=1e-5, atol=1e-5)
    g_ref = jax.grad(lambda p: _hidden_fn(plain)(p, IDS)[0].sum())(params)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
