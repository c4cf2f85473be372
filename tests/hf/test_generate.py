"""generate() against transformers: greedy tokens (repetition penalty, several EOS ids, left padding, the folder's
generation_config.json), the logits processors' outputs on the same scores, and the sampler's distribution.
References: tests/fixtures/hf/qwen2_chat/generate_reference.npz (tests/fixtures/make_hf_fixtures_chat.py)."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.hf import from_pretrained
from jaxmm.hf.generation import generation_kwargs, read_generation_config
from jaxmm.models.llm import apply_repetition_penalty, generate, generate_stream, process_logits, sample_logits

HF = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "hf")
CHAT = os.path.join(HF, "qwen2_chat")


@functools.cache
def ref():
    return dict(np.load(os.path.join(CHAT, "generate_reference.npz")))


@functools.cache
def model():
    return from_pretrained(CHAT)


def check_hf_tokens(new, hf_new, pad):
    """HF stops when every row is done (shorter output); jaxmm keeps max_new_tokens slots, pads after EOS."""
    new = np.asarray(new)
    k = hf_new.shape[1]
    np.testing.assert_array_equal(new[:, :k], hf_new)
    assert np.all(new[:, k:] == pad)


def test_greedy_with_repetition_penalty_and_eos_matches_hf():
    r, (m, params) = ref(), model()
    assert r["a_margin"] > 1e-2
    kw = dict(max_new_tokens=16, eos_id=tuple(r["a_eos"]), pad_id=296)
    new = generate(m, params, jnp.asarray(r["a_prompt"]), jnp.asarray(r["a_mask"]),
                   repetition_penalty=float(r["a_penalty"]), **kw)
    check_hf_tokens(new, r["a_new"], 296)
    assert r["a_new"].shape[1] < 16 and (r["a_new"][1, 1:] == 296).all()  # both rows stopped, at different steps
    # the penalty is not inert: without it the tokens differ
    plain = generate(m, params, jnp.asarray(r["a_prompt"]), jnp.asarray(r["a_mask"]), **kw)
    assert not np.array_equal(np.asarray(plain)[:, :r["a_new"].shape[1]], r["a_new"])


def test_left_padded_greedy_with_two_eos_ids_matches_hf():
    r, (m, params) = ref(), model()
    assert r["b_margin"] > 1e-2 and not r["b_mask"].all()
    new = generate(m, params, jnp.asarray(r["b_prompt"]), jnp.asarray(r["b_mask"]), max_new_tokens=16,
                   eos_id=[int(e) for e in r["b_eos"]], pad_id=296)
    check_hf_tokens(new, r["b_new"], 296)
    # with only the first EOS id, row 1 runs on past HF's stop
    one = np.asarray(generate(m, params, jnp.asarray(r["b_prompt"]), jnp.asarray(r["b_mask"]), max_new_tokens=16,
                              eos_id=int(r["b_eos"][0]), pad_id=296))
    assert one.shape[1] > r["b_new"].shape[1] and one[1, r["b_new"].shape[1]] != 296


def test_folder_generation_config_greedy_matches_hf_generate():
    r, (m, params) = ref(), model()
    kw = generation_kwargs(CHAT, prompt_length=r["c_prompt"].shape[1], do_sample=False)
    assert kw == {"max_new_tokens": 20, "temperature": 0.0, "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.05,
                  "eos_id": (298, 296), "pad_id": 296}
    new = generate(m, params, jnp.asarray(r["c_prompt"]), jnp.asarray(r["c_mask"]), **kw)
    check_hf_tokens(new, r["c_new"], 296)


def test_generation_kwargs_follow_hf_defaults_and_length_rules(tmp_path):
    kw = generation_kwargs(CHAT, prompt_length=10)  # do_sample true in the file
    assert kw["temperature"] == 0.7 and kw["top_k"] == 20 and kw["top_p"] == 0.8
    # no generation_config.json: config.json's eos / pad, HF's defaults (greedy, 20 new tokens)
    assert read_generation_config(os.path.join(HF, "llama_mha")) == {"bos_token_id": 1, "eos_token_id": 2,
                                                                     "pad_token_id": 0}
    kw = generation_kwargs(os.path.join(HF, "llama_mha"), prompt_length=7)
    assert kw == {"max_new_tokens": 20, "temperature": 0.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0,
                  "eos_id": (2,), "pad_id": 0}
    assert generation_kwargs(os.path.join(HF, "llama_mha"), 120)["max_new_tokens"] == 8  # max_position 128
    assert generation_kwargs({"max_length": 30}, 12)["max_new_tokens"] == 18
    assert generation_kwargs({"max_length": 30, "max_new_tokens": 5}, 12)["max_new_tokens"] == 5
    assert generation_kwargs({"eos_token_id": [5, 6]}, 3)["pad_id"] == 5
    with pytest.raises(ValueError, match="max_length"):
        generation_kwargs({"max_length": 10}, 12)
    with pytest.raises(ValueError, match="overrides"):
        generation_kwargs({}, 3, beams=2)
    with pytest.raises(ValueError, match="temperature"):
        generation_kwargs({"do_sample": True, "temperature": 0.0}, 3)


PROCESSORS = {  # fixture key -> jaxmm call on (scores, seen)
    "rep": dict(repetition_penalty=1.3), "rep_reward": dict(repetition_penalty=0.7), "temp": dict(temperature=0.7),
    "topk": dict(top_k=20), "topp": dict(top_p=0.8), "topp_only": dict(temperature=1.5, top_p=0.5),
    "all": dict(repetition_penalty=1.3, temperature=0.7, top_k=20, top_p=0.8),
}


def seen_mask(ids, vocab):
    seen = np.zeros((ids.shape[0], vocab), bool)
    np.put_along_axis(seen, ids, True, axis=1)
    return jnp.asarray(seen)


@pytest.mark.parametrize("name", sorted(PROCESSORS))
def test_processed_scores_equal_hf_logits_processors(name):
    r = ref()
    scores = jnp.asarray(r["d_scores"])
    out = np.asarray(process_logits(scores, seen_mask(r["d_input_ids"], scores.shape[1]), **PROCESSORS[name]))
    hf = r[f"d_{name}"]
    kept = np.isfinite(hf)
    np.testing.assert_array_equal(out > np.finfo(np.float32).min, kept)  # the same tokens filtered
    np.testing.assert_allclose(out[kept], hf[kept], rtol=1e-6, atol=1e-6)
    if name.startswith("rep"):  # penalised entries really changed
        assert np.abs(hf - r["d_scores"]).max() > 0.1


def test_sampler_draws_from_hf_processed_distribution():
    """20000 draws from one row with temperature 0.7, top-k 20, top-p 0.8 after penalty 1.3: frequencies match
    softmax of transformers' processed scores within 5 binomial standard deviations."""
    r = ref()
    row, n = 1, 20000
    seen = seen_mask(r["d_input_ids"], 300)[row:row + 1]
    logits = apply_repetition_penalty(jnp.asarray(r["d_scores"][row:row + 1]), seen, 1.3)
    toks = np.asarray(sample_logits(jnp.tile(logits, (n, 1)), jax.random.key(3), temperature=0.7, top_k=20,
                                    top_p=0.8))
    hf = r["d_all"][row].astype(np.float64)
    p = np.exp(hf - hf[np.isfinite(hf)].max())
    p = np.where(np.isfinite(hf), p, 0.0)
    p /= p.sum()
    freq = np.bincount(toks, minlength=300) / n
    assert set(np.unique(toks)) <= set(np.flatnonzero(p > 0))
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12)


