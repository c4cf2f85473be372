"""train.experiment.fit, the one small optimisation loop of the experiments, against the loops it replaced.

Each reference below is the replaced loop (plain optax, as it was written in train/tasks/artist.py `fit`,
train/tasks/toffee.py `_fit` and `train_dino`, train/tasks/docsynth.py `train_fid_encoder`), run for 3 steps on a
toy problem whose loss uses the batch and the per-step key, so a different key or batch order, optimizer or
update rule changes the params. The helper must reproduce each exactly (bit for bit)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train.experiment import build_step, fit, sample_batch

STEPS = 3


def _params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"enc": {"w": jax.random.normal(k1, (4, 3))}, "head": {"w": jax.random.normal(k2, (3, 2)),
                                                                  "b": jnp.zeros(2)}}


def _loss(p, batch, key):
    noise = 0.1 * jax.random.normal(key, batch["x"].shape)          # the key matters
    h = jnp.tanh((batch["x"] + noise) @ p["enc"]["w"])
    return jnp.mean((h @ p["head"]["w"] + p["head"]["b"] - batch["y"]) ** 2)


def _batches(seed=1):
    rng = np.random.default_rng(seed)
    data = {"x": rng.normal(size=(16, 4)).astype(np.float32), "y": rng.normal(size=(16, 2)).astype(np.float32)}
    return lambda s: {k: v[rng.integers(0, 16, 5)] for k, v in data.items()}


def _assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _artist_reference(loss_fn, params, sample_batch, steps, lr, key, frozen=None):
    """train/tasks/artist.py `fit` before the refactor (printing dropped)."""
    if frozen is None:
        opt = optax.adam(lr)
    else:
        labels = jax.tree_util.tree_map_with_path(
            lambda p, _: "frozen" if frozen(jax.tree_util.keystr(p)) else "train", params)
        opt = optax.multi_transform({"train": optax.adam(lr), "frozen": optax.set_to_zero()}, labels)
    state = opt.init(params)

    @jax.jit
    def step(params, state, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, key)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for s in range(steps):
        key, sub = jax.random.split(key)
        params, state, loss = step(params, state, sample_batch(s), sub)
        losses.append(float(loss))
    return params, losses


def test_artist_loop_reproduced_exactly_with_and_without_frozen_leaves():
    p0, key = _params(), jax.random.key(3)
    want, want_losses = _artist_reference(_loss, p0, _batches(), STEPS, 1e-2, key)
    got = fit(_loss, p0, _batches(), STEPS, 1e-2, key, progress=False)
    _assert_trees_equal(got.params, want)
    np.testing.assert_array_equal(got.losses, want_losses)

    frozen = lambda path: path.startswith("['enc']")  # noqa: E731  (ARTIST freezes ['textual'] the same way)
    want_f, _ = _artist_reference(_loss, p0, _batches(), STEPS, 1e-2, key, frozen=frozen)
    got_f = fit(_loss, p0, _batches(), STEPS, 1e-2, key, frozen=frozen, progress=False)
    _assert_trees_equal(got_f.params, want_f)
    # frozen leaves stay bit-identical while they do get gradient (so freezing is not inert) ...
    np.testing.assert_array_equal(got_f.params["enc"]["w"], p0["enc"]["w"])
    assert np.abs(np.asarray(jax.grad(_loss)(p0, _batches()(0), key)["enc"]["w"])).max() > 1e-4
    assert not np.array_equal(got.params["enc"]["w"], p0["enc"]["w"])
    # ... and the other leaves train
    assert not np.array_equal(got_f.params["head"]["w"], p0["head"]["w"])


def _toffee_reference(loss_fn, params, batch_fn, steps, lr, key):
    """train/tasks/toffee.py `_fit` before the refactor (AdamW without decay; metrics and timing dropped)."""
    opt = optax.adamw(lr, weight_decay=0.0)
    state = opt.init(params)

    @jax.jit
    def step(params, state, batch, key):
        loss, g = jax.value_and_grad(loss_fn)(params, batch, key)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, loss

    losses = []
    for i in range(steps):
        key, k = jax.random.split(key)
        params, state, loss = step(params, state, batch_fn(i), k)
        losses.append(float(loss))
    return params, losses


def test_toffee_clip_loop_reproduced_exactly():
    p0, key = _params(), jax.random.key(5)
    want, want_losses = _toffee_reference(_loss, p0, _batches(), STEPS, 3e-3, key)
    want_loss = float(np.mean(want_losses[-20:]))
    got = fit(_loss, p0, _batches(), STEPS, optax.adamw(3e-3, weight_decay=0.0), key, progress=False)
    _assert_trees_equal(got.params, want)
    assert float(np.mean(got.losses[-20:])) == want_loss
    # a different optimizer (plain Adam with weight decay) is seen: the test is not blind to the optimizer argument
    other = fit(_loss, p0, _batches(), STEPS, optax.adamw(3e-3, weight_decay=0.5), key, progress=False)
    assert not np.array_equal(other.params["head"]["w"], want["head"]["w"])


# DINO's loop: an EMA teacher and a centre beside the student, the momentum schedule from the host
def _teacher_logits(p, x):
    return jnp.tanh(x @ p["enc"]["w"]) @ p["head"]["w"]


def _dino_like_loss(p, x, t_logits, center):
    t = jax.nn.softmax((t_logits - center) / 0.5)
    return -jnp.mean(jnp.sum(t * jax.nn.log_softmax(_teacher_logits(p, x) / 0.2), -1))


def _momentum(i):
    return 1 - (1 - 0.9) * (np.cos(np.pi * i / STEPS) + 1) / 2


def _dino_reference(params, images, key):
    """train/tasks/toffee.py `train_dino`'s loop before the refactor, on the toy (multi_crop -> a noisy view)."""
    teacher = {"params": params, "center": jnp.zeros(2)}
    opt = optax.adamw(1e-2, weight_decay=0.04)
    state = opt.init(params)

    @jax.jit
    def step(params, teacher, state, imgs, key, momentum):
        g = imgs + 0.1 * jax.random.normal(key, imgs.shape)
        t_logits = _teacher_logits(teacher["params"], g)

        def loss_fn(p):
            return _dino_like_loss(p, g, t_logits, teacher["center"])

        loss, grads = jax.value_and_grad(loss_fn)(params)
        upd, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, upd)
        teacher = {"params": jax.tree.map(lambda t, s: momentum * t + (1 - momentum) * s, teacher["params"], params),
                   "center": 0.9 * teacher["center"] + 0.1 * t_logits.mean(0)}
        return params, teacher, state, loss

    rng = np.random.default_rng(7)
    for i in range(STEPS):
        key, k = jax.random.split(key)
        params, teacher, state, loss = step(params, teacher, state, images[rng.integers(0, len(images), 5)], k,
                                            _momentum(i))
    return params, teacher


