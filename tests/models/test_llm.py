"""jaxmm.models.llm on random tiny models: KV cache vs full forward, masks, GQA vs MHA, generate vs a cache-free
loop, sampling distributions vs float64 numpy, LoRA, jit/grad, bf16 at 4k tokens, the NNX bridge, shape errors.
(HF parity lives in tests/hf/test_parity.py.)"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.models.llm import LLM, LLMConfig, generate, sample_logits, tiny_llm_config
from jaxmm.nn.layers import merge_lora
from jaxmm.ops.losses import masked_cross_entropy

CFG = LLMConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, head_dim=12, mlp_dim=64,
                rope_theta=10000.0)  # heads·head_dim = 48 != d_model: the o projection maps 48 -> 32


def redraw(params, seed):
    """Weights of a realistic scale (init's N(0, 0.02) makes every logit ~0): kernels N(0, 1/fan_in),
    embeddings N(0, 1), norm scales 1 + 0.1 N, biases 0.1 N; LoRA A as initialised, LoRA B = 0."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    out = []
    for (path, x), k in zip(leaves, keys):
        name = path[-1].key
        n = jax.random.normal(k, x.shape, jnp.float32)
        if name == "kernel":
            out.append(n / np.sqrt(x.shape[0]))
        elif name == "embedding":
            out.append(n)
        elif name == "scale":
            out.append(1 + 0.1 * n)
        elif name in ("lora_a", "lora_b"):
            out.append(x)
        else:
            out.append(0.1 * n)
    return jax.tree_util.tree_unflatten(tree, out)


@functools.cache
def model_and_params(cfg=CFG, seed=0):
    model = LLM(cfg)
    params = model.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"]
    return model, redraw(jax.tree.map(jnp.asarray, nn.unbox(params)), seed)


@functools.partial(jax.jit, static_argnames=("model", "decode", "max_length"))
def run(model, variables, ids, mask=None, *, decode=False, max_length=None):
    """One compile per (model, shapes): logits, or (logits, variables) when decoding."""
    if decode:
        return model.apply(variables, ids, attention_mask=mask, decode=True, max_length=max_length,
                           mutable=["cache"])
    return model.apply(variables, ids, attention_mask=mask)


def batch(seed=1, b=2, length=10, pads=(0, 3)):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, CFG.vocab_size, size=(b, length))
    mask = np.ones((b, length), np.int32)
    for i, p in enumerate(pads):
        ids[i, :p], mask[i, :p] = 0, 0
    return jnp.asarray(ids, jnp.int32), jnp.asarray(mask)


