"""Llama-family decoder-only LLM (Llama 2/3, Vicuna, Mistral without sliding window, Qwen2) and `generate`.

embed -> `num_layers` pre-norm blocks (RMSNorm, RoPE attention with GQA, SwiGLU) -> final RMSNorm -> lm_head
(or the transposed embedding when tied). Params: embedder, layers_0 .. layers_{n-1}, final_norm, (lm_head).
(The embedding subtree is `embedder`, not `embed`, so that it does not shadow the `embed` method under
`flax.nnx.bridge.ToNNX`, which exposes both params and methods as attributes.)

Masks and positions:
  attention_mask [B, L] (1 = real token) marks padding, LEFT padding included (what batched generation uses);
  positions default to cumsum(attention_mask) − 1 (clipped at 0), so a left-padded prompt gets the positions HF
  gives it. Training / full forward: causal ∧ key-padding. Decoding (`decode=True`): the "cache" collection
  holds each layer's K/V ([B, max_length, Hkv, d]) and, in `decode_state`, the key-padding mask over the cache
  slots and every row's next position; each call appends its tokens and attends through a
  [B, 1, L, max_length] mask (padding remembered, causal by absolute slot, unfilled slots hidden).

HF import: `llm_config_from_hf(config.json dict)` and `from_hf(config, tensors)` (a per-family name map and
per-tensor transforms; every tensor must be used exactly once). With `scan_layers=True` the blocks are one `layers`
subtree, every leaf stacked on a leading [num_layers] axis (jaxmm.nn.scan.stack_layers / unstack_layers convert).
"""
from __future__ import annotations

import dataclasses
import functools
import re
import warnings
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmm.nn.layers import Dense, Embed, RMSNorm
from jaxmm.nn.scan import stack_layers
from jaxmm.nn.transformer import BlockConfig, Stack, rope_scaling_items
from jaxmm.checks import check_positive, check_rank, check_shape, fail


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    vocab_size: int
    num_layers: int
    d_model: int
    num_heads: int
    mlp_dim: int
    num_kv_heads: int | None = None  # None: MHA
    head_dim: int | None = None  # None: d_model // num_heads
    rope_theta: float = 10000.0
    rope_scaling: tuple | None = None  # HF rope_scaling dict as sorted items (see rope_scaling_items)
    norm_eps: float = 1e-6
    qkv_bias: bool = False  # Qwen2: True
    out_bias: bool = False  # Llama attention_bias also biases o_proj
    mlp_bias: bool = False
    tie_embeddings: bool = False
    sliding_window: int | None = None  # Mistral: only None or >= the lengths used is supported (checked)
    attention: str = "softmax"  # an attention kind (jaxmm.nn.ATTENTION_KINDS)
    attention_args: tuple = ()  # that kind's arguments as (name, value) pairs, e.g. (("length", 10),)
    attention_fn: Callable | None = None
    implementation: str | None = None
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q", "v")
    block_extra: tuple = ()  # further BlockConfig fields as (name, value) pairs (e.g. implementation)
    dtype: Any = None  # compute dtype (None: the params' / embeddings' dtype)
    param_dtype: Any = jnp.float32  # storage dtype of every param (e.g. jnp.bfloat16 with dtype=jnp.float32)
    remat: bool = False  # = remat_policy "full"
    remat_policy: str = "none"  # jaxmm.nn.REMAT_POLICIES: "none" | "full" | "dots_saveable" | ...
    scan_layers: bool = False  # blocks as one nn.scan: params under `layers`, stacked (jaxmm.nn.scan converts)
    residual_axes: tuple | None = None  # logical sharding names of the residual stream (BlockConfig.residual_axes)

    def block(self) -> BlockConfig:
        return BlockConfig(d_model=self.d_model, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                           num_kv_heads=self.num_kv_heads, head_dim=self.head_dim, mlp="swiglu", norm="rms",
                           norm_eps=self.norm_eps, qkv_bias=self.qkv_bias, out_bias=self.out_bias,
                           mlp_bias=self.mlp_bias, rope_theta=self.rope_theta, rope_scaling=self.rope_scaling,
                           attention=self.attention, attention_args=self.attention_args,
                           attention_fn=self.attention_fn, implementation=self.implementation,
                           lora_rank=self.lora_rank, lora_alpha=self.lora_alpha,
                           lora_dropout=self.lora_dropout, lora_targets=self.lora_targets, dtype=self.dtype,
                           param_dtype=self.param_dtype, remat=self.remat, remat_policy=self.remat_policy,
                           scan_layers=self.scan_layers, residual_axes=self.residual_axes,
                           **dict(self.block_extra))


