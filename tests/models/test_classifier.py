"""jaxmm.models.classifier and jaxmm.models.match3 against the pieces they are built from: the head reads the
right features (the LLM's last real token under right padding, the ViT's pooled [CLS], the mean of the patch
features), computed here independently with NumPy from the backbone's own outputs."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.models.classifier import Classifier, PooledViTClassifier
from jaxmm.models.llm import LLM, LLMConfig
from jaxmm.models.match3 import Match3Model
from jaxmm.models.vit import ViT, ViTConfig


def test_llm_head_reads_the_last_real_token():
    cfg = LLMConfig(vocab_size=11, num_layers=1, d_model=8, num_heads=2, mlp_dim=16)
    ids = jnp.array([[1, 2, 3, 4, 0], [5, 6, 0, 0, 0]])
    mask = jnp.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    model = Classifier("llm", cfg, 3)
    v = nn.unbox(model.init(jax.random.key(0), ids, mask))
    _, hidden = LLM(cfg).apply({"params": v["params"]["backbone"]}, ids, attention_mask=mask, return_hidden=True)
    h = np.asarray(hidden[-1], np.float64)
    want = np.stack([h[0, 3], h[1, 1]]) @ np.asarray(v["params"]["head"]["kernel"], np.float64)
    np.testing.assert_allclose(model.apply(v, ids, mask), want, rtol=1e-5, atol=1e-6)
    lm = Classifier("llm", cfg, 3, objective="lm").apply(v, ids, mask)
    assert lm.shape == (2, 5, 11)
    with pytest.raises(ValueError, match="attention_mask"):
        model.apply(v, ids)


def test_vit_heads_read_cls_and_mean_of_patches():
    cfg = ViTConfig(image_size=8, patch_size=4, num_channels=1, d_model=8, num_layers=1, num_heads=2, mlp_dim=16,
                    feature_layer=-1)
    img = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    model = Classifier("vit", cfg, 4)
    v = nn.unbox(model.init(jax.random.key(0), img))
    out = ViT(cfg).apply({"params": v["params"]["backbone"]}, img)
    want = np.asarray(out["pooler_output"], np.float64) @ np.asarray(v["params"]["head"]["kernel"], np.float64)
    np.testing.assert_allclose(model.apply(v, img), want, rtol=1e-5, atol=1e-6)

    probe = PooledViTClassifier(cfg, 3)
    p = nn.unbox(probe.init(jax.random.key(0), img))
    feats = np.asarray(ViT(cfg).apply({"params": p["params"]["encoder"]}, img)["features"], np.float64)
    dense = p["params"]["Dense_0"]
    want = feats.mean(1) @ np.asarray(dense["kernel"], np.float64) + np.asarray(dense["bias"], np.float64)
    np.testing.assert_allclose(probe.apply(p, img), want, rtol=1e-5, atol=1e-6)
    assert PooledViTClassifier(cfg, 3, pool="attn").init(jax.random.key(0), img)["params"]["query"].shape == (1, 1, 8)


def test_bad_names_are_refused():
    cfg = ViTConfig(image_size=8, patch_size=4, num_channels=1, d_model=8, num_layers=1, num_heads=2, mlp_dim=16)
    img = jnp.ones((1, 8, 8, 1))
    with pytest.raises(ValueError, match="arch"):
        Classifier("cnn", cfg, 2).init(jax.random.key(0), img)
    with pytest.raises(ValueError, match="pool"):
        PooledViTClassifier(cfg, 2, pool="max").init(jax.random.key(0), img)
    with pytest.raises(ValueError, match="kind"):
        Match3Model(kind="linear", vocab=7).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))


@pytest.mark.parametrize("kind", ["softmax", "tensor", "tensor_poly"])
def test_match3_model_gives_one_logit_per_token_and_is_permutation_equivariant(kind):
    # no positions anywhere: permuting the tokens permutes the logits (the model reads the set, as Match3 needs)
    tokens = jnp.array([[1, 4, 0, 6, 2, 3]])
    model = Match3Model(kind=kind, vocab=7, width=8, heads=2, mlp_dim=16, poly_degree=2)
    v = model.init(jax.random.key(0), tokens)
    perm = np.array([3, 0, 5, 1, 4, 2])
    out, out_p = model.apply(v, tokens), model.apply(v, tokens[:, perm])
    assert out.shape == (1, 6)
    np.testing.assert_allclose(np.asarray(out)[:, perm], out_p, rtol=1e-4, atol=1e-5)