def test_kv_cache_decoding_equals_full_forward():
    model, params = model_and_params()
    ids, mask = batch()
    full = np.asarray(run(model, {"params": params}, ids, mask))
    real = np.asarray(mask, bool)
    # prefill 6, then a chunk of 2, then 1 + 1 tokens, in a 12-slot cache
    logits, state = run(model, {"params": params}, ids[:, :6], mask[:, :6], decode=True, max_length=12)
    after_prefill = state
    got = [logits]
    for s, e in ((6, 8), (8, 9), (9, 10)):
        logits, state = run(model, {"params": params, **state}, ids[:, s:e], mask[:, s:e], decode=True)
        got.append(logits)
    got = np.concatenate([np.asarray(g) for g in got], axis=1)
    np.testing.assert_allclose(got[real], full[real], atol=1e-5)
    assert int(state["cache"]["decode_state"]["index"]) == 10
    np.testing.assert_array_equal(state["cache"]["decode_state"]["next_position"], mask.sum(1))
    # the same decode step given the full [B, max_length] mask instead of the new tokens' mask
    full_mask = jnp.pad(mask[:, :7], ((0, 0), (0, 5)))
    step, _ = run(model, {"params": params, **after_prefill}, ids[:, 6:7], full_mask, decode=True)
    np.testing.assert_allclose(np.asarray(step)[:, 0], full[:, 6], atol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_heads():
    model, params = model_and_params()
    mha = LLM(dataclasses.replace(CFG, num_kv_heads=None))
    g, d = CFG.num_heads // CFG.num_kv_heads, CFG.head_dim

    def repeat(kernel):  # [D, Hkv*d] -> [D, H*d]; query head h uses kv head h // g
        k = kernel.reshape(kernel.shape[0], CFG.num_kv_heads, d)
        return jnp.repeat(k, g, axis=1).reshape(kernel.shape[0], -1)

    mparams = jax.tree.map(lambda x: x, params)
    for i in range(CFG.num_layers):
        attn = dict(mparams[f"layers_{i}"]["attn"])
        attn["k"] = {"kernel": repeat(attn["k"]["kernel"])}
        attn["v"] = {"kernel": repeat(attn["v"]["kernel"])}
        mparams[f"layers_{i}"] = {**mparams[f"layers_{i}"], "attn": attn}
    ids, mask = batch()
    a = run(model, {"params": params}, ids, mask)
    b = run(mha, {"params": mparams}, ids, mask)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_causal_mask_hides_the_future():
    model, params = model_and_params()
    ids, _ = batch(pads=(0, 0))
    changed = ids.at[:, 7].set((ids[:, 7] + 1) % CFG.vocab_size)
    a = np.asarray(run(model, {"params": params}, ids))
    b = np.asarray(run(model, {"params": params}, changed))
    np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert np.abs(a[:, 7:] - b[:, 7:]).min(axis=-1).max() > 1e-3


def test_padding_does_not_change_real_tokens():
    model, params = model_and_params()
    ids, mask = batch()
    a = np.asarray(run(model, {"params": params}, ids, mask))
    # other pad ids, and a masked token in the middle of row 0
    mask2 = mask.at[0, 4].set(0)
    ids2 = jnp.where(mask == 0, 17, ids)
    b = np.asarray(run(model, {"params": params}, ids2, mask))
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(a[real], b[real], atol=1e-6)
    c1 = np.asarray(run(model, {"params": params}, ids, mask2))
    c2 = np.asarray(run(model, {"params": params}, ids.at[0, 4].set(5), mask2))
    np.testing.assert_allclose(c1[np.asarray(mask2, bool)], c2[np.asarray(mask2, bool)], atol=1e-6)
    # a left-padded row gives the logits of the same tokens without padding (positions restart at 0)
    alone = np.asarray(run(model, {"params": params}, ids[1:, 3:]))
    np.testing.assert_allclose(a[1, 3:], alone[0], atol=1e-5)


def greedy_reference(model, params, ids, mask, steps):
    """Cache-free greedy loop of full forwards over a fixed [B, Lp + steps] buffer (future slots are masked and,
    being in the future, invisible to the causal mask); also the smallest top-1 minus top-2 logit gap."""
    lp = ids.shape[1]
    buf = np.concatenate([np.asarray(ids), np.zeros((ids.shape[0], steps), np.int32)], 1)
    bmask = np.concatenate([np.asarray(mask), np.zeros((ids.shape[0], steps), np.int32)], 1)
    margin = np.inf
    for t in range(steps):
        logits = np.asarray(run(model, {"params": params}, jnp.asarray(buf), jnp.asarray(bmask)))[:, lp + t - 1]
        top2 = np.sort(logits, axis=-1)[:, -2:]
        margin = min(margin, float((top2[:, 1] - top2[:, 0]).min()))
        buf[:, lp + t], bmask[:, lp + t] = logits.argmax(-1), 1
    return buf[:, lp:], margin


def test_generate_greedy_equals_cache_free_loop_and_stops_at_eos():
    model, params = model_and_params()
    ids, mask = batch(seed=3, length=7, pads=(0, 4))
    ref, margin = greedy_reference(model, params, ids, mask, 8)
    assert margin > 1e-4
    new = generate(model, params, ids, mask, max_new_tokens=8)
    np.testing.assert_array_equal(np.asarray(new), ref)
    # prefill from embeddings (the MLLM path) gives the same tokens
    embeds = model.apply({"params": params}, ids, method=LLM.embed)
    np.testing.assert_array_equal(np.asarray(generate(model, params, None, mask, max_new_tokens=8,
                                                      prefill_embeds=embeds)), ref)
    # EOS: row 0 stops after emitting its 3rd token; pads after it, the other row is unaffected
    eos = int(ref[0, 2])
    out = np.asarray(generate(model, params, ids, mask, max_new_tokens=8, eos_id=eos, pad_id=63))
    for r in range(2):
        hits = np.flatnonzero(ref[r] == eos)
        stop = hits[0] + 1 if len(hits) else 8
        np.testing.assert_array_equal(out[r, :stop], ref[r, :stop])
        assert np.all(out[r, stop:] == 63)
    assert np.all(out[0, 3:] == 63)


def test_generate_sampling_options():
    model, params = model_and_params()
    ids, mask = batch(seed=3, length=7, pads=(0, 4))
    greedy = np.asarray(generate(model, params, ids, mask, max_new_tokens=8))  # compiled by the test above
    sample = functools.partial(generate, model, params, ids, mask, max_new_tokens=8)
    np.testing.assert_array_equal(np.asarray(sample(temperature=1.3, top_k=1, rng=jax.random.key(1))), greedy)
    compiled = _generate_cache_size()
    np.testing.assert_array_equal(np.asarray(sample(temperature=1.0, top_p=1e-6, rng=jax.random.key(1))), greedy)
    s1, s2, s3 = (np.asarray(sample(temperature=1.0, rng=jax.random.key(k))) for k in (7, 7, 8))
    np.testing.assert_array_equal(s1, s2)
    assert not np.array_equal(s1, s3)  # 16 draws at temperature 1: equal paths are ~impossible
    assert not np.array_equal(s1, greedy)
    assert _generate_cache_size() == compiled  # temperature / top_k / top_p changes do not recompile


def _generate_cache_size():
    from jaxmm.models import llm

    return llm._generate._cache_size()


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 1.0), (1.0, 3, 1.0), (1.5, 0, 0.75)])
def test_sample_logits_distribution(temperature, top_k, top_p):
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    n = 40000
    toks = np.asarray(sample_logits(jnp.tile(jnp.asarray(logits, jnp.float32), (n, 1)), jax.random.key(0),
                                    temperature=temperature, top_k=top_k, top_p=top_p))
    p = np.exp(logits / temperature - np.max(logits / temperature))
    p /= p.sum()
    keep = np.ones(6, bool)
    if top_k:
        keep &= np.argsort(-p).argsort() < top_k
    if top_p < 1:
        order = np.argsort(-p)
        before = np.cumsum(p[order]) - p[order]
        keep[order[before >= top_p]] = False
    expected = np.where(keep, p, 0) / np.where(keep, p, 0).sum()
    freq = np.bincount(toks, minlength=6) / n
    assert np.all(freq[~keep] == 0)
    np.testing.assert_allclose(freq, expected, atol=0.012)  # > 4 standard errors at n = 40000