def tiny_llm_config(vocab_size: int, **overrides) -> LLMConfig:
    """A small GQA Llama (2 layers, width 64, 4 heads / 2 kv heads, tied embeddings) for the embedded models."""
    base = dict(vocab_size=vocab_size, num_layers=2, d_model=64, num_heads=4, num_kv_heads=2, mlp_dim=128,
                tie_embeddings=True)
    base.update(overrides)
    return LLMConfig(**base)


class _DecodeState(nn.Module):
    """Decoding bookkeeping in the "cache" collection: key_mask [B, max_length] (which cache slots hold real
    tokens), next_position [B] and index (slots filled). Returns (key_mask after this call, positions, index)."""

    @nn.compact
    def __call__(self, new_mask, positions, max_length, length: int):
        b = new_mask.shape[0]
        if max_length is None and not self.has_variable("cache", "key_mask"):
            fail("max_length", "the cache size on the first decode call", None)
        key_mask = self.variable("cache", "key_mask", jnp.zeros, (b, max_length or 0), jnp.bool_)
        next_pos = self.variable("cache", "next_position", jnp.zeros, (b,), jnp.int32)
        idx = self.variable("cache", "index", lambda: jnp.array(0, jnp.int32))
        index, slots = idx.value, key_mask.value.shape[1]
        if new_mask.shape[1] == slots and length != slots:  # the full mask over the cache slots
            full = new_mask.astype(jnp.bool_)
            new_mask = jax.lax.dynamic_slice_in_dim(full, index, length, axis=1)
        else:
            check_shape("attention_mask", new_mask, (b, length), "[batch, new tokens] or [batch, max_length]")
            full = jax.lax.dynamic_update_slice(key_mask.value, new_mask.astype(jnp.bool_), (0, index))
        if positions is None:
            positions = next_pos.value[:, None] + jnp.cumsum(new_mask.astype(jnp.int32), axis=1) - 1
            positions = jnp.maximum(positions, 0)
        if not self.is_initializing():
            key_mask.value = full
            next_pos.value = next_pos.value + jnp.sum(new_mask.astype(jnp.int32), axis=1)
            idx.value = index + length
        return full, positions, index


