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


def toy_step(params, batch, lr=0.05):
    """A proposed step for the toy model: −lr·∇ of a CE towards fixed labels (what an optimizer would give)."""
    labels = jax.random.randint(jax.random.key(11), batch["x"].shape[:-1], 0, 5)

    def ce(p):
        logits, _ = toy_logits_fn(p, batch)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1))

    return jax.tree.map(lambda g: -lr * g / (jnp.linalg.norm(g) + 1e-12), jax.grad(ce)(params))


@pytest.mark.parametrize("kbar,lagging", [(0.2, "encoder"), (0.9, "llm")])
@pytest.mark.parametrize("divergence", ["kl", "js"])
def test_aux_gradient_is_nonzero_at_the_measurement_point_and_reaches_only_the_lagging_side(kbar, lagging,
                                                                                            divergence):
    # The params are exactly those at which the step Δ was measured: the old snapshot loss had gradient 0 here.
    params, batch, side = setup()
    updates = toy_step(params, batch)
    loss_fn = lambda p: commit.aux_loss(toy_logits_fn, p, updates, batch, side, kbar, weight=1.0,
                                        divergence=divergence)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    other = "llm" if lagging == "encoder" else "encoder"
    np.testing.assert_array_equal(grads[other]["w"], 0.0)  # never reaches the leading side
    g = grads[lagging]["w"]
    assert float(jnp.linalg.norm(g)) > 1e-3
    # the value: w · Div(target ‖ current), target = output after the LEADING side's part of Δ only
    w = abs(1 - 2 * kbar)
    lead = {lagging: {"w": jnp.zeros_like(params[lagging]["w"])}, other: updates[other]}
    target, _ = toy_logits_fn(jax.tree.map(jnp.add, params, lead), batch)
    now, _ = toy_logits_fn(params, batch)
    div = commit.kl_divergence if divergence == "kl" else commit.js_divergence
    np.testing.assert_allclose(loss, w * div(target, now), rtol=1e-5)
    assert float(loss) > 1e-5
    # the gradient is the derivative of w·Div(target ‖ p) with the target held fixed (it is a stop-gradient):
    # a directional finite difference along a random direction
    d = jax.random.normal(jax.random.key(5), g.shape)
    fixed = lambda e: w * div(target, toy_logits_fn({**params, lagging: {"w": params[lagging]["w"] + e * d}},
                                                    batch)[0])
    fd = (fixed(1e-3) - fixed(-1e-3)) / 2e-3
    np.testing.assert_allclose(float(jnp.sum(g * d)), float(fd), rtol=0.05)
    # a step of the lagging side along −∇ makes it reproduce part of the leading side's output change
    assert float(fixed(0.0)) == pytest.approx(float(loss), rel=1e-5)
    d = -g / jnp.linalg.norm(g)
    assert float(fixed(0.5 * float(loss) / float(jnp.linalg.norm(g)))) < 0.8 * float(loss)
    # label-free: the batch holds only inputs; adding labels changes nothing
    with_labels = dict(batch, labels=jnp.zeros((4, 3), jnp.int32))
    assert float(commit.aux_loss(toy_logits_fn, params, updates, with_labels, side, kbar, weight=1.0,
                                 divergence=divergence)) == pytest.approx(float(loss))
    # balanced -> no aux signal; no measured step yet (Δ = 0) -> target = current -> no signal
    assert float(commit.aux_loss(toy_logits_fn, params, updates, batch, side, 0.5)) == 0.0
    zero = jax.tree.map(jnp.zeros_like, updates)
    assert float(commit.aux_loss(toy_logits_fn, params, zero, batch, side, kbar, divergence=divergence)) < 1e-7


def test_lead_step_keeps_only_the_leading_side():
    params, batch, side = setup()
    upd = toy_step(params, batch)
    enc_lags = commit.lead_step(upd, side, True)
    np.testing.assert_array_equal(enc_lags["encoder"]["w"], 0.0)
    np.testing.assert_array_equal(enc_lags["llm"]["w"], upd["llm"]["w"])
    llm_lags = commit.lead_step(upd, side, False)
    np.testing.assert_array_equal(llm_lags["llm"]["w"], 0.0)
    np.testing.assert_array_equal(llm_lags["encoder"]["w"], upd["encoder"]["w"])