def test_lora_starts_as_identity_and_merge_equals_unmerged():
    base_model, base = model_and_params()
    lcfg = dataclasses.replace(CFG, lora_rank=4, lora_alpha=8.0, lora_targets=("q", "v", "down"))
    lmodel = LLM(lcfg)
    lparams = jax.tree.map(jnp.asarray, nn.unbox(
        lmodel.init(jax.random.key(5), jnp.zeros((1, 4), jnp.int32))["params"]))
    # same base weights, LoRA A as initialised and B = 0
    merged_tree = jax.tree.map(lambda x: x, lparams)  # a copy to overwrite
    for i in range(CFG.num_layers):
        for grp, names in (("attn", "qkvo"), ("mlp", ("gate", "up", "down"))):
            for n in names:
                merged_tree[f"layers_{i}"][grp][n]["kernel"] = base[f"layers_{i}"][grp][n]["kernel"]
        for nrm in ("attn_norm", "mlp_norm"):
            merged_tree[f"layers_{i}"][nrm] = base[f"layers_{i}"][nrm]
    for k in ("embedder", "final_norm", "lm_head"):
        merged_tree[k] = base[k]
    ids, mask = batch()
    a = run(base_model, {"params": base}, ids, mask)
    b = run(lmodel, {"params": merged_tree}, ids, mask)
    np.testing.assert_allclose(a, b, atol=1e-6)
    # train-like perturbation of B, then merge into the kernels of a LoRA-free model
    leaves, tree = jax.tree_util.tree_flatten_with_path(merged_tree)
    keys = jax.random.split(jax.random.key(9), len(leaves))
    tuned = jax.tree_util.tree_unflatten(tree, [
        jax.random.normal(k, x.shape) * 0.3 if path[-1].key == "lora_b" else x for (path, x), k in zip(leaves, keys)])
    c = np.asarray(run(lmodel, {"params": tuned}, ids, mask))
    assert np.abs(c - np.asarray(a)).max() > 1e-2  # the adapters do something
    d = run(base_model, {"params": merge_lora(tuned, alpha=8.0)}, ids, mask)
    np.testing.assert_allclose(c, d, atol=1e-4)