class LLM(nn.Module):
    """Decoder-only LM. `__call__` -> float32 logits [B, L, vocab] (with `return_hidden`: (logits, hidden) where
    hidden is HF's `hidden_states`: the embeddings, each block's output, and for the last block its final-normed
    output — num_layers + 1 arrays [B, L, D])."""

    config: LLMConfig

    def setup(self):
        cfg = self.config
        self.token_embed = Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                 name="embedder")
        self.stack = Stack(cfg.block(), cfg.num_layers)
        nn.share_scope(self, self.stack)  # blocks appear as layers_i (scanned: layers) at the top of the param tree
        self.final_norm = RMSNorm(cfg.norm_eps, param_dtype=cfg.param_dtype)
        if not cfg.tie_embeddings:
            self.lm_head = Dense(cfg.vocab_size, axes=("embed", "vocab"), dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.decode_state = _DecodeState()

    def embed(self, ids):
        """ids [B, L] int -> token embeddings [B, L, D]."""
        check_rank("ids", ids, 2, "[batch, length]")
        return self.token_embed(ids)

    def logits(self, h):
        """Final hidden states [B, L, D] (already normed) -> float32 logits [B, L, vocab]."""
        out = self.token_embed.attend(h) if self.config.tie_embeddings else self.lm_head(h)
        return out.astype(jnp.float32)

    def __call__(self, input_ids=None, *, inputs_embeds=None, attention_mask=None, positions=None,
                 decode: bool = False, max_length: int | None = None, deterministic: bool = True,
                 return_hidden: bool = False, last_only: bool = False):
        """input_ids [B, L] int, or inputs_embeds [B, L, D]; attention_mask [B, L] (1 = real token; when decoding:
        the new tokens' [B, L] mask or the whole [B, max_length] mask over the cache slots); positions [B, L]
        (default cumsum(mask) − 1, continuing from the cache when decoding). decode: use / fill the "cache"
        collection (pass mutable=["cache"]; `max_length` slots on the first call). last_only: logits of the last
        position only, [B, 1, vocab] (a prefill needs no more). Returns float32 logits [B, L, vocab]
        (with return_hidden: (logits, hidden states) as in the class docstring)."""
        cfg = self.config
        if (input_ids is None) == (inputs_embeds is None):
            fail("input_ids", "exactly one of input_ids and inputs_embeds", "both" if input_ids is not None
                 else "neither")
        if input_ids is not None:
            check_rank("input_ids", input_ids, 2, "[batch, length]")
            x = self.token_embed(input_ids)
        else:
            check_rank("inputs_embeds", inputs_embeds, 3, "[batch, length, d_model]")
            check_shape("inputs_embeds", inputs_embeds, (None, None, cfg.d_model), "[batch, length, d_model]")
            x = inputs_embeds.astype(cfg.dtype) if cfg.dtype else inputs_embeds
        b, length = x.shape[:2]
        if positions is not None:
            check_shape("positions", positions, (b, length), "[batch, length]")
        if attention_mask is not None:
            check_rank("attention_mask", attention_mask, 2, "[batch, length] (1 = real token)")

        if decode:
            if max_length is not None:
                check_positive("max_length", max_length)
                self._check_window(max_length)
            new = jnp.ones((b, length), jnp.bool_) if attention_mask is None else attention_mask
            key_mask, positions, index = self.decode_state(new, positions, max_length, length)
            slots = key_mask.shape[1]
            causal = jnp.arange(slots)[None, :] <= (index + jnp.arange(length))[:, None]  # [L, slots]
            mask = key_mask[:, None, None, :] & causal[None, None]
            is_causal = False
        else:
            self._check_window(length)
            if attention_mask is None:
                mask = None
                positions = jnp.broadcast_to(jnp.arange(length), (b, length)) if positions is None else positions
            else:
                check_shape("attention_mask", attention_mask, (b, length), "[batch, length] (1 = real token)")
                mask = attention_mask.astype(jnp.bool_)[:, None, None, :]
                if positions is None:
                    positions = jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=1) - 1, 0)
            is_causal = True

        out = self.stack(x, mask=mask, positions=positions, is_causal=is_causal, deterministic=deterministic,
                         decode=decode, max_length=max_length, return_hidden=return_hidden)
        h, hidden = out if return_hidden else (out, None)  # (a scanned stack stacks the hidden states only if asked)
        h = self.final_norm(h)
        logits = self.logits(h[:, -1:] if last_only else h)
        if return_hidden:
            return logits, [*hidden[:-1], h]
        return logits

    def _check_window(self, length: int):
        w = self.config.sliding_window
        if w is not None and length > w:
            fail("sliding_window", f"None or >= the sequence/cache length {length} (sliding-window attention is "
                 "not implemented)", w)


