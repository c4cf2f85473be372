"""Attention, MLP and the pre-norm transformer block, configured by one frozen `BlockConfig`.

The attention inside a block is chosen by name, `BlockConfig.attention`, from the registry `ATTENTION_KINDS`,
with that kind's arguments in `BlockConfig.attention_args`. "softmax" (standard attention through
`jaxmm.attention.dot_product_attention`, or `attention_fn` if given) is registered here; "ntk" and "prefix" by
jaxmm/nn/peft.py, "tensor" by jaxmm/nn/tensor_attention.py; a new kind calls `register_attention_kind` (no edit
here). Backend choice is not made here: `BlockConfig.implementation` goes to `jaxmm.attention`.

Memory and sharding (`Stack`, docs/ARCHITECTURE.md "Memory and sharding"): `scan_layers` runs the blocks as one
`nn.scan` (params stacked on a leading "layers" axis: one compiled block however deep the model;
jaxmm.nn.scan converts between the layouts), `remat_policy` rematerialises each block under a
`jax.checkpoint_policies` policy, `param_dtype` stores the params in another dtype than the compute `dtype`,
and `residual_axes` constrains the residual stream's sharding at every block boundary.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmm import attention as attention_ops
from jaxmm.nn.layers import ACTIVATIONS, Dense, make_norm
from jaxmm.nn.scan import SCAN_AXIS
from jaxmm.ops import rope
from jaxmm.checks import check_rank, fail


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    d_model: int
    num_heads: int
    mlp_dim: int
    num_kv_heads: int | None = None  # None: = num_heads (MHA); 1: MQA
    head_dim: int | None = None  # None: d_model // num_heads
    mlp: str = "swiglu"  # "swiglu" | "gelu" | "gelu_tanh" | "quick_gelu" | "silu"
    norm: str = "rms"  # "rms" | "layer"
    norm_eps: float = 1e-6
    qkv_bias: tuple[bool, bool, bool] | bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    rope_theta: float | None = 10000.0  # None: no rotary embedding (ViT, Whisper)
    rope_scaling: tuple | None = None  # HF rope_scaling dict as sorted items (hashable)
    attention: str = "softmax"  # a name in ATTENTION_KINDS
    attention_args: tuple = ()  # the kind's arguments as (name, value) pairs (a dict is accepted), e.g.
    #   "prefix": length (10); "ntk": init ("zeros"); "tensor": method ("exact"), degree (2), scale (None: 1/d);
    #   "dp" (registered by jaxmm.privacy.layers): epsilon, delta, bounds, degree, method, ...
    attention_fn: Callable | None = None  # user attention with dot_product_attention's signature ("softmax")
    implementation: str | None = None  # jaxmm.attention vocabulary: None, "xla", "reference", "cudnn", "pallas"
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q", "v")  # any of q, k, v, o, gate, up, down, fc1, fc2
    dtype: Any = None  # compute dtype (None = input dtype)
    param_dtype: Any = jnp.float32  # storage dtype of the block's params (e.g. jnp.bfloat16; compute: `dtype`)
    remat: bool = False  # True: rematerialise every block (= remat_policy "full" when remat_policy is "none")
    remat_policy: str = "none"  # a name in REMAT_POLICIES; anything but "none" rematerialises the blocks
    scan_layers: bool = False  # Stack: one nn.scan over the blocks (params under "layers", stacked on axis 0)
    residual_axes: tuple | None = None  # logical names of the residual stream [batch, length, d_model], constrained
    #   at every block boundary (nn.with_logical_constraint: a no-op without a mesh and rules), e.g.
    #   ("batch", "act_length", "act_embed") with the rule ("act_length", "tensor") (sequence parallelism)

    @property
    def resolved_num_kv_heads(self) -> int:
        """num_kv_heads, or num_heads when it is None (MHA)."""
        return self.num_kv_heads or self.num_heads

    @property
    def resolved_head_dim(self) -> int:
        """head_dim, or d_model // num_heads when it is None."""
        return self.head_dim or self.d_model // self.num_heads

    @property
    def resolved_remat_policy(self) -> str:
        """remat_policy, or "full" when it is "none" and `remat` is True."""
        return "full" if self.remat and self.remat_policy == "none" else self.remat_policy

    @property
    def biases(self) -> tuple[bool, bool, bool]:
        b = self.qkv_bias
        return (b, b, b) if isinstance(b, bool) else tuple(b)

    def __post_init__(self):
        if self.num_heads % self.resolved_num_kv_heads:
            fail("num_kv_heads", f"a divisor of num_heads={self.num_heads}", self.num_kv_heads)
        if self.remat_policy not in REMAT_POLICIES:
            fail("remat_policy", f"one of {sorted(REMAT_POLICIES)}", repr(self.remat_policy))
        if self.residual_axes is not None and len(self.residual_axes) != 3:
            fail("residual_axes", "None or 3 logical axis names for [batch, length, d_model]", self.residual_axes)
        if self.implementation not in attention_ops.IMPLEMENTATIONS:
            fail("implementation", f"one of {attention_ops.IMPLEMENTATIONS}", repr(self.implementation))
        args = self.attention_args
        if isinstance(args, dict):
            args = tuple(sorted(args.items()))
        object.__setattr__(self, "attention_args", tuple((str(k), v) for k, v in args))
        if self.attention in ATTENTION_KINDS:   # kinds registered later are checked when the layer runs
            self.kind_args()

    def kind_args(self) -> dict:
        """The attention kind's arguments: its defaults updated by `attention_args` (unknown names fail)."""
        kind = attention_kind(self.attention)
        given = dict(self.attention_args)
        unknown = sorted(set(given) - set(kind.defaults))
        if unknown:
            fail("attention_args", f"names among {sorted(kind.defaults)} for attention={self.attention!r}",
                 unknown)
        return {**kind.defaults, **given}

    def dense(self, name: str, features: int, use_bias: bool, axes) -> Dense:
        lora = name in self.lora_targets and self.lora_rank > 0
        return Dense(features, use_bias=use_bias, axes=axes, dtype=self.dtype, param_dtype=self.param_dtype,
                     name=name, lora_rank=self.lora_rank if lora else 0, lora_alpha=self.lora_alpha,
                     lora_dropout=self.lora_dropout)


