"""Issue 14.7: layers scanned with nn.scan (`scan_layers`), the remat policy, and the layout conversion
(jaxmm.nn.scan). A scanned model with the unrolled model's weights (stacked) computes the same outputs and
gradients; the remat policy changes what the backward pass keeps; a HF checkpoint imported scanned reproduces HF's
stored outputs and greedy tokens (tests/fixtures/hf); KV-cache decoding works with scanned layers."""
from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.hf import from_pretrained
from jaxmm.models.llm import LLM, LLMConfig, generate
from jaxmm.models.vit import ViT, ViTConfig
from jaxmm.nn import BlockConfig, stack_layers, unstack_layers

CFG = LLMConfig(vocab_size=64, num_layers=3, d_model=32, num_heads=4, num_kv_heads=2, head_dim=12, mlp_dim=64)
HF = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "hf")


def scanned(cfg, **over):
    return dataclasses.replace(cfg, scan_layers=True, **over)


def realistic(params, seed=0):
    """Init's N(0, 0.02) makes every logit ~0: kernels N(0, 1/fan_in), embeddings N(0, 1), norm scales 1 + 0.1 N."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(nn.unbox(params))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    out = []
    for (path, x), k in zip(leaves, keys):
        n = jax.random.normal(k, x.shape, jnp.float32)
        name = path[-1].key
        out.append(n / np.sqrt(x.shape[-2]) if name == "kernel" else n if name == "embedding"
                   else 1 + 0.1 * n if name == "scale" else 0.1 * n)
    return jax.tree_util.tree_unflatten(tree, out)


def llm_and_params(cfg=CFG):
    ids = jnp.zeros((1, 4), jnp.int32)
    return realistic(LLM(cfg).init(jax.random.key(0), ids)["params"])


def padded_batch(seed=1, b=2, length=9, pads=(0, 3)):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, CFG.vocab_size, size=(b, length))
    mask = np.ones((b, length), np.int32)
    for i, p in enumerate(pads):
        ids[i, :p], mask[i, :p] = 0, 0
    return jnp.asarray(ids, jnp.int32), jnp.asarray(mask)


# ------------------------------------------------------------------------------------------ layout conversion
def test_stacked_unrolled_init_is_the_scanned_init_layout_and_unstack_inverts_it():
    ids = jnp.zeros((1, 4), jnp.int32)
    boxed = LLM(CFG).init(jax.random.key(0), ids)["params"]
    want = jax.eval_shape(lambda: LLM(scanned(CFG)).init(jax.random.key(0), ids))["params"]
    got = stack_layers(boxed)
    assert set(got) == {"embedder", "layers", "final_norm", "lm_head"}
    # same tree, same boxes (logical axis names with "layers" in front), same shapes
    assert jax.tree.structure(got) == jax.tree.structure(want)
    assert nn.get_partition_spec(got) == nn.get_partition_spec(want)
    assert nn.get_partition_spec(got)["layers"]["attn"]["q"]["kernel"] == jax.sharding.PartitionSpec(
        "layers", "embed", "heads")
    assert jax.tree.map(jnp.shape, nn.unbox(got)) == jax.tree.map(jnp.shape, nn.unbox(want))
    # layer i of the stack is layers_i; unstack gives the input back exactly (boxed and plain)
    plain = nn.unbox(boxed)
    stacked = stack_layers(plain)
    np.testing.assert_array_equal(stacked["layers"]["mlp"]["up"]["kernel"][2], plain["layers_2"]["mlp"]["up"]["kernel"])
    for tree in (boxed, plain):
        back = unstack_layers(stack_layers(tree))
        assert jax.tree.structure(back) == jax.tree.structure(tree)
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(tree)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # nested (an MLLM's llm/...), NumPy stays NumPy
    nested = stack_layers({"llm": jax.tree.map(np.asarray, plain), "projector": {"w": np.ones(2)}})
    assert isinstance(nested["llm"]["layers"]["attn"]["q"]["kernel"], np.ndarray)
    assert nested["projector"]["w"].shape == (2,)


def test_stack_layers_refuses_gaps_and_mismatched_layers():
    a = {"w": np.zeros((2, 3))}
    with pytest.raises(ValueError, match=r"params: expected layers layers_0 … layers_1 without gaps.*\[0, 2\]"):
        stack_layers({"layers_0": a, "layers_2": a})
    with pytest.raises(ValueError, match=r"params\[layers_1\]: expected the structure and shapes of layers_0"):
        stack_layers({"layers_0": a, "layers_1": {"w": np.zeros((3, 3))}})
    with pytest.raises(ValueError, match=r"params: expected either layers_i subtrees or a `layers` subtree"):
        stack_layers({"layers_0": a, "layers": a})
    with pytest.raises(ValueError, match=r"params\['layers'\]: expected leaves that share a leading"):
        unstack_layers({"layers": {"w": np.zeros((2, 3)), "b": np.zeros((3,))}})


def test_bad_remat_policy_and_residual_axes_are_named():
    with pytest.raises(ValueError, match=r"remat_policy: expected one of \['dots_saveable', .*got 'dots'"):
        BlockConfig(d_model=8, num_heads=2, mlp_dim=16, remat_policy="dots")
    with pytest.raises(ValueError, match=r"residual_axes: expected None or 3 logical axis names"):
        BlockConfig(d_model=8, num_heads=2, mlp_dim=16, residual_axes=("batch", "embed"))


# ------------------------------------------------------------------------------------ scanned == unrolled
@pytest.mark.parametrize("policy", ["none", "dots_saveable"])
def test_scanned_llm_equals_unrolled_outputs_hidden_states_and_gradients(policy):
    params = llm_and_params()
    ids, mask = padded_batch()
    real = np.asarray(mask, bool)
    unrolled, scan = LLM(dataclasses.replace(CFG, remat_policy=policy)), LLM(scanned(CFG, remat_policy=policy))
    stacked = stack_layers(params)

    l0, h0 = unrolled.apply({"params": params}, ids, attention_mask=mask, return_hidden=True)
    l1, h1 = scan.apply({"params": stacked}, ids, attention_mask=mask, return_hidden=True)
    assert float(jnp.std(l0)) > 0.5  # realistic logits, not ~0
    np.testing.assert_allclose(np.asarray(l1)[real], np.asarray(l0)[real], rtol=1e-5, atol=1e-5)
    assert len(h1) == len(h0) == CFG.num_layers + 1
    for a, b in zip(h1, h0):
        np.testing.assert_allclose(np.asarray(a)[real], np.asarray(b)[real], rtol=1e-5, atol=1e-5)

    def loss(model):
        return lambda p: jnp.sum(jnp.where(mask[..., None] > 0, jax.nn.log_softmax(
            model.apply({"params": p}, ids, attention_mask=mask)), 0.0)[..., 0])

    g0 = jax.jit(jax.grad(loss(unrolled)))(params)
    g1 = jax.jit(jax.grad(loss(scan)))(stacked)
    g0s = stack_layers(g0)
    assert float(jnp.max(jnp.abs(g0["layers_0"]["attn"]["q"]["kernel"]))) > 1e-3
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(g1)[0], jax.tree.leaves(g0s)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5,
                                   err_msg=jax.tree_util.keystr(path))


def _residual_bytes(model, params, ids):
    """Bytes the backward pass keeps: the arrays held by the VJP closure (params included, the same for all)."""
    _, vjp = jax.vjp(lambda p: model.apply({"params": p}, ids), params)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(vjp))


@pytest.mark.parametrize("scan", [False, True])
def test_remat_policy_decides_what_the_backward_pass_keeps(scan):
    """A policy that were ignored would keep the same residuals for every setting."""
    params = llm_and_params()
    if scan:
        params = stack_layers(params)
    ids = padded_batch(length=16)[0]
    kept = {p: _residual_bytes(LLM(dataclasses.replace(CFG, scan_layers=scan, remat_policy=p)), params, ids)
            for p in ("none", "dots_saveable", "dots_with_no_batch_dims_saveable", "full")}
    # none keeps every intermediate; dots_saveable every matmul output; no-batch-dims drops the attention
    # matmuls (batched over heads); full only each block's input
    assert kept["none"] > kept["dots_saveable"] > kept["dots_with_no_batch_dims_saveable"] > kept["full"], kept
    # remat=True is the "full" policy
    assert _residual_bytes(LLM(dataclasses.replace(CFG, scan_layers=scan, remat=True)), params, ids) == kept["full"]
    # full keeps, per block, about its [B, L, D] input (the params are kept by every policy)
    param_bytes = sum(x.size * 4 for x in jax.tree.leaves(params))
    b, length = ids.shape
    activations = kept["full"] - param_bytes
    assert activations < 2 * CFG.num_layers * b * length * CFG.d_model * 4, (activations, kept)


# ------------------------------------------------------------------------------------------- decoding
def test_scanned_llm_decodes_with_a_kv_cache_like_the_unrolled_one():
    params = llm_and_params()
    stacked = stack_layers(params)
    unrolled, scan = LLM(CFG), LLM(scanned(CFG))
    ids, mask = padded_batch(seed=3, length=7, pads=(0, 2))
    full = np.asarray(unrolled.apply({"params": params}, ids, attention_mask=mask))
    # prefill 4 tokens, then 3 single steps, in a 10-slot cache: logits of every real token equal the full forward
    logits, state = scan.apply({"params": stacked}, ids[:, :4], attention_mask=mask[:, :4], decode=True,
                               max_length=10, mutable=["cache"])
    assert state["cache"]["layers"]["attn"]["cached_key"].shape == (CFG.num_layers, 2, 10, 2, 12)
    got = [logits]
    for t in range(4, 7):
        logits, state = scan.apply({"params": stacked, **state}, ids[:, t:t + 1], attention_mask=mask[:, t:t + 1],
                                   decode=True, mutable=["cache"])
        got.append(logits)
    got = np.concatenate([np.asarray(g) for g in got], axis=1)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(got[real], full[real], rtol=1e-5, atol=1e-5)
    # generate (one jit: prefill + while loop) gives the unrolled model's tokens
    new_u = generate(unrolled, params, ids, mask, max_new_tokens=6)
    new_s = generate(scan, stacked, ids, mask, max_new_tokens=6)
    np.testing.assert_array_equal(np.asarray(new_s), np.asarray(new_u))


# ------------------------------------------------------------------------------------------- HF import
def test_hf_checkpoint_imported_scanned_matches_hf_outputs_and_greedy_tokens():
    name = "llama3_gqa_tied"
    model, params = from_pretrained(os.path.join(HF, name), scan_layers=True)
    ref = dict(np.load(os.path.join(HF, name, "reference.npz")))
    assert model.config.scan_layers and "layers" in params and "layers_0" not in params
    assert params["layers"]["attn"]["q"]["kernel"].shape[0] == model.config.num_layers
    logits, hidden = model.apply({"params": params}, jnp.asarray(ref["input_ids"]), return_hidden=True)
    assert np.max(np.abs(np.asarray(logits) - ref["logits"])) < 1e-4
    for h, r in zip(hidden, ref["hidden_states"]):
        assert np.max(np.abs(np.asarray(h) - r)) < 1e-4
    new = generate(model, params, jnp.asarray(ref["gen_prompt_ids"]), jnp.asarray(ref["gen_attention_mask"]),
                   max_new_tokens=20, pad_id=int(ref["gen_pad_token_id"]))
    np.testing.assert_array_equal(np.asarray(new), ref["gen_new_ids"])
    # the same tensors as the unrolled import, stacked
    _, flat = from_pretrained(os.path.join(HF, name))
    back = unstack_layers(params)
    assert jax.tree.structure(back) == jax.tree.structure(flat)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(flat)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_scanned_vit_equals_unrolled():
    """Stack is shared: a ViT gets scanned layers through block_extra (params under encoder/layers)."""
    cfg = ViTConfig(image_size=16, patch_size=8, d_model=32, num_layers=3, num_heads=4, mlp_dim=64)
    img = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
    params = realistic(ViT(cfg).init(jax.random.key(0), img)["params"])
    scan = ViT(dataclasses.replace(cfg, block_extra=(("scan_layers", True),)))
    stacked = stack_layers(params)
    assert set(stacked["encoder"]) == {"layers"}
    a, b = ViT(cfg).apply({"params": params}, img), scan.apply({"params": stacked}, img)
    for k in ("last_hidden_state", "pooler_output", "features"):
        np.testing.assert_allclose(np.asarray(b[k]), np.asarray(a[k]), rtol=1e-5, atol=1e-5)
    assert len(b["hidden_states"]) == len(a["hidden_states"]) == 4