def test_jit_and_grad_through_the_llm():
    model, params = model_and_params()
    ids, mask = batch()
    eager = run(model, {"params": params}, ids, mask)
    jitted = jax.jit(lambda p, i, m: run(model, {"params": p}, i, m))(params, ids, mask)
    np.testing.assert_allclose(eager, jitted, atol=1e-5)

    def loss(p):
        logits = model.apply({"params": p}, ids[:, :-1], attention_mask=mask[:, :-1])
        return masked_cross_entropy(logits, ids[:, 1:], mask[:, 1:])[0]

    loss = jax.jit(loss)
    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert np.isfinite(float(value))
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).max() > 0, path
    # directional derivative against central finite differences
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    v = jax.tree.unflatten(tree, [jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    norm = np.sqrt(sum(float(jnp.sum(x * x)) for x in jax.tree.leaves(v)))
    v = jax.tree.map(lambda x: x / norm, v)
    eps = 1e-2
    fd = (loss(jax.tree.map(lambda p, d: p + eps * d, params, v))
          - loss(jax.tree.map(lambda p, d: p - eps * d, params, v))) / (2 * eps)
    analytic = sum(float(jnp.sum(g * d)) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(v)))
    np.testing.assert_allclose(float(fd), analytic, rtol=2e-2, atol=1e-4)


def test_remat_gives_the_same_logits_and_grads():
    model, params = model_and_params()
    remat = LLM(dataclasses.replace(CFG, remat=True))
    ids, mask = batch()
    loss = lambda m: lambda p: jnp.sum(run(m, {"params": p}, ids, mask) ** 2)  # noqa: E731
    g1, g2 = jax.jit(jax.grad(loss(model)))(params), jax.jit(jax.grad(loss(remat)))(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bf16_forward_over_4k_tokens_is_finite():
    cfg = LLMConfig(vocab_size=64, num_layers=1, d_model=32, num_heads=2, mlp_dim=32)
    model = LLM(cfg)
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), redraw(nn.unbox(params), 0))
    ids = jax.random.randint(jax.random.key(1), (1, 4096), 0, 64)
    logits, hidden = jax.jit(lambda p, i: model.apply({"params": p}, i, return_hidden=True))(params, ids)
    assert hidden[-1].dtype == jnp.bfloat16 and logits.dtype == jnp.float32
    assert logits.shape == (1, 4096, 64) and bool(jnp.all(jnp.isfinite(logits)))
    assert float(jnp.std(logits[0, -1])) > 0.1  # not collapsed to a constant


def test_llm_runs_under_nnx_bridge():
    from flax import nnx

    cfg = tiny_llm_config(64, d_model=32, num_heads=2, num_kv_heads=1, mlp_dim=32)
    ids = jnp.arange(8, dtype=jnp.int32).reshape(2, 4)
    with nnx.use_eager_sharding(False):
        m = nnx.bridge.ToNNX(LLM(cfg), rngs=nnx.Rngs(0))
        nnx.bridge.lazy_init(m, ids)
        y = m(ids)
        e = m.embed(ids)  # methods stay reachable
    params = nnx.to_pure_dict(nnx.state(m, nnx.Param))
    np.testing.assert_allclose(y, LLM(cfg).apply({"params": params}, ids), atol=1e-6)
    assert e.shape == (2, 4, 32)


def test_shape_errors_name_the_argument():
    model, params = model_and_params()
    ids, mask = batch()
    apply = functools.partial(model.apply, {"params": params})
    with pytest.raises(ValueError, match=r"input_ids: expected a rank-2 array .*got shape \(10,\)"):
        apply(ids[0])
    with pytest.raises(ValueError, match=r"attention_mask: expected shape \(2, 10\).*got shape \(2, 9\)"):
        apply(ids, attention_mask=mask[:, :9])
    with pytest.raises(ValueError, match=r"inputs_embeds: expected shape \(\*, \*, 32\).*got shape \(2, 10, 16\)"):
        apply(inputs_embeds=jnp.zeros((2, 10, 16)))
    with pytest.raises(ValueError, match="input_ids: expected exactly one of input_ids and inputs_embeds"):
        apply(ids, inputs_embeds=jnp.zeros((2, 10, 32)))
    with pytest.raises(ValueError, match=r"positions: expected shape \(2, 10\)"):
        apply(ids, positions=jnp.arange(10))
    with pytest.raises(ValueError, match="max_length: expected the cache size"):
        apply(ids, decode=True, mutable=["cache"])
    with pytest.raises(ValueError, match=r"prompt_mask: expected shape \(2, 10\).*got shape \(2, 8\)"):
        generate(model, params, ids, mask[:, :8], max_new_tokens=2)
    with pytest.raises(ValueError, match="rng: expected a PRNG key"):
        generate(model, params, ids, mask, max_new_tokens=2, temperature=1.0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, params, ids, mask, max_new_tokens=2, top_p=0.0)


def test_float32_llm_lowers_for_cuda_without_cudnn_where_cudnn_is_available(monkeypatch):
    """On NVIDIA GPUs the automatic choice is cuDNN, which takes only fp16/bf16: a float32 model (the HF-import
    default) must take XLA instead of raising. Simulated on CPU: cuDNN reported available, the model lowered for
    CUDA (the choice is made per lowering platform) has no cuDNN call, and runs on CPU unchanged."""
    from jaxmm.attention import dispatch

    model, params = model_and_params()
    ids, mask = batch()
    ref = np.asarray(run(model, {"params": params}, ids, mask))
    monkeypatch.setattr(dispatch, "cudnn_available", lambda: True)
    fn = jax.jit(lambda p, i, m: model.apply({"params": p}, i, attention_mask=m))
    text = fn.trace(params, ids[:, :9], mask[:, :9]).lower(lowering_platforms=("cuda",)).as_text()
    assert "cudnn" not in text.lower()
    got = fn(params, ids[:, :9], mask[:, :9])
    np.testing.assert_allclose(np.asarray(got), ref[:, :9], atol=1e-5)