# remat_policy names -> what jax.checkpoint saves for the backward pass ("none": no rematerialisation)
REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,  # save only the block's inputs; recompute everything
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs, recompute the rest
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def rope_scaling_items(scaling: dict | None) -> tuple | None:
    return None if not scaling else tuple(sorted(scaling.items()))


@dataclasses.dataclass(frozen=True)
class AttentionKind:
    """A registered attention kind. Exactly one of
    attend: (module, q, k, v, *, mask, is_causal) -> out, called inside `Attention` on the projected, rotated and
      cached q [B, L, H, d], k, v [B, Lk, Hkv, d] (the kind may create params in `module`);
    module: (config, name) -> a Linen module with `Attention`'s call signature (kinds with their own projections).
    defaults: the kind's arguments (BlockConfig.attention_args) and their default values."""
    name: str
    attend: Callable | None = None
    module: Callable | None = None
    defaults: dict = dataclasses.field(default_factory=dict)


ATTENTION_KINDS: dict[str, AttentionKind] = {}


def register_attention_kind(name: str, attend: Callable | None = None, *, module: Callable | None = None,
                            defaults: dict | None = None) -> AttentionKind:
    """Register attention kind `name` for `BlockConfig(attention=name, attention_args=...)`."""
    if (attend is None) == (module is None):
        fail("register_attention_kind", "exactly one of attend= or module=", f"attend={attend}, module={module}")
    kind = AttentionKind(name, attend, module, dict(defaults or {}))
    ATTENTION_KINDS[name] = kind
    return kind


def attention_kind(name: str) -> AttentionKind:
    if name not in ATTENTION_KINDS:
        fail("attention", f"one of {sorted(ATTENTION_KINDS)}", repr(name))
    return ATTENTION_KINDS[name]


def softmax_attend(module, q, k, v, *, mask, is_causal):
    """ATTENTION_KINDS["softmax"]: `attention_fn` if given, else jaxmm.attention.dot_product_attention."""
    cfg = module.config
    if cfg.attention_fn is not None:
        return cfg.attention_fn(q, k, v, mask=mask, is_causal=is_causal)
    return attention_ops.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                               implementation=cfg.implementation)


register_attention_kind("softmax", softmax_attend)


