"""Sampling documents from a jaxmm LLM trained on `jaxmm.data.docsynth` sequences (DocSynthv2, PAPERS.md §8).

    from jaxmm.data.docsynth_decode import sample_documents
    ids = sample_documents(model, params, vocab, rng, num=16, max_length=96, top_p=0.9)   # unconditional
    ids = sample_documents(..., categories=[("title", "text", "figure")] * 16)     # category-conditioned
    ids = sample_documents(..., prompts=[serialize(partial_layout, vocab)[:-1]] * 16)   # completion

One KV-cache prefill of the (left-padded) prompts, then one jitted decode step per token. Before each draw the
logits outside `allowed_tokens(prefix)` (constrained=True; a host-side pure function of each row's prefix) are
removed, then top-k / nucleus filtering (`jaxmm.models.llm.filter_logits`) and temperature apply to what is left,
so every constrained sample parses. The paper's decoding settings are not public; ours are the arguments.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmm.checks import fail
from jaxmm.data.docsynth import DocVocab, allowed_tokens
from jaxmm.models.llm import filter_logits


@functools.partial(jax.jit, static_argnames=("model", "max_length"))
def _prefill(model, params, ids, mask, *, max_length):
    logits, state = model.apply({"params": params}, ids, attention_mask=mask, decode=True, max_length=max_length,
                                last_only=True, mutable=["cache"])
    return logits[:, -1], state["cache"]


@functools.partial(jax.jit, static_argnames=("model",))
def _decode(model, params, cache, tok, live):
    logits, state = model.apply({"params": params, "cache": cache}, tok[:, None], attention_mask=live[:, None],
                                decode=True, mutable=["cache"])
    return logits[:, -1], state["cache"]


@jax.jit
def _draw(logits, allowed, rng, temperature, top_k, top_p):
    neg = jnp.finfo(jnp.float32).min
    logits = jnp.where(allowed, logits.astype(jnp.float32), neg)
    logits = filter_logits(logits / temperature, top_k, top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def sample_documents(model, params, vocab: DocVocab, rng, *, num: int | None = None, max_length: int = 96,
                     with_text: bool = True, prompts: Sequence[Sequence[int]] | None = None,
                     categories: Sequence[Sequence[str]] | None = None, temperature: float = 1.0, top_k: int = 0,
                     top_p: float = 1.0, constrained: bool = True, max_words: int = 16,
                     max_elements: int = 32) -> list[list[int]]:
    """Sample `num` token sequences (each <sos> ... up to <eos>, or cut at max_length) from `model` (a
    jaxmm.models.llm.LLM over `vocab.size` tokens). prompts: completion mode, each a prefix starting with <sos>
    (default: [<sos>]); categories: category-conditioned mode, one category sequence per row (constrained only).
    temperature > 0; top_k 0 / top_p 1: off. Returns lists of ids (the prompt included)."""
    if prompts is None:
        if num is None:
            num = len(categories) if categories is not None else None
        if num is None:
            fail("num", "the number of samples (or prompts / categories)", None)
        prompts = [[vocab.sos]] * num
    if categories is not None:
        if not constrained:
            fail("constrained", "True in category-conditioned mode", constrained)
        if len(categories) != len(prompts):
            fail("categories", f"one category sequence per row ({len(prompts)})", len(categories))
    if not temperature > 0:
        fail("temperature", "a number > 0", temperature)
    rows = [list(map(int, p)) for p in prompts]
    if any(not r or r[0] != vocab.sos for r in rows):
        fail("prompts", "token lists starting with <sos>", [r[:1] for r in rows])
    lp, shortest = max(len(r) for r in rows), min(len(r) for r in rows)
    if lp >= max_length:
        fail("max_length", f"more than the longest prompt ({lp})", max_length)
    ids = np.full((len(rows), lp), vocab.pad, np.int32)
    mask = np.zeros((len(rows), lp), np.int32)
    for i, r in enumerate(rows):  # left padding
        ids[i, lp - len(r):], mask[i, lp - len(r):] = r, 1
    steps = max_length - shortest  # every row may grow to max_length tokens
    logits, cache = _prefill(model, params, jnp.asarray(ids), jnp.asarray(mask), max_length=lp + steps)
    done = np.array([vocab.eos in r for r in rows])
    knobs = (jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))
    for _ in range(steps):
        done = done | np.array([len(r) >= max_length for r in rows])
        if done.all():
            break
        if constrained:
            allowed = np.stack([allowed_tokens(r, vocab, with_text=with_text, max_length=max_length,
                                               max_words=max_words, max_elements=max_elements,
                                               categories=None if categories is None else categories[i])
                                for i, r in enumerate(rows)])
        else:
            allowed = np.ones((len(rows), vocab.size), bool)
        rng, sub = jax.random.split(rng)
        tok = np.asarray(_draw(logits, jnp.asarray(allowed), sub, *knobs))
        live = ~done  # rows already finished feed a pad that later keys do not see
        tok = np.where(live, tok, vocab.pad)
        for i in np.flatnonzero(live):
            rows[i].append(int(tok[i]))
        done = done | (tok == vocab.eos)
        logits, cache = _decode(model, params, cache, jnp.asarray(tok), jnp.asarray(live))
    return rows