# ---------------------------------------------------------------------------------------------- generation
def filter_logits(logits, top_k=0, top_p=1.0):
    """Set to the float32 minimum every logit [B, V] outside the top_k largest (0: off) and then outside the
    smallest set of most likely tokens whose probability reaches top_p (1: off), as HF's TopK/TopP warpers do.
    top_k and top_p may be traced (one compile serves every setting); one sort, skipped when both are off."""
    logits = logits.astype(jnp.float32)
    neg = jnp.finfo(jnp.float32).min
    v = logits.shape[-1]
    top_k, top_p = jnp.asarray(top_k, jnp.int32), jnp.asarray(top_p, jnp.float32)

    def apply(logits):
        desc = -jnp.sort(-logits, axis=-1)
        k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
        in_k = jnp.arange(v) < k
        probs = jax.nn.softmax(jnp.where(in_k, desc, neg), axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more likely tokens
        keep = in_k & ((before < top_p) | (top_p >= 1.0))  # always keeps the most likely token
        n_keep = jnp.sum(keep, axis=-1, keepdims=True)
        threshold = jnp.take_along_axis(desc, n_keep - 1, axis=-1)
        return jnp.where(logits < threshold, neg, logits)

    return jax.lax.cond((top_k > 0) | (top_p < 1.0), apply, lambda x: x, logits)


def apply_repetition_penalty(logits, seen, penalty):
    """HF's RepetitionPenaltyLogitsProcessor (CTRL, Keskar et al. 2019): for every token already in the sequence
    (`seen` [B, V] bool: the prompt's real tokens and those generated so far) a positive logit is divided by
    `penalty` and a negative one multiplied by it; others unchanged. penalty 1: identity (exactly); > 1
    discourages repeats, < 1 encourages them. logits [B, V] -> float32 [B, V]; penalty may be traced.
    One difference from transformers: HF looks at every id of `input_ids`, left padding included, so it also
    penalises the pad id of a left-padded batch; here padding (mask 0) does not count as seen."""
    logits = logits.astype(jnp.float32)
    penalty = jnp.asarray(penalty, jnp.float32)
    return jnp.where(seen, jnp.where(logits < 0, logits * penalty, logits / penalty), logits)


def process_logits(logits, seen=None, *, repetition_penalty=1.0, temperature=1.0, top_k=0, top_p=1.0):
    """The scores a sampler draws from, as transformers' generate builds them for do_sample=True: repetition
    penalty, then temperature, top-k, top-p (HF's processor order); filtered tokens get the float32 minimum (HF:
    -inf). seen [B, V] bool (None: nothing seen). Returns float32 [B, V]."""
    logits = logits.astype(jnp.float32)
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, repetition_penalty)
    return filter_logits(logits / jnp.asarray(temperature, jnp.float32), top_k, top_p)


def sample_logits(logits, rng, *, temperature=0.0, top_k=0, top_p=1.0):
    """logits [B, V] -> token ids [B]. temperature == 0 (a Python number): argmax; otherwise a draw from
    softmax(logits / temperature) restricted by `filter_logits(top_k, top_p)`. temperature, top_k, top_p may be
    traced when sampling."""
    logits = logits.astype(jnp.float32)
    if isinstance(temperature, (int, float)) and temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _prefill(model, params, prompt_ids, prompt_mask, prefill_embeds, max_length):
    """Fill the cache with the prompt. Returns (last logits [B, V], cache, seen [B, V]: the prompt's real ids)."""
    b = prompt_mask.shape[0]
    prompt = {"inputs_embeds": prefill_embeds} if prefill_embeds is not None else {"input_ids": prompt_ids}
    logits, state = model.apply({"params": params}, **prompt, attention_mask=prompt_mask, decode=True,
                                max_length=max_length, last_only=True, mutable=["cache"])
    seen = jnp.zeros((b, model.config.vocab_size), jnp.bool_)
    if prompt_ids is not None:
        seen = seen.at[jnp.arange(b)[:, None], prompt_ids].max(prompt_mask > 0)
    return logits[:, -1], state["cache"], seen


