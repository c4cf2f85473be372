"""The "ntk" and "prefix" attention kinds (jaxmm/nn/peft.py) in the Linen Attention layer, the LLM and the ViT,
held against float64 NumPy evaluations of the formulas (tests/_ntk_np.py) and against the softmax layer."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmm.nn.peft  # noqa: F401  (registers the kinds even if jaxmm.nn's __init__ does not)
from jaxmm.models.llm import LLM, LLMConfig
from jaxmm.models.vit import ViT, ViTConfig
from jaxmm.nn.peft import count_params
from jaxmm.nn.transformer import Attention, BlockConfig
import _ntk_np  # tests/ is on sys.path (rootdir conftest)
from train.optim import group_labels

B, L, D, H, HKV, DH = 2, 6, 16, 4, 2, 8


def _args(kind, ntk_init="zeros"):
    """The kind's arguments (BlockConfig.attention_args): a 3-key prefix, the given NTK init."""
    return {"ntk": {"init": ntk_init}, "prefix": {"length": 3}}.get(kind, {})


def _cfg(kind, ntk_init="zeros", **kw):
    base = dict(d_model=D, num_heads=H, num_kv_heads=HKV, head_dim=DH, mlp_dim=32, rope_theta=None, qkv_bias=True,
                out_bias=True, attention=kind, attention_args=_args(kind, ntk_init))
    base.update(kw)
    return BlockConfig(**base)