def test_generate_samples_from_the_penalised_filtered_model_distribution():
    """One sampled step of generate over 4000 copies of a prompt: frequencies = softmax(process_logits(model
    logits, prompt seen)). Fails if generate skipped the penalty (the prompt's tokens would be too likely)."""
    (m, params), r = model(), ref()
    prompt = jnp.tile(jnp.asarray(r["c_prompt"][:1]), (4000, 1))
    kw = dict(temperature=1.2, top_k=40, top_p=0.95, repetition_penalty=3.0)
    toks = np.asarray(generate(m, params, prompt, max_new_tokens=1, rng=jax.random.key(1), **kw))[:, 0]
    logits = m.apply({"params": params}, prompt[:1])[:, -1]
    seen = seen_mask(np.asarray(prompt[:1]), 300)
    p = np.asarray(jax.nn.softmax(process_logits(logits, seen, **kw)), np.float64)[0]
    p0 = np.asarray(jax.nn.softmax(process_logits(logits, None, **{**kw, "repetition_penalty": 1.0})))[0]
    freq = np.bincount(toks, minlength=300) / len(toks)
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / len(toks)) + 1e-12)
    in_prompt = np.unique(np.asarray(prompt[0]))
    assert p0[in_prompt].sum() > p[in_prompt].sum() + 0.05  # the penalty matters for this prompt


def test_generate_stream_yields_the_same_tokens_as_generate():
    (m, params), r = model(), ref()
    ids, mask = jnp.asarray(r["b_prompt"]), jnp.asarray(r["b_mask"])
    # sampling (greedy shares the step function; its tokens are checked against HF above)
    kw = dict(temperature=0.8, top_k=30, top_p=0.9, rng=jax.random.key(5), max_new_tokens=12,
              eos_id=tuple(int(e) for e in r["b_eos"]), pad_id=296, repetition_penalty=1.1)
    full = np.asarray(generate(m, params, ids, mask, **kw))
    steps = np.stack(list(generate_stream(m, params, ids, mask, **kw)), axis=1)
    np.testing.assert_array_equal(steps, full[:, :steps.shape[1]])
    assert np.all(full[:, steps.shape[1]:] == 296)


def test_bad_generate_arguments_are_named():
    m, params = model()
    ids = jnp.ones((1, 3), jnp.int32)
    with pytest.raises(ValueError, match="repetition_penalty"):
        generate(m, params, ids, max_new_tokens=2, repetition_penalty=0.0)
    with pytest.raises(ValueError, match="eos_id"):
        generate(m, params, ids, max_new_tokens=2, eos_id=[1, "x"])