class Attention(nn.Module):
    """Multi-head self-attention (MHA/GQA/MQA) with optional RoPE, qkv bias, LoRA and a KV cache.

    x: [B, L, D] -> [B, L, D]. Params: q, k, v, o (Dense; flattened heads·head_dim).
    mask: boolean, broadcastable to [B, 1, L, Lk] (True = attend), e.g. a [B, Lk] padding mask.
    positions: [B, L] rotary positions (default arange(L), offset by the cache index when decoding).
    decode: use and update the "cache" collection (cached_key/value [B, max_len, Hkv, d], cache_index); the
    cache is created on the first decode call with `max_length` slots. When decoding, the caller passes the
    full [B, 1, L, max_len] mask (see jaxmm.models.llm); keys beyond the cache index are masked here too.
    """

    config: BlockConfig

    @nn.compact
    def __call__(self, x, *, mask=None, positions=None, is_causal: bool = False, deterministic: bool = True,
                 decode: bool = False, max_length: int | None = None):
        cfg = self.config
        check_rank("x", x, 3, "[batch, length, d_model]")
        b, length, _ = x.shape
        h, hkv, d = cfg.num_heads, cfg.resolved_num_kv_heads, cfg.resolved_head_dim
        qb, kb, vb = cfg.biases
        q = cfg.dense("q", h * d, qb, ("embed", "heads"))(x, deterministic).reshape(b, length, h, d)
        k = cfg.dense("k", hkv * d, kb, ("embed", "heads"))(x, deterministic).reshape(b, length, hkv, d)
        v = cfg.dense("v", hkv * d, vb, ("embed", "heads"))(x, deterministic).reshape(b, length, hkv, d)

        index = None
        if decode:
            if max_length is None and not self.has_variable("cache", "cached_key"):
                fail("max_length", "the cache size on the first decode call", None)
            ck = self.variable("cache", "cached_key", jnp.zeros, (b, max_length or 0, hkv, d), k.dtype)
            cv = self.variable("cache", "cached_value", jnp.zeros, (b, max_length or 0, hkv, d), v.dtype)
            ci = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            index = ci.value
        if positions is None:
            positions = jnp.arange(length)[None] + (0 if index is None else index)
        if cfg.rope_theta is not None:
            inv = rope.rope_frequencies(d, cfg.rope_theta, dict(cfg.rope_scaling) if cfg.rope_scaling else None)
            q, k = rope.apply_rope(q, positions, inv), rope.apply_rope(k, positions, inv)
        if decode:
            ck.value = jax.lax.dynamic_update_slice(ck.value, k.astype(ck.value.dtype), (0, index, 0, 0))
            cv.value = jax.lax.dynamic_update_slice(cv.value, v.astype(cv.value.dtype), (0, index, 0, 0))
            ci.value = index + length
            k, v = ck.value, cv.value
            filled = (jnp.arange(k.shape[1]) < index + length)[None, None, None, :]
            mask = filled if mask is None else jnp.asarray(mask) & filled
            if is_causal:  # bottom-right alignment is wrong for a partly filled cache: use absolute positions
                qpos = index + jnp.arange(length)
                mask = mask & (jnp.arange(k.shape[1])[None, :] <= qpos[:, None])[None, None]
                is_causal = False
        out = self.attend(q, k, v, mask=mask, is_causal=is_causal)
        return cfg.dense("o", cfg.d_model, cfg.out_bias, ("heads", "embed"))(out.reshape(b, length, h * d), deterministic)

    def attend(self, q, k, v, *, mask, is_causal):
        kind = attention_kind(self.config.attention)
        if kind.attend is None:
            fail("attention", f"a kind that attends inside `Attention` ({self.config.attention!r} is a module; use "
                              "`Block` or `attention_module`)", repr(self.config.attention))
        return kind.attend(self, q, k, v, mask=mask, is_causal=is_causal)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) ∘ up(x)); otherwise fc2(act(fc1(x)))."""

    config: BlockConfig

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        cfg = self.config
        if cfg.mlp == "swiglu":
            g = cfg.dense("gate", cfg.mlp_dim, cfg.mlp_bias, ("embed", "mlp"))(x, deterministic)
            u = cfg.dense("up", cfg.mlp_dim, cfg.mlp_bias, ("embed", "mlp"))(x, deterministic)
            return cfg.dense("down", cfg.d_model, cfg.mlp_bias, ("mlp", "embed"))(jax.nn.silu(g) * u, deterministic)
        if cfg.mlp not in ACTIVATIONS:
            fail("mlp", f"'swiglu' or one of {list(ACTIVATIONS)}", repr(cfg.mlp))
        h = cfg.dense("fc1", cfg.mlp_dim, cfg.mlp_bias, ("embed", "mlp"))(x, deterministic)
        return cfg.dense("fc2", cfg.d_model, cfg.mlp_bias, ("mlp", "embed"))(ACTIVATIONS[cfg.mlp](h), deterministic)


def attention_module(cfg: BlockConfig, name: str):
    """The attention layer of a block: the kind's own module, or `Attention` (which calls the kind's attend)."""
    kind = attention_kind(cfg.attention)
    cfg.kind_args()
    return kind.module(cfg, name=name) if kind.module is not None else Attention(cfg, name=name)


class Block(nn.Module):
    """Pre-norm transformer block: h = x + attn(norm(x)); out = h + mlp(norm(h)).
    Params: attn_norm, attn, mlp_norm, mlp."""

    config: BlockConfig

    @nn.compact
    def __call__(self, x, mask=None, positions=None, is_causal: bool = False, deterministic: bool = True,
                 decode: bool = False, max_length: int | None = None):
        cfg = self.config
        h = make_norm(cfg.norm, cfg.norm_eps, name="attn_norm", param_dtype=cfg.param_dtype)(x)
        x = x + attention_module(cfg, "attn")(h, mask=mask, positions=positions, is_causal=is_causal,
                                              deterministic=deterministic, decode=decode, max_length=max_length)
        h = make_norm(cfg.norm, cfg.norm_eps, name="mlp_norm", param_dtype=cfg.param_dtype)(x)
        return x + MLP(cfg, name="mlp")(h, deterministic)


class _ScanStep(Block):
    """A Block as one step of `nn.scan`: returns (carry, per-layer output) — the output only when `keep`."""

    keep: bool = False

    def __call__(self, x, mask, positions, is_causal, deterministic, decode, max_length):
        y = constrain_residual(self.config, super().__call__(x, mask, positions, is_causal, deterministic,
                                                             decode, max_length))
        return y, (y if self.keep else None)


def constrain_residual(cfg: BlockConfig, x):
    """x [B, L, D] constrained to `cfg.residual_axes` (logical names; a no-op when None or without mesh/rules)."""
    return x if cfg.residual_axes is None else nn.with_logical_constraint(x, tuple(cfg.residual_axes))


class Stack(nn.Module):
    """`num_layers` Blocks: named layers_0 … (unrolled), or one `nn.scan` named "layers" whose params carry a
    leading [num_layers] axis (`config.scan_layers`; logical axis name "layers"; jaxmm.nn.scan converts). Each
    block is rematerialised under `config.resolved_remat_policy` and the residual stream is constrained to
    `config.residual_axes` at every block boundary. return_hidden: also the list [x, block outputs...]. after_layer: an optional (i, x) -> x
    applied to block i's output (unrolled stacks only; jaxmm.models.dual_encoder injects features with it)."""

    config: BlockConfig
    num_layers: int

    @nn.compact
    def __call__(self, x, *, mask=None, positions=None, is_causal=False, deterministic=True, decode=False,
                 max_length=None, return_hidden: bool = False, after_layer=None):
        cfg = self.config
        policy = cfg.resolved_remat_policy
        block = _ScanStep if cfg.scan_layers else Block
        if policy != "none":
            # remat traces every argument it is given by keyword: pass the Python flags positionally as static
            # (argnums count `self` as 0: is_causal=4, deterministic=5, decode=6, max_length=7). Under scan the
            # loop already keeps XLA from merging the recomputation with the forward pass (prevent_cse off).
            block = nn.remat(block, policy=REMAT_POLICIES[policy], prevent_cse=not cfg.scan_layers,
                             static_argnums=(4, 5, 6, 7))
        flags = (is_causal, deterministic, decode, max_length)
        x = constrain_residual(cfg, x)
        if cfg.scan_layers and after_layer is not None:
            fail("after_layer", "scan_layers=False (a hook between layers needs the unrolled stack)", "scan_layers=True")
        if cfg.scan_layers:
            # params and the KV cache stacked on axis 0; mask, positions and the Python flags shared by every layer
            scanned = nn.scan(block, variable_axes={"params": 0, "cache": 0},
                              split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast,) * 6,
                              length=self.num_layers, metadata_params=SCAN_AXIS)
            out, ys = scanned(cfg, keep=return_hidden, name="layers")(x, mask, positions, *flags)
            return (out, [x, *ys]) if return_hidden else out
        hidden = [x]
        for i in range(self.num_layers):
            x = constrain_residual(cfg, block(cfg, name=f"layers_{i}")(x, mask, positions, *flags))
            if after_layer is not None:   # (i, x) -> x after block i (0-based): LLaVA-HR's feature injection
                x = after_layer(i, x)
            hidden.append(x)
        return (x, hidden) if return_hidden else x