def _step(model, params, cache, last, seen, done, rng, knobs, *, greedy, eos_ids, pad_id):
    """One decoding step: pick each row's token from `last` (penalty, then greedy or sampling), pad finished rows,
    feed the tokens. Returns (tokens [B], cache, next logits, seen, done)."""
    temperature, top_k, top_p, penalty = knobs
    logits = apply_repetition_penalty(last, seen, penalty)
    tok = sample_logits(logits, rng, temperature=0.0 if greedy else temperature, top_k=top_k, top_p=top_p)
    tok = jnp.where(done, pad_id, tok)
    seen = seen.at[jnp.arange(tok.shape[0]), tok].set(True)
    new_mask = ~done  # tokens after a row's EOS are pads: hidden from later keys
    if eos_ids:
        done = done | jnp.isin(tok, jnp.asarray(eos_ids, jnp.int32))
    logits, state = model.apply({"params": params, "cache": cache}, tok[:, None], attention_mask=new_mask[:, None],
                                decode=True, mutable=["cache"])
    return tok, state["cache"], logits[:, -1], seen, done


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "greedy", "eos_ids", "pad_id"))
def _generate(model, params, prompt_ids, prompt_mask, prefill_embeds, rng, knobs, *, max_new_tokens, greedy,
              eos_ids, pad_id):
    b, lp = prompt_mask.shape
    last, cache, seen = _prefill(model, params, prompt_ids, prompt_mask, prefill_embeds, lp + max_new_tokens)
    out = jnp.full((b, max_new_tokens), pad_id, jnp.int32)

    def cond(carry):
        i, done = carry[0], carry[5]
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, cache, last, seen, out, done, rng = carry
        rng, sub = jax.random.split(rng)
        tok, cache, last, seen, done = _step(model, params, cache, last, seen, done, sub, knobs, greedy=greedy,
                                             eos_ids=eos_ids, pad_id=pad_id)
        out = jax.lax.dynamic_update_slice(out, tok[:, None], (0, i))
        return i + 1, cache, last, seen, out, done, rng

    carry = (jnp.array(0, jnp.int32), cache, last, seen, out, jnp.zeros((b,), jnp.bool_), rng)
    return jax.lax.while_loop(cond, body, carry)[4]


def _eos_tuple(eos_id) -> tuple[int, ...]:
    if eos_id is None:
        return ()
    ids = (eos_id,) if isinstance(eos_id, (int, np.integer)) else tuple(eos_id)
    if not all(isinstance(i, (int, np.integer)) and i >= 0 for i in ids):
        fail("eos_id", "None, a token id >= 0 or a sequence of them", repr(eos_id))
    return tuple(int(i) for i in ids)


def _check_generate_args(model, prompt_ids, prompt_mask, prefill_embeds, max_new_tokens, rng, temperature,
                         top_k, top_p, repetition_penalty):
    check_positive("max_new_tokens", max_new_tokens)
    if prefill_embeds is None:
        check_rank("prompt_ids", prompt_ids, 2, "[batch, prompt_length]")
        shape = prompt_ids.shape
    else:
        check_rank("prefill_embeds", prefill_embeds, 3, "[batch, prompt_length, d_model]")
        shape = prefill_embeds.shape[:2]
        if prompt_ids is not None:
            check_shape("prompt_ids", prompt_ids, shape, "[batch, prompt_length] like prefill_embeds")
    prompt_mask = jnp.ones(shape, jnp.int32) if prompt_mask is None else jnp.asarray(prompt_mask)
    check_shape("prompt_mask", prompt_mask, shape, "[batch, prompt_length] (1 = real token)")
    if temperature < 0:
        fail("temperature", "a number >= 0", temperature)
    if not 0.0 < top_p <= 1.0:
        fail("top_p", "a number in (0, 1]", top_p)
    if temperature > 0 and rng is None:
        fail("rng", "a PRNG key when temperature > 0", None)
    if top_k < 0:
        fail("top_k", "an integer >= 0 (0: off)", top_k)
    if not repetition_penalty > 0:
        fail("repetition_penalty", "a number > 0 (1: off)", repetition_penalty)
    knobs = (jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p), jnp.float32(repetition_penalty))
    ids = None if prompt_ids is None else jnp.asarray(prompt_ids, jnp.int32)
    return ids, prompt_mask, jax.random.key(0) if rng is None else rng, knobs