def test_dino_loop_with_aux_state_reproduced_exactly():
    p0, key = _params(), jax.random.key(11)
    images = np.random.default_rng(2).normal(size=(16, 4)).astype(np.float32)
    want_p, want_t = _dino_reference(p0, images, key)

    def loss_fn(p, batch, key, teacher):
        g = batch["images"] + 0.1 * jax.random.normal(key, batch["images"].shape)
        t_logits = _teacher_logits(teacher["params"], g)
        return _dino_like_loss(p, g, t_logits, teacher["center"]), t_logits

    def update(teacher, p, t_logits, batch):
        m = batch["momentum"]
        return {"params": jax.tree.map(lambda t, s: m * t + (1 - m) * s, teacher["params"], p),
                "center": 0.9 * teacher["center"] + 0.1 * t_logits.mean(0)}

    rng = np.random.default_rng(7)
    got = fit(loss_fn, p0, lambda i: {"images": images[rng.integers(0, len(images), 5)], "momentum": _momentum(i)},
              STEPS, optax.adamw(1e-2, weight_decay=0.04), key, aux={"params": p0, "center": jnp.zeros(2)},
              update_aux=update, progress=False)
    _assert_trees_equal(got.params, want_p)
    _assert_trees_equal(got.aux, want_t)
    # the teacher moved (EMA of a moving student) but is not the student: the aux update is not inert
    assert not np.array_equal(got.aux["params"]["head"]["w"], p0["head"]["w"])
    assert not np.array_equal(got.aux["params"]["head"]["w"], got.params["head"]["w"])


def _docsynth_reference(loss, params, steps, seed):
    """train/tasks/docsynth.py `train_fid_encoder`'s loop before the refactor: step i's key is key(seed + 1 + i)."""
    opt = optax.adam(1e-3)
    state = opt.init(params)

    @jax.jit
    def step(p, s, rng):
        g = jax.grad(loss)(p, rng)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    for i in range(steps):
        params, state = step(params, state, jax.random.key(seed + 1 + i))
    return params


def test_docsynth_fid_encoder_loop_reproduced_exactly():
    x = jnp.asarray(np.random.default_rng(4).normal(size=(16, 4)), jnp.float32)
    y = jnp.asarray(np.random.default_rng(5).normal(size=(16, 2)), jnp.float32)

    def loss(p, rng):
        idx = jax.random.randint(rng, (5,), 0, 16)
        return _loss(p, {"x": x[idx], "y": y[idx]}, jax.random.fold_in(rng, 1))

    p0, seed = _params(), 3
    want = _docsynth_reference(loss, p0, STEPS, seed)
    got = fit(lambda p, rng, _: loss(p, rng), p0, lambda i: jax.random.key(seed + 1 + i), STEPS, 1e-3,
              jax.random.key(seed), progress=False)
    _assert_trees_equal(got.params, want)


