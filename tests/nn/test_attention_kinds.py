"""The attention-kind registry: BlockConfig selects a kind by name with that kind's arguments; a new kind
registers itself; "dp" (jaxmm/privacy/layers.py) is DPCrossAttention over the block's own tokens."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm import attention
from jaxmm.nn import ATTENTION_KINDS, Attention, Block, BlockConfig, register_attention_kind


def test_registered_kinds_and_their_arguments():
    assert {"softmax", "prefix", "ntk", "tensor"} <= set(ATTENTION_KINDS)
    cfg = BlockConfig(d_model=8, num_heads=2, mlp_dim=8, attention="tensor", attention_args={"degree": 3})
    assert cfg.kind_args() == {"method": "exact", "degree": 3, "scale": None}
    assert cfg.attention_args == (("degree", 3),)           # a dict is stored as sorted pairs (hashable)
    hash(cfg)
    with pytest.raises(ValueError, match=r"^attention_args: expected names among \['length'\]"):
        BlockConfig(d_model=8, num_heads=2, mlp_dim=8, attention="prefix", attention_args={"init": "zeros"})
    with pytest.raises(ValueError, match="^implementation: expected one of"):
        BlockConfig(d_model=8, num_heads=2, mlp_dim=8, implementation="flash")
    with pytest.raises(ValueError, match="^attention: expected one of"):
        Block(BlockConfig(d_model=8, num_heads=2, mlp_dim=8, attention="nope")).init(
            jax.random.key(0), jnp.ones((1, 4, 8)))


def test_derived_head_counts_have_their_own_names():
    cfg = BlockConfig(d_model=16, num_heads=4, mlp_dim=8)
    assert (cfg.num_kv_heads, cfg.head_dim) == (None, None)
    assert (cfg.resolved_num_kv_heads, cfg.resolved_head_dim) == (4, 4)
    assert not hasattr(cfg, "kv_heads") and not hasattr(cfg, "dim_head")


def test_a_new_kind_registers_without_editing_the_transformer():
    def scaled(module, q, k, v, *, mask, is_causal):
        s = module.config.kind_args()["temperature"] / math.sqrt(q.shape[-1])
        return attention.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, scale=s)

    register_attention_kind("test_scaled", scaled, defaults={"temperature": 1.0})
    try:
        x = jax.random.normal(jax.random.key(0), (2, 5, 16))
        base = dict(d_model=16, num_heads=4, mlp_dim=8, rope_theta=None)
        soft, mine = BlockConfig(**base), BlockConfig(**base, attention="test_scaled")
        params = Attention(soft).init(jax.random.key(1), x)
        np.testing.assert_allclose(Attention(mine).apply(params, x, is_causal=True),
                                   Attention(soft).apply(params, x, is_causal=True), atol=1e-6)
        hot = BlockConfig(**base, attention="test_scaled", attention_args={"temperature": 2.0})
        assert not np.allclose(Attention(hot).apply(params, x), Attention(soft).apply(params, x))
    finally:
        del ATTENTION_KINDS["test_scaled"]


def test_dp_kind_is_dp_cross_attention_over_the_tokens():
    from jaxmm.privacy.layers import DPCrossAttention  # registers "dp"

    x = jax.random.normal(jax.random.key(0), (2, 6, 16)) * 0.3
    cfg = BlockConfig(d_model=16, num_heads=2, mlp_dim=8, rope_theta=None, attention="dp",
                      attention_args={"epsilon": math.inf, "degree": 3})
    block = Block(cfg)
    params = block.init(jax.random.key(1), x)["params"]
    kind_layer = ATTENTION_KINDS["dp"].module(cfg, name="attn")
    layer = DPCrossAttention(num_heads=2, head_dim=8, out_features=16, epsilon=math.inf, degree=3)
    np.testing.assert_allclose(kind_layer.apply({"params": params["attn"]}, x),
                               layer.apply({"params": params["attn"]["dp"]}, x, x), atol=1e-6)
    assert np.all(np.isfinite(block.apply({"params": params}, x)))
    with pytest.raises(ValueError, match="^is_causal:"):
        block.apply({"params": params}, x, is_causal=True)