def generate(model: LLM, params, prompt_ids, prompt_mask=None, *, max_new_tokens: int, rng=None,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
             eos_id=None, pad_id: int = 0, prefill_embeds=None, return_sequences: bool = False):
    """Autoregressive decoding with a KV cache, one jit for prefill and the whole loop (`lax.while_loop`).

    prompt_ids [B, Lp] int, LEFT-padded; prompt_mask [B, Lp] (1 = real token; default all ones).
    prefill_embeds [B, Lp, D]: prefill from these embeddings instead of prompt_ids (an MLLM's spliced
      multimodal sequence; prompt_ids may then be None, and then only generated tokens count for the repetition
      penalty); decoding continues from token ids.
    temperature 0: greedy; else sampling with temperature, top_k (0: off) and top_p (1: off); rng required.
    repetition_penalty: HF's (see `apply_repetition_penalty`), over the prompt's real tokens and the generated
      ones, applied before greedy / sampling as in transformers. temperature, top_k, top_p and the penalty are
      traced: changing them does not recompile (greedy vs sampling does).
    eos_id: None, one id or a sequence of ids (generation_config.json's list): a row stops after emitting any;
      later slots hold pad_id; the loop ends when every row is done.
    `jaxmm.hf.generation_kwargs(folder, prompt_length)` turns a folder's generation_config.json into these
    arguments. Returns new ids [B, max_new_tokens] (with return_sequences: (new ids, [B, Lp + max_new_tokens]
    prompt + new)). Token for token equal to transformers' greedy `generate` (tests/hf/test_generate.py).
    """
    ids, prompt_mask, rng, knobs = _check_generate_args(model, prompt_ids, prompt_mask, prefill_embeds,
                                                        max_new_tokens, rng, temperature, top_k, top_p,
                                                        repetition_penalty)
    new = _generate(model, params, ids, prompt_mask, prefill_embeds, rng, knobs, max_new_tokens=int(max_new_tokens),
                    greedy=temperature == 0, eos_ids=_eos_tuple(eos_id), pad_id=int(pad_id))
    if return_sequences:
        if prompt_ids is None:
            fail("prompt_ids", "the prompt ids when return_sequences=True", None)
        return new, jnp.concatenate([ids, new], axis=1)
    return new


@functools.partial(jax.jit, static_argnames=("model", "max_length"))
def _prefill_jit(model, params, prompt_ids, prompt_mask, prefill_embeds, *, max_length):
    return _prefill(model, params, prompt_ids, prompt_mask, prefill_embeds, max_length)


_step_jit = jax.jit(_step, static_argnames=("model", "greedy", "eos_ids", "pad_id"))


def generate_stream(model: LLM, params, prompt_ids, prompt_mask=None, *, max_new_tokens: int, rng=None,
                    temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                    eos_id=None, pad_id: int = 0, prefill_embeds=None):
    """`generate` one step at a time: yields each step's tokens as a NumPy int32 array [B] (finished rows give
    pad_id) until every row has emitted an EOS or max_new_tokens steps ran. Same arguments and the same tokens
    as `generate` (the same step function; a jit per prefill and per step instead of one for the whole loop),
    for printing text as it is produced."""
    ids, prompt_mask, rng, knobs = _check_generate_args(model, prompt_ids, prompt_mask, prefill_embeds,
                                                        max_new_tokens, rng, temperature, top_k, top_p,
                                                        repetition_penalty)
    last, cache, seen = _prefill_jit(model, params, ids, prompt_mask, prefill_embeds,
                                     max_length=prompt_mask.shape[1] + int(max_new_tokens))
    done = jnp.zeros((prompt_mask.shape[0],), jnp.bool_)
    for _ in range(int(max_new_tokens)):
        rng, sub = jax.random.split(rng)
        tok, cache, last, seen, done = _step_jit(model, params, cache, last, seen, done, sub, knobs,
                                                 greedy=temperature == 0, eos_ids=_eos_tuple(eos_id),
                                                 pad_id=int(pad_id))
        yield np.asarray(tok)
        if bool(jnp.all(done)):
            return


# ---------------------------------------------------------------------------------------------- HF import
HF_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


def _hf_rope(config: dict) -> tuple[float, dict | None]:
    """rope_theta and scaling from transformers-5 `rope_parameters` or the older rope_theta + rope_scaling."""
    params = config.get("rope_parameters")
    if params:
        params = dict(params)
        theta = float(params.pop("rope_theta", config.get("rope_theta", 10000.0)))
        scaling = params
    else:
        theta = float(config.get("rope_theta", 10000.0))
        scaling = dict(config["rope_scaling"]) if config.get("rope_scaling") else None
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind == "default":
            return theta, None
        if kind not in ("linear", "llama3"):
            fail("rope_scaling", "rope_type 'default', 'linear' or 'llama3'", repr(kind))
        scaling = {k: v for k, v in scaling.items() if k != "type"} | {"rope_type": kind}
    return theta, scaling