def test_metrics_curve_progress_and_timing(tmp_path, capsys):
    from train.report import Reporter

    report = Reporter(str(tmp_path))
    got = fit(_loss, _params(), _batches(), 5, 1e-2, jax.random.key(0), report=report, name="toy", log_every=2)
    report.metrics.flush()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["toy/loss"]) for r in records] == [(2, float(got.losses[1])), (4, float(got.losses[3])),
                                                             (5, float(got.losses[4]))]
    assert got.curve(2) == [(s, float(got.losses[s - 1])) for s in (2, 4, 5)]
    assert got.losses.shape == (5,) and got.seconds > 0 and got.aux is None
    assert "toy" in capsys.readouterr().err   # the progress bar, named
    assert fit(_loss, _params(), _batches(), 1, 1e-2, jax.random.key(0), progress=False).seconds == 0.0


def test_aux_without_update_is_refused():
    with pytest.raises(ValueError, match="aux and update_aux"):
        fit(_loss, _params(), _batches(), 1, 1e-2, jax.random.key(0), aux={"a": 0}, progress=False)


def _toffee_diffusion_reference(loss_fn, params, pool, steps, lr, key, batch, seed):
    """train/tasks/toffee.py `train_diffusion`'s loop before it moved into `fit`: the `_fit` loop above on
    minibatches drawn by `default_rng(seed)`."""
    rng, n = np.random.default_rng(seed), len(pool["x"])

    def batch_fn(_):
        j = rng.integers(0, n, batch)
        return {k_: v[j] for k_, v in pool.items()}

    return _toffee_reference(loss_fn, params, batch_fn, steps, lr, key)


def test_built_step_compiles_once_and_reproduces_the_toffee_diffusion_loop():
    rng0 = np.random.default_rng(6)
    pool = {"x": rng0.normal(size=(16, 4)).astype(np.float32), "y": rng0.normal(size=(16, 2)).astype(np.float32)}
    traces = []

    def counted(p, batch, key):   # a Python side effect runs once per trace (compilation), not per step
        traces.append(1)
        return _loss(p, batch, key)

    def run(p0, key, step):
        rng = np.random.default_rng(9)
        batch = lambda s: sample_batch(pool, ("x", "y"), rng, 5)  # noqa: E731
        if step is None:
            return fit(counted, p0, batch, STEPS, optax.adamw(2e-2, weight_decay=0.0), key, progress=False)
        return fit(step, p0, batch, STEPS, None, key, progress=False)

    # two "models" of one architecture (different initial weights and keys) through one built step
    p_a = _params()
    p_b = jax.tree.map(lambda x: x + 0.5, p_a)
    step = build_step(counted, p_a, optax.adamw(2e-2, weight_decay=0.0))
    got_a, got_b = run(p_a, jax.random.key(1), step), run(p_b, jax.random.key(2), step)
    assert len(traces) == 1                     # the second model reused the first one's compiled step
    # the second model (the one trained by the reused step) is the replaced loop's result, bit for bit
    want, want_losses = _toffee_diffusion_reference(_loss, p_b, pool, STEPS, 2e-2, jax.random.key(2), 5, 9)
    _assert_trees_equal(got_b.params, want)
    np.testing.assert_array_equal(got_b.losses, want_losses)
    assert got_b.cpu_seconds > 0 and not np.array_equal(got_a.params["head"]["w"], got_b.params["head"]["w"])
    # the control: a plain loss traces (and compiles) its own step, and trains the same
    _assert_trees_equal(run(p_b, jax.random.key(2), None).params, want)
    assert len(traces) == 2


def test_a_built_step_refuses_a_second_optimizer():
    step = build_step(_loss, _params(), 1e-2)
    with pytest.raises(ValueError, match=r"optimizer"):
        fit(step, _params(), lambda s: None, 1, optax.adam(1e-3), jax.random.key(0), progress=False)


def test_sample_batch_keeps_the_rows_of_every_key_paired():
    # regression (ARTIST): each key used to draw its own random indices, so images met other images' prompts
    n = 50
    data = {"a": np.arange(n), "b": np.arange(n) * 10, "c": np.arange(2 * n).reshape(n, 2)}
    rng = np.random.default_rng(0)
    for _ in range(20):
        b = sample_batch(data, ("a", "b", "c"), rng, 16)
        assert b["a"].shape == (16,) and b["c"].shape == (16, 2)
        np.testing.assert_array_equal(b["b"], 10 * b["a"])
        np.testing.assert_array_equal(b["c"][:, 0], 2 * b["a"])
    assert len(set(b["a"].tolist())) > 1                                      # random rows, not a fixed slice