def test_divergences_against_numpy_and_window():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
    ls = lambda z: z - np.log(np.exp(z).sum(-1, keepdims=True))
    np.testing.assert_allclose(commit.kl_divergence(jnp.asarray(a), jnp.asarray(b)), np_kl(ls(a), ls(b)), rtol=1e-5)
    p, q = np.exp(ls(a)), np.exp(ls(b))
    m = (p + q) / 2
    js = np.mean(0.5 * (p * np.log(p / m)).sum(-1) + 0.5 * (q * np.log(q / m)).sum(-1))
    np.testing.assert_allclose(commit.js_divergence(jnp.asarray(a), jnp.asarray(b)), js, rtol=1e-5)


@pytest.mark.parametrize("kbar", [0.05, 0.25, 0.5, 0.75, 0.99])
def test_boost_lagging_rule_only_speeds_up_the_lagging_side(kbar):
    lr_s, lr_t = commit.scheduled_learning_rates(kbar, 1e-3, 2e-3, clip=(0.1, 4.0), rule="boost_lagging")
    np.testing.assert_allclose(lr_s, 1e-3 * np.clip((1 - kbar) / kbar, 1, 4), rtol=1e-5)
    np.testing.assert_allclose(lr_t, 2e-3 * np.clip(kbar / (1 - kbar), 1, 4), rtol=1e-5)
    assert float(lr_s) >= 1e-3 and float(lr_t) >= 2e-3  # nobody is slowed down
    with pytest.raises(ValueError, match="rule"):
        commit.scheduled_learning_rates(kbar, 1e-3, 1e-3, rule="cosine")


def _controller(measure_at_base: bool, windows: int = 8, enc_step: float = 0.3):
    """The scheduler loop on a FIXED model (params, probe and the base-rate step Δ never change): each window
    measures κ, then sets the per-side multipliers by the symmetric rule. The optimizer's step is linear in its
    learning rate (SGD/Adam/AdamW), so the step under multipliers (s_S, s_T) is (s_S·Δ_S, s_T·Δ_T)."""
    params, batch, side = setup()
    step = toy_step(params, batch)
    step = {"encoder": {"w": enc_step * step["encoder"]["w"]}, "llm": step["llm"]}
    scales, trace = (1.0, 1.0), []
    for _ in range(windows):
        s_s, s_t = (1.0, 1.0) if measure_at_base else scales
        upd = {"encoder": {"w": s_s * step["encoder"]["w"]}, "llm": {"w": s_t * step["llm"]["w"]}}
        kappa = float(commit.balance_coefficient(toy_logits_fn, params, upd, batch, side)["kappa"])
        scales = tuple(float(x) for x in commit.scheduled_learning_rates(kappa, 1.0, 1.0, clip=(0.1, 2.0)))
        trace.append((kappa, scales))
    return trace


def test_controller_with_kappa_at_base_rates_converges_instead_of_alternating():
    base = _controller(True)
    k0 = base[0][0]
    assert 0.02 < k0 < 0.4  # the encoder lags, but not so far that the clip hides the dynamics
    want = (2 * (1 - k0), 2 * k0)
    for kappa, scales in base:  # the same κ and multipliers every window: a fixed point from window 1 on
        assert kappa == pytest.approx(k0, rel=1e-6)
        np.testing.assert_allclose(scales, want, rtol=1e-5)
    assert abs(want[0] - 1) > 0.2 and abs(want[1] - 1) > 0.2  # not inert: it does rebalance
    # the old measurement (κ under the multipliers it set itself) on the same fixed model flips between two
    # states: KL ∝ step², so log-odds(κ) → log r − 2·log-odds(κ) has gain −2, only the clip bounds it
    cur = _controller(False)
    ks = [k for k, _ in cur]
    assert max(ks[2:]) > 0.5 > min(ks[2:])
    for (k1, s1), (k2, s2) in zip(cur[2:], cur[3:]):
        assert abs(s1[1] - s2[1]) > 0.5  # the LLM's multiplier jumps every window