def llm_config_from_hf(config: dict, **overrides) -> LLMConfig:
    """LLMConfig from a HF config.json dict of LlamaForCausalLM (Llama 2/3, Vicuna), MistralForCausalLM or
    Qwen2ForCausalLM. overrides: further LLMConfig fields (dtype, lora_rank, remat, ...)."""
    arch = (config.get("architectures") or [None])[0]
    if arch not in HF_ARCHITECTURES:
        fail("config.architectures[0]", f"one of {HF_ARCHITECTURES}", repr(arch))
    act = config.get("hidden_act", "silu")
    if act != "silu":
        fail("config.hidden_act", "'silu' (SwiGLU)", repr(act))
    theta, scaling = _hf_rope(config)
    heads = int(config["num_attention_heads"])
    window = None
    if arch == "MistralForCausalLM":
        window = config.get("sliding_window")
        if window is not None and window < config.get("max_position_embeddings", 0):
            warnings.warn(f"Mistral sliding_window={window} < max_position_embeddings: sequences longer than the "
                          "window are refused (sliding-window attention is not implemented)", stacklevel=2)
    elif arch == "Qwen2ForCausalLM" and config.get("use_sliding_window"):
        fail("config.use_sliding_window", "False (sliding-window attention is not implemented)", True)
    attn_bias = bool(config.get("attention_bias", False))
    base = dict(
        vocab_size=int(config["vocab_size"]), num_layers=int(config["num_hidden_layers"]),
        d_model=int(config["hidden_size"]), num_heads=heads,
        num_kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
        mlp_dim=int(config["intermediate_size"]), rope_theta=theta, rope_scaling=rope_scaling_items(scaling),
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        qkv_bias=True if arch == "Qwen2ForCausalLM" else attn_bias, out_bias=attn_bias,
        mlp_bias=bool(config.get("mlp_bias", False)),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)), sliding_window=window)
    base.update(overrides)
    return LLMConfig(**base)


def _hf_name_map(cfg: LLMConfig) -> dict[str, tuple[tuple[str, ...], str]]:
    """HF tensor name -> (param path, transform); transform "T" turns a Linear weight [out, in] into [in, out]."""
    m = {"model.embed_tokens.weight": (("embedder", "embedding"), ""),
         "model.norm.weight": (("final_norm", "scale"), "")}
    if not cfg.tie_embeddings:
        m["lm_head.weight"] = (("lm_head", "kernel"), "T")
    biases = {"q": cfg.qkv_bias, "k": cfg.qkv_bias, "v": cfg.qkv_bias, "o": cfg.out_bias}
    for i in range(cfg.num_layers):
        hf, jx = f"model.layers.{i}.", f"layers_{i}"
        m[hf + "input_layernorm.weight"] = ((jx, "attn_norm", "scale"), "")
        m[hf + "post_attention_layernorm.weight"] = ((jx, "mlp_norm", "scale"), "")
        for p in "qkvo":
            m[hf + f"self_attn.{p}_proj.weight"] = ((jx, "attn", p, "kernel"), "T")
            if biases[p]:
                m[hf + f"self_attn.{p}_proj.bias"] = ((jx, "attn", p, "bias"), "")
        for p in ("gate", "up", "down"):
            m[hf + f"mlp.{p}_proj.weight"] = ((jx, "mlp", p, "kernel"), "T")
            if cfg.mlp_bias:
                m[hf + f"mlp.{p}_proj.bias"] = ((jx, "mlp", p, "bias"), "")
    return m