def _redraw(params, seed, scale=1.0):
    """Every leaf N(0, scale²/fan) so that logits, Z and k are O(1) (init's 0.02 makes everything ~0)."""
    leaves, tree = jax.tree_util.tree_flatten(nn.unbox(params))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    out = [jax.random.normal(k, x.shape) * scale / np.sqrt(x.shape[0] if x.ndim == 2 else 1) for x, k in
           zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(tree, out)


def _np_layer(p, x, **attn_kw):
    """Float64 Attention layer without RoPE: projections, the reference attention, the output projection."""
    f = lambda a: np.asarray(a, np.float64)
    x = f(x)
    q = (x @ f(p["q"]["kernel"]) + f(p["q"]["bias"])).reshape(B, L, H, DH)
    k = (x @ f(p["k"]["kernel"]) + f(p["k"]["bias"])).reshape(B, L, HKV, DH)
    v = (x @ f(p["v"]["kernel"]) + f(p["v"]["bias"])).reshape(B, L, HKV, DH)
    out, _ = _ntk_np.attention(q, k, v, **attn_kw)
    return out.reshape(B, L, H * DH) @ f(p["o"]["kernel"]) + f(p["o"]["bias"])


def _inputs():
    x = jax.random.normal(jax.random.key(1), (B, L, D))
    pad = jnp.array([[1] * L, [1] * (L - 2) + [0, 0]], bool)  # row 1: two padded keys
    return x, pad[:, None, None, :]


@pytest.mark.parametrize("is_causal", [False, True])
def test_ntk_zero_init_is_softmax_attention(is_causal):
    # Z = 0, k = 0: φ(Q)Z = 0 and φ(Q)|k| = 0, so NTK-Attention is exactly softmax attention
    x, mask = _inputs()
    ntk, soft = Attention(_cfg("ntk")), Attention(_cfg("softmax"))
    p = nn.unbox(ntk.init(jax.random.key(0), x)["params"])
    assert float(jnp.abs(p["ntk_z"]).max()) == 0 and float(jnp.abs(p["ntk_k"]).max()) == 0
    base = _redraw({k: v for k, v in p.items() if not k.startswith("ntk_")}, 0)
    full = {**base, "ntk_z": p["ntk_z"], "ntk_k": p["ntk_k"]}
    y_ntk = ntk.apply({"params": full}, x, mask=mask, is_causal=is_causal)
    y_soft = soft.apply({"params": base}, x, mask=mask, is_causal=is_causal)
    ref = _np_layer(base, x, is_causal=is_causal, mask=np.asarray(mask))
    np.testing.assert_allclose(y_ntk, y_soft, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y_ntk, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("is_causal", [False, True])
def test_ntk_layer_matches_float64_formula(is_causal):
    x, mask = _inputs()
    layer = Attention(_cfg("ntk", ntk_init="normal"))
    p = _redraw(layer.init(jax.random.key(0), x)["params"], 3)
    y = layer.apply({"params": p}, x, mask=mask, is_causal=is_causal)
    ref = _np_layer(p, x, is_causal=is_causal, mask=np.asarray(mask), z=p["ntk_z"], kvec=p["ntk_k"])
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    # and the zero-init layer differs from it: Z, k matter
    assert float(jnp.abs(p["ntk_z"]).min()) > 0


@pytest.mark.parametrize("is_causal", [False, True])
def test_prefix_layer_matches_explicit_attention_over_prefix_and_keys(is_causal):
    x, mask = _inputs()
    layer = Attention(_cfg("prefix"))
    p = _redraw(layer.init(jax.random.key(0), x)["params"], 5)
    assert p["prefix_k"].shape == (3, HKV, DH)
    y = layer.apply({"params": p}, x, mask=mask, is_causal=is_causal)
    ref = _np_layer(p, x, is_causal=is_causal, mask=np.asarray(mask), k_prefix=np.asarray(p["prefix_k"])[None],
                    v_prefix=np.asarray(p["prefix_v"])[None])
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    # a query whose real keys are all masked still sees the prefix (a non-zero output)
    none = jnp.zeros((B, 1, 1, L), bool)
    y0 = layer.apply({"params": p}, x, mask=none)
    ref0 = _np_layer(p, x, mask=np.asarray(none), k_prefix=np.asarray(p["prefix_k"])[None],
                     v_prefix=np.asarray(p["prefix_v"])[None])
    np.testing.assert_allclose(y0, ref0, rtol=1e-4, atol=1e-5)


def _llm_cfg(kind, **kw):
    return LLMConfig(vocab_size=40, num_layers=2, d_model=D, num_heads=H, num_kv_heads=HKV, head_dim=DH,
                     mlp_dim=32, attention=kind, attention_args=_args(kind, "normal"), **kw)


def test_param_counts_and_groups():
    ids = jnp.zeros((1, 4), jnp.int32)
    for kind, per_layer in (("ntk", H * (DH * DH + DH)), ("prefix", 2 * 3 * HKV * DH)):
        params = LLM(_llm_cfg(kind)).init(jax.random.key(0), ids)["params"]
        assert count_params(params, kind) == 2 * per_layer
        labels = jax.tree.leaves(group_labels(nn.unbox(params)))
        assert labels.count(kind) == 2 * 2  # two leaves per layer, in the trainer's group of that name
    vit = ViTConfig(image_size=8, patch_size=4, num_channels=1, d_model=D, num_layers=3, num_heads=H, mlp_dim=32,
                    attention="ntk")
    params = ViT(vit).init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    assert count_params(params, "ntk") == 3 * H * ((D // H) ** 2 + D // H)


def test_vit_zero_init_ntk_equals_softmax_vit():
    cfg = ViTConfig(image_size=8, patch_size=4, num_channels=1, d_model=D, num_layers=2, num_heads=H, mlp_dim=32)
    img = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    p_soft = ViT(cfg).init(jax.random.key(0), img)["params"]
    ntk = ViT(dataclasses.replace(cfg, attention="ntk"))
    p_ntk = ntk.init(jax.random.key(0), img)["params"]  # same keys for the shared params, ntk_* zero
    a = ViT(cfg).apply({"params": p_soft}, img)["pooler_output"]
    b = ntk.apply({"params": p_ntk}, img)["pooler_output"]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["ntk", "prefix"])
def test_llm_kv_cache_decode_equals_full_forward(kind):
    cfg = _llm_cfg(kind)
    model = LLM(cfg)
    ids = jax.random.randint(jax.random.key(3), (2, 7), 0, cfg.vocab_size)
    mask = jnp.array([[0, 0, 1, 1, 1, 1, 1], [1] * 7], jnp.int32)  # row 0 left-padded
    params = _redraw(model.init(jax.random.key(0), ids)["params"], 7, scale=0.7)
    full = model.apply({"params": params}, ids, attention_mask=mask)
    # prefill 4 tokens, then decode the remaining 3 one at a time
    logits, state = model.apply({"params": params}, ids[:, :4], attention_mask=mask[:, :4], decode=True,
                                max_length=7, mutable=["cache"])
    steps = [logits]
    for t in range(4, 7):
        logits, state = model.apply({"params": params, "cache": state["cache"]}, ids[:, t:t + 1],
                                    attention_mask=mask[:, t:t + 1], decode=True, mutable=["cache"])
        steps.append(logits)
    dec = jnp.concatenate(steps, axis=1)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(dec)[real], np.asarray(full)[real], rtol=2e-4, atol=2e-4)
    # the method changes the model: not the softmax LLM's logits
    soft = LLM(dataclasses.replace(cfg, attention="softmax", attention_args=()))
    base = dict(params)
    for layer in ("layers_0", "layers_1"):
        base[layer] = {**base[layer], "attn": {k: v for k, v in base[layer]["attn"].items()
                                               if not k.startswith(("ntk_", "prefix_"))}}
    plain = soft.apply({"params": base}, ids, attention_mask=mask)
    assert float(jnp.abs(plain - full).max()) > 1e-3


def test_unknown_ntk_init_is_refused():
    x, _ = _inputs()
    with pytest.raises(ValueError, match="init"):
        Attention(_cfg("ntk", ntk_init="ones")).init(jax.random.key(0), x)
