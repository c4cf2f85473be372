"""jaxmm.data.docsynth_decode: constrained sampling from a (random) jaxmm LLM parses in every mode; top_k=1
equals a cache-free greedy reference over the masked logits; without the mask the same model's samples do not
parse (the mask is what makes them valid)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.data import docsynth as ds
from jaxmm.data.docsynth_decode import sample_documents
from jaxmm.models.llm import LLM, tiny_llm_config

VOCAB = ds.DocVocab(bins=8)
MAX_LEN = 28


@pytest.fixture(scope="module")
def lm():
    model = LLM(tiny_llm_config(VOCAB.size, num_layers=1, d_model=16, num_heads=2, num_kv_heads=1, mlp_dim=32))
    params = model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]
    return model, params


def _parse_all(rows, with_text=True):
    return [ds.parse(r, VOCAB, with_text=with_text) for r in rows]


@pytest.mark.parametrize("with_text", [True, False])
def test_constrained_samples_parse_and_unconstrained_do_not(lm, with_text):
    model, params = lm
    kw = dict(num=4, max_length=MAX_LEN, with_text=with_text, top_p=0.95, max_words=3)
    rows = sample_documents(model, params, VOCAB, jax.random.key(1), **kw)
    rows += sample_documents(model, params, VOCAB, jax.random.key(2), **kw)
    assert all(len(r) <= MAX_LEN and r[-1] == VOCAB.eos for r in rows)
    assert all(len(lay.elements) >= 1 for lay in _parse_all(rows, with_text))
    ok = 0
    for key in (1, 2):
        for r in sample_documents(model, params, VOCAB, jax.random.key(key), constrained=False, **kw):
            try:
                ds.parse(r, VOCAB, with_text=with_text)
                ok += 1
            except ValueError:
                pass
    assert ok <= 1, f"{ok} of 8 unconstrained samples of a random model parse: the mask test would be inert"


def test_category_conditioned_mode(lm):
    model, params = lm
    cats = [["title"], ["text", "figure"], ["list", "list", "table"], ["figure"]]
    rows = sample_documents(model, params, VOCAB, jax.random.key(2), categories=cats, max_length=MAX_LEN,
                            max_words=2)
    assert [[e.category for e in lay.elements] for lay in _parse_all(rows)] == cats


def test_completion_with_top_k_1_equals_cache_free_greedy_over_masked_logits(lm):
    """Completion mode (prompts of different lengths: left padding) at top_k = 1 against a reference that runs
    the whole prefix through the model at every step (no cache) and takes the argmax of the legal tokens."""
    model, params = lm
    title = ds.serialize(ds.Layout((ds.Element("title", (0.0, 0.0, 1.0, 0.25), "river stone"),)), VOCAB)[:-1]
    text = ds.serialize(ds.Layout((ds.Element("text", (0.25, 0.5, 0.5, 0.25), "river"),)), VOCAB)[:-1]
    prompts = [title, [VOCAB.sos], title[:3], text]
    rows = sample_documents(model, params, VOCAB, jax.random.key(4), prompts=prompts, max_length=MAX_LEN,
                            top_k=1, max_words=2)
    assert all(r[:len(p)] == p for r, p in zip(rows, prompts))
    assert _parse_all(rows)[0].elements[0] == ds.Element("title", (0.0, 0.0, 1.0, 0.25), "river stone")
    full = jax.jit(lambda ids, mask: model.apply({"params": params}, ids, attention_mask=mask))
    for p, got in zip(prompts, rows):
        ids = list(p)
        while ids[-1] != VOCAB.eos and len(ids) < MAX_LEN:
            x = np.zeros((1, MAX_LEN), np.int32)
            x[0, :len(ids)] = ids
            logits = np.asarray(full(x, (np.arange(MAX_LEN) < len(ids))[None].astype(np.int32)))[0, len(ids) - 1]
            allowed = ds.allowed_tokens(ids, VOCAB, max_length=MAX_LEN, max_words=2)
            ids.append(int(np.argmax(np.where(allowed, logits, -np.inf))))
        assert got == ids


def test_bad_arguments(lm):
    model, params = lm
    with pytest.raises(ValueError, match="temperature"):
        sample_documents(model, params, VOCAB, jax.random.key(0), num=4, temperature=0.0)
    with pytest.raises(ValueError, match="prompts"):
        sample_documents(model, params, VOCAB, jax.random.key(0), prompts=[[VOCAB.eos]])
    with pytest.raises(ValueError, match="categories"):
        sample_documents(model, params, VOCAB, jax.random.key(0), num=2, prompts=[[1], [1]], categories=[["title"]])
    with pytest.raises(ValueError, match="max_length"):
        sample_documents(model, params, VOCAB, jax.random.key(0), prompts=[[VOCAB.sos] * 5], max_length=5)