def convert_tensors(name_map: dict, tensors: dict, *, ignore: Callable[[str], bool] = lambda n: False,
                    expected_shapes: dict | None = None, dtype=jnp.float32) -> dict:
    """Apply a name map {hf name: (param path, transform)} to `tensors` {hf name: np.ndarray}; every tensor must be
    mapped (or ignored) and every mapped name present. transform: "" (as is), "T" (matrix transpose), "conv"
    (torch [out, in, kh, kw] -> flax [kh, kw, in, out]). Returns the nested param dict of jnp arrays in `dtype`."""
    unmapped = sorted(n for n in tensors if n not in name_map and not ignore(n))
    missing = sorted(n for n in name_map if n not in tensors)
    if unmapped or missing:
        fail("tensors", "exactly the checkpoint tensors of this architecture",
             f"unmapped tensors {unmapped} and missing tensors {missing}")
    params: dict = {}
    for name, (path, transform) in name_map.items():
        a = np.asarray(tensors[name])
        if transform == "T":
            a = a.T
        elif transform == "conv":
            a = a.transpose(2, 3, 1, 0)
        elif transform:
            raise ValueError(f"unknown transform {transform!r}")
        if expected_shapes is not None and tuple(expected_shapes[path]) != a.shape:
            fail(f"tensors[{name!r}]", f"shape {tuple(expected_shapes[path])} after transform '{transform}' for "
                 f"{'/'.join(path)}", f"shape {a.shape}")
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = jnp.asarray(a, dtype=dtype)
    return params


def param_shapes(module: nn.Module, *args, **kwargs) -> dict:
    """{param path tuple: shape} of module.init(*args) without computing anything."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))["params"]
    flat = jax.tree_util.tree_flatten_with_path(nn.unbox(shapes))[0]
    return {tuple(k.key for k in path): leaf.shape for path, leaf in flat}


def from_hf(config: dict, tensors: dict, dtype=jnp.float32, **overrides) -> tuple[LLM, dict]:
    """(LLM, params) from a HF config.json dict and its tensors {name: np.ndarray} (see jaxmm.hf.io).

    Linear weights [out, in] become kernels [in, out]; a tied checkpoint's lm_head.weight (if stored) must equal
    the embedding. Raises ValueError listing unmapped and missing tensor names, or a tensor of the wrong shape."""
    cfg = llm_config_from_hf(config, **overrides)
    tensors = dict(tensors)
    if cfg.tie_embeddings and "lm_head.weight" in tensors:
        head = tensors.pop("lm_head.weight")
        if not np.array_equal(head, tensors.get("model.embed_tokens.weight")):
            fail("tensors['lm_head.weight']", "the embedding (tie_word_embeddings=True)", "a different tensor")
    model = LLM(cfg)
    # the name map addresses layers_i: convert into the unrolled layout, then stack it for a scanned model
    shapes = param_shapes(LLM(dataclasses.replace(cfg, scan_layers=False)), jnp.zeros((1, 1), jnp.int32))
    params = convert_tensors(_hf_name_map(cfg), tensors, ignore=lambda n: bool(re.search(r"rotary_emb\.inv_freq$", n)),
                             expected_shapes=shapes, dtype=dtype)
    params = add_fresh_lora(params, shapes, dtype=dtype)
    return model, (stack_layers(params) if cfg.scan_layers else params)


def add_fresh_lora(params: dict, shapes: dict, *, dtype=jnp.float32, seed: int = 0) -> dict:
    """Give imported params the LoRA pairs their module declares (`shapes` from param_shapes) as Dense
    initialises them: lora_a ~ N(0, 1/rank), lora_b = 0, so the model still computes the checkpoint's function.
    Any other param the checkpoint lacks is an error naming it."""
    mapped = {tuple(k.key for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    absent = sorted(p for p in shapes if p not in mapped)
    if any(p[-1] not in ("lora_a", "lora_b") for p in absent):
        fail("params", "every non-LoRA param of the module in the checkpoint",
             f"no tensor for {['/'.join(p) for p in absent if p[-1] not in ('lora_a', 'lora_b')]}")
    key = jax.random.key(seed)
    for i, path in enumerate(absent):
        shape = shapes[path]
        if path[-1] == "lora_a":
            value = jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32) * shape[1] ** -0.5
        else:
            value = jnp.zeros(shape, jnp.float32)
        node = params
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value.astype(dtype)
    return params
