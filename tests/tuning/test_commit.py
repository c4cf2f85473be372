import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.tuning import commit


def toy_logits_fn(params, batch):
    """A two-component 'MLLM': encoder features h = tanh(x·E), LLM logits = h·T. Reads only batch['x']."""
    h = jnp.tanh(batch["x"] @ params["encoder"]["w"])
    return h @ params["llm"]["w"], jnp.ones(batch["x"].shape[:-1])


def setup(seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    params = {"encoder": {"w": jax.random.normal(k[0], (6, 6)) * 0.5},
              "llm": {"w": jax.random.normal(k[1], (6, 5)) * 0.5}}
    batch = {"x": jax.random.normal(k[2], (4, 3, 6))}
    side = commit.path_mask(params, lambda path: path[0] == "encoder")
    return params, batch, side


def np_kl(lp, lq):
    p = np.exp(lp)
    return float(np.mean(np.sum(p * (lp - lq), -1)))


def test_kappa_matches_numpy_and_is_one_half_for_symmetric_construction():
    # Symmetric: logits = x·(A + B); both sides take the same step -> identical output change.
    fn = lambda p, b: (b["x"] @ (p["encoder"]["a"] + p["llm"]["b"]), jnp.ones(b["x"].shape[:-1]))
    w = jax.random.normal(jax.random.key(1), (6, 5))
    params = {"encoder": {"a": w}, "llm": {"b": -0.3 * w}}
    step = jax.random.normal(jax.random.key(2), (6, 5)) * 0.1
    updates = {"encoder": {"a": step}, "llm": {"b": step}}
    batch = {"x": jax.random.normal(jax.random.key(3), (4, 3, 6))}
    side = commit.path_mask(params, lambda path: path[0] == "encoder")
    out = commit.balance_coefficient(fn, params, updates, batch, side)
    np.testing.assert_allclose(out["kappa"], 0.5, atol=1e-6)
    # D_S against a float64 numpy evaluation
    x = np.asarray(batch["x"], np.float64)
    base = x @ (np.asarray(w, np.float64) * 0.7)
    moved = base + x @ np.asarray(step, np.float64)
    ls = lambda z: z - np.log(np.exp(z).sum(-1, keepdims=True))
    np.testing.assert_allclose(out["d_s"], np_kl(ls(moved), ls(base)), rtol=1e-4)


def test_kappa_goes_to_one_or_zero_when_one_side_is_frozen():
    params, batch, side = setup()
    upd = jax.tree.map(lambda p: 0.05 * jax.random.normal(jax.random.key(7), p.shape), params)
    only_enc = {"encoder": upd["encoder"], "llm": {"w": jnp.zeros_like(params["llm"]["w"])}}
    only_llm = {"encoder": {"w": jnp.zeros_like(params["encoder"]["w"])}, "llm": upd["llm"]}
    assert float(commit.balance_coefficient(toy_logits_fn, params, only_enc, batch, side)["kappa"]) == pytest.approx(1.0)
    assert float(commit.balance_coefficient(toy_logits_fn, params, only_llm, batch, side)["kappa"]) == pytest.approx(0.0)
    both = commit.balance_coefficient(toy_logits_fn, params, upd, batch, side)
    assert 0.0 < float(both["kappa"]) < 1.0
    ratio = commit.balance_coefficient(toy_logits_fn, params, upd, batch, side, formula="ratio")
    np.testing.assert_allclose(ratio["kappa"], both["d_s"] / both["d_t"], rtol=1e-6)


@pytest.mark.parametrize("kbar", [0.0, 0.1, 0.5, 0.8, 1.0])
def test_scheduler_follows_rule_and_stays_clipped(kbar):
    lr_s, lr_t = commit.scheduled_learning_rates(kbar, 1e-3, 2e-3, clip=(0.25, 1.5))
    np.testing.assert_allclose(lr_s, np.clip(1e-3 * 2 * (1 - kbar), 0.25e-3, 1.5e-3), rtol=1e-6)
    np.testing.assert_allclose(lr_t, np.clip(2e-3 * 2 * kbar, 0.5e-3, 3e-3), rtol=1e-6)
    if kbar == 0.5:
        np.testing.assert_allclose([lr_s, lr_t], [1e-3, 2e-3], rtol=1e-6)  # the constant-LR fixed point
    with pytest.raises(ValueError, match="clip"):
        commit.scheduled_learning_rates(kbar, 1e-3, 1e-3, clip=(2.0, 1.0))


@pytest.mark.parametrize("kbar,lagging", [(0.2, "encoder"), (0.9, "llm")])
def test_aux_loss_is_label_free_and_reaches_only_the_lagging_side(kbar, lagging):
    params, batch, side = setup()
    prev = jax.tree.map(lambda p: p + 0.1, params)
    loss_fn = lambda p: commit.aux_loss(toy_logits_fn, p, prev, batch, side, kbar, weight=1.0)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    assert float(loss) < 0  # it rewards moving away from the snapshot
    other = "llm" if lagging == "encoder" else "encoder"
    assert float(jnp.abs(grads[lagging]["w"]).sum()) > 0
    np.testing.assert_array_equal(grads[other]["w"], 0.0)
    # label-free: the batch holds only inputs; adding labels changes nothing
    with_labels = dict(batch, labels=jnp.zeros((4, 3), jnp.int32))
    assert float(commit.aux_loss(toy_logits_fn, params, prev, with_labels, side, kbar, weight=1.0)) == pytest.approx(float(loss))
    # balanced -> no aux signal at all
    assert float(commit.aux_loss(toy_logits_fn, params, prev, batch, side, 0.5)) == 0.0


def test_divergences_against_numpy_and_window():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
    ls = lambda z: z - np.log(np.exp(z).sum(-1, keepdims=True))
    np.testing.assert_allclose(commit.kl_divergence(jnp.asarray(a), jnp.asarray(b)), np_kl(ls(a), ls(b)), rtol=1e-5)
    p, q = np.exp(ls(a)), np.exp(ls(b))
    m = (p + q) / 2
    js = np.mean(0.5 * (p * np.log(p / m)).sum(-1) + 0.5 * (q * np.log(q / m)).sum(-1))
    np.testing.assert_allclose(commit.js_divergence(jnp.asarray(a), jnp.asarray(b)), js, rtol=1e-5)
    w = commit.KappaWindow(ema_decay=0.5)
    for k in (0.2, 0.4):
        w.add(k)
    assert w.mean() == pytest.approx(0.3) and w.ema == pytest.approx(0.3)
    w.reset()
    assert w.mean() == 0.5


@pytest.mark.parametrize("kbar", [0.05, 0.25, 0.5, 0.75, 0.99])
def test_boost_lagging_rule_only_speeds_up_the_lagging_side(kbar):
    lr_s, lr_t = commit.scheduled_learning_rates(kbar, 1e-3, 2e-3, clip=(0.1, 4.0), rule="boost_lagging")
    np.testing.assert_allclose(lr_s, 1e-3 * np.clip((1 - kbar) / kbar, 1, 4), rtol=1e-5)
    np.testing.assert_allclose(lr_t, 2e-3 * np.clip(kbar / (1 - kbar), 1, 4), rtol=1e-5)
    assert float(lr_s) >= 1e-3 and float(lr_t) >= 2e-3  # nobody is slowed down
    with pytest.raises(ValueError, match="rule"):
        commit.scheduled_learning_rates(kbar, 1e-3, 1e-3, rule="cosine")
