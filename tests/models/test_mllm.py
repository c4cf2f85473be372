import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.models.llm import LLM, tiny_llm_config
from jaxmm.models.mllm import MLLM, MLLMConfig, generate, mllm_loss
from jaxmm.models.vit import ViTConfig

PH = 9  # placeholder id


@pytest.fixture(scope="module")
def model_and_params():
    vit = ViTConfig(image_size=16, patch_size=8, d_model=16, num_layers=2, num_heads=2, mlp_dim=32)
    cfg = MLLMConfig(llm=tiny_llm_config(32, d_model=32, mlp_dim=64, num_layers=2), placeholder_id=PH, encoder="vit",
                     encoder_config=vit)
    model = MLLM(cfg)
    ids = jnp.array([[1, 5, PH, 6, 7, 8, 0], [1, PH, 3, 4, 0, 0, 0]])
    img = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    params = nn.unbox(model.init(jax.random.key(1), ids, img)["params"])
    return model, params, ids, img


def test_param_groups_and_prefix_unaffected_by_media(model_and_params):
    model, params, ids, img = model_and_params
    assert set(params) == {"encoder", "projector", "llm"}
    mask = (ids != 0).astype(jnp.int32)
    out = model.apply({"params": params}, ids, img, mask)
    out2 = model.apply({"params": params}, ids, img * 2.0, mask)
    assert out.shape == (2, 7, 32)
    # tokens before the placeholder see no media: equal to the LLM alone on the prefix (causality)
    llm = LLM(model.config.llm)
    prefix = llm.apply({"params": params["llm"]}, ids[:1, :2])
    np.testing.assert_allclose(out[0, :2], prefix[0], atol=1e-5)
    np.testing.assert_allclose(out[0, :2], out2[0, :2], atol=1e-6)
    assert np.abs(np.asarray(out[0, 2:] - out2[0, 2:])).max() > 1e-4  # from the placeholder on, media matter


def test_splice_equals_explicit_sequence(model_and_params):
    model, params, ids, img = model_and_params
    feats = model.apply({"params": params}, img, method=MLLM.encode)
    n = feats.shape[1]
    llm = LLM(model.config.llm)
    tok = llm.apply({"params": params["llm"]}, ids[:1], method=LLM.embed)
    seq = jnp.concatenate([tok[:, :2], feats[:1], tok[:, 3:]], axis=1)  # row 0: placeholder at 2
    ref = llm.apply({"params": params["llm"]}, inputs_embeds=seq)
    out = model.apply({"params": params}, ids[:1], img[:1])
    np.testing.assert_allclose(out[0, :2], ref[0, :2], atol=1e-5)
    np.testing.assert_allclose(out[0, 2], ref[0, 2 + n - 1], atol=1e-5)  # placeholder -> after last feature
    np.testing.assert_allclose(out[0, 3:], ref[0, 3 + n - 1:], atol=1e-5)


def test_row_without_placeholder_is_plain_llm_and_loss_uses_answer_tokens(model_and_params):
    model, params, _, img = model_and_params
    ids = jnp.array([[1, 5, 6, 7], [1, PH, 3, 4]])
    out = model.apply({"params": params}, ids, img)
    ref = LLM(model.config.llm).apply({"params": params["llm"]}, ids[:1])
    np.testing.assert_allclose(out[0], ref[0], atol=1e-5)
    batch = {"input_ids": ids, "image": img, "attention_mask": jnp.ones_like(ids),
             "loss_mask": jnp.array([[0, 0, 1, 1], [0, 0, 0, 1]])}
    loss, count = mllm_loss(model, params, batch)
    logp = jax.nn.log_softmax(out, -1)
    expect = -(logp[0, 1, 6] + logp[0, 2, 7] + logp[1, 2, 4]) / 3
    assert float(count) == 3
    np.testing.assert_allclose(loss, expect, rtol=1e-5)
    g = jax.jit(jax.grad(lambda p: mllm_loss(model, p, batch)[0]))(params)
    assert float(jnp.abs(g["encoder"]["patch_embed"]["kernel"]).sum()) > 0


def test_generate_with_left_padding_equals_full_forward_greedy(model_and_params):
    model, params, _, img = model_and_params
    prompt = jnp.array([[0, 0, 1, PH, 5], [1, 4, PH, 3, 6]])
    pmask = (jnp.arange(5)[None] >= jnp.array([[2], [0]])).astype(jnp.int32)
    new = generate(model, params, prompt, pmask, img, max_new_tokens=4)
    seq, mask = prompt, pmask
    for _ in range(4):  # no cache: the full forward re-run each step
        logits = model.apply({"params": params}, seq, img, mask)
        nxt = jnp.argmax(logits[:, -1], -1)[:, None]
        seq, mask = jnp.concatenate([seq, nxt], 1), jnp.concatenate([mask, jnp.ones_like(nxt)], 1)
    np.testing.assert_array_equal(new, seq[:, 5:])


def test_config_errors():
    with pytest.raises(ValueError, match="encoder_config.*ViTConfig"):
        MLLMConfig(llm=tiny_llm_config(32), placeholder_id=1)
    with pytest.raises(ValueError, match="encoder.*registered"):
        MLLMConfig(llm=tiny_llm_config(32), placeholder_id=1, encoder="video")
