"""train/tasks/artist.py's scoring and planning helpers against closed forms (the end-to-end `:tiny` run is in
tests/train/test_configs_tiny.py, marked slow)."""
import numpy as np
import pytest

from train.tasks import artist as T


def test_frechet_distance_is_the_closed_form_in_one_dimension_and_zero_on_itself():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 2.0, (400, 1)), rng.normal(-0.5, 0.5, (300, 1))
    want = (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2     # (m1-m2)^2 + (s1-s2)^2
    assert abs(T.frechet_distance(a, b) - want) < 1e-9
    x = rng.normal(size=(50, 4))
    assert abs(T.frechet_distance(x, x)) < 1e-6
    few = rng.normal(size=(3, 8))                                                 # rank-deficient covariances
    assert np.isfinite(T.frechet_distance(few, few + 1.0))


def test_planner_helpers():
    assert T.quoted_words('a red poster with white text saying "Tiger 42"') == ["tiger", "42"]
    assert T.quoted_words("no quotes") == []
    boxes = T.rule_layout(["ab", "cde"], (24, 48))
    assert boxes.shape == (2, 4) and np.all(boxes[:, 2] > boxes[:, 0]) and boxes[0, 2] < boxes[1, 0]
    assert np.all(boxes >= 0) and np.all(boxes[:, 2] <= 48) and np.all(boxes[:, 3] <= 24)
    # widths proportional to the word lengths
    np.testing.assert_allclose((boxes[1, 2] - boxes[1, 0]) / (boxes[0, 2] - boxes[0, 0]), 1.5, rtol=1e-6)
    a = np.array([[0, 0, 2, 2]], np.float32)
    assert T.box_iou(a, a) == 1.0 and T.box_iou(a, a + [1, 0, 1, 0]) == 2 / 6 and T.box_iou(a, np.zeros((0, 4))) == 0


def test_self_trained_clip_learns_well_below_chance():
    """The CLIP stand-in of the experiment, trained by `_train_clip` on 64 scenes: its InfoNCE loss must fall well
    below ln(batch) (chance: constant logits). It sat at ln 32 when images and prompts were drawn unpaired."""
    import jax

    from configs.artist import get_config
    from jaxmm.data import glyphs

    c = get_config("small")
    c.train.update(dict(steps_clip=80, clip_batch=16))
    kw = dict(height=c.data.height, width=c.data.width, size_range=tuple(c.data.size_range), min_size=c.data.min_size,
              max_words=c.data.max_words)
    data = T._arrays([glyphs.scene(i, **kw) for i in range(64)], c)
    f = T._train_clip(T._models(c)["clip"], data, c, jax.random.key(0), np.random.default_rng(0))
    chance = np.log(16)
    assert f.losses[:5].mean() > 0.9 * chance                                 # starts near chance
    assert f.losses[-10:].mean() < 0.5 * chance, f.losses[-10:]


@pytest.mark.slow       # ~34 CPU-s: eager init + two compilations of the UNet, over the suite's budget
def test_textual_model_listens_to_its_string():
    """The experiment's textual model (the `:tiny` config's architecture: char encoder + char map) trained 40 steps
    on 16 glyphs of 4 words: at the same (t, noise), its diffusion loss given the true words must be well below its
    loss given another word drawn in the same box. A model that ignores its string condition gives equal losses."""
    import jax
    import jax.numpy as jnp

    from configs.artist import get_config
    from jaxmm import diffusion
    from jaxmm.data import glyphs
    from train.experiment import fit, sample_batch

    c = get_config("tiny")
    vocab = ("ab", "xo", "mi", "lt")
    gs = [glyphs.single_word(i, height=8, width=16, vocabulary=vocab, size_range=(8, 8),
                             fonts=glyphs.textrich.available_fonts()[:1]) for i in range(16)]
    scene = lambda g, words: {"image": np.zeros((8, 16, 3), np.uint8), "glyph": g.glyph, "mask": g.glyph,  # noqa
                              "prompt": "", "words": words, "boxes": g.boxes}
    data = T._arrays([scene(g, g.words) for g in gs], c)
    wrong = T._arrays([scene(g, [vocab[(vocab.index(g.words[0]) + 1) % 4]]) for g in gs], c)
    model = T._models(c)["textual"]
    sched = diffusion.Schedule(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    ac = jnp.asarray(diffusion.alphas_cumprod(sched))
    pred = c.diffusion.textual_prediction
    params = model.init(jax.random.key(0), data["glyph"][:1], jnp.zeros((1,), jnp.int32), data["layout_ids"][:1],
                        data["char_map"][:1])["params"]

    def loss(p, b, k):
        fn = lambda x, t: model.apply({"params": p}, x, t, b["layout_ids"], b["char_map"])  # noqa: E731
        return diffusion.diffusion_loss(fn, pred, ac, b["glyph"], k)[0]

    rng = np.random.default_rng(0)
    names = ("glyph", "layout_ids", "char_map")
    params = fit(loss, params, lambda s: sample_batch(data, names, rng, 16), 40, 1e-2, jax.random.key(1),
                 progress=False).params
    # the same t (low and mid noise, where the glyph is not yet determined by x_t alone) and noise for both
    t = jnp.tile(jnp.array([100, 300, 500, 700]), 4)
    noise = jax.random.normal(jax.random.key(2), data["glyph"].shape)
    x_t = diffusion.q_sample(ac, data["glyph"], t, noise)
    target = diffusion.prediction_target(pred, ac, data["glyph"], t, noise)

    @jax.jit
    def errors(p, ids, cmaps):      # [2] (true words, other words), one compilation
        out = jax.vmap(lambda i, m: model.apply({"params": p}, x_t, t, i, m))(ids, cmaps)
        return jnp.mean((out - target[None]) ** 2, axis=(1, 2, 3, 4))

    right, other = (float(e) for e in errors(params, jnp.stack([data["layout_ids"], wrong["layout_ids"]]),
                                              jnp.stack([data["char_map"], wrong["char_map"]])))
    assert right < 0.8 * other, (right, other)


@pytest.mark.slow       # ~40 CPU-s: six compilations of the ARTIST sampler (one per `_sample` call)
def test_true_glyph_sampler_differs_from_artists_only_in_the_glyph():
    """The "artist with true glyphs" diagnostic row (`_sample(..., oracle_glyphs=True)`): at init the zero convs make
    the injection the identity, so with the same key it must give exactly ARTIST's own samples (same visual noise);
    with the injection switched on (zero convs set non-zero), its samples must follow the glyph it is handed, while
    ARTIST's own sampler ignores that argument (it paints its glyphs itself)."""
    import jax
    import jax.numpy as jnp

    from configs.artist import get_config
    from jaxmm import diffusion

    c = get_config("tiny")
    h, w, n = c.data.height, c.data.width, 2
    model = T._models(c)["artist"]
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 20, (n, c.data.prompt_len)).astype(np.int32)
    lids = rng.integers(1, 20, (n, c.data.layout_len)).astype(np.int32)
    cmap = rng.integers(0, 20, (n, h, w)).astype(np.int32) if c.model.char_dim else None
    g1 = np.where(rng.uniform(size=(n, h, w, 1)) < 0.5, -1.0, 1.0).astype(np.float32)
    g2, mask = -g1, np.zeros((n, h, w, 1), np.float32)
    params = model.init(jax.random.key(0), jnp.zeros((1, h, w, 3)), jnp.zeros((1, h, w, 1)),
                        jnp.zeros((1,), jnp.int32), ids[:1], lids[:1], None if cmap is None else cmap[:1])["params"]
    sched = diffusion.Schedule(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing", clip_sample=True)
    key = jax.random.key(3)

    def sample(p, glyph, oracle):
        return T._sample("artist", model, p, sched, c, ids, glyph, mask, lids, cmap, key, oracle_glyphs=oracle)

    np.testing.assert_allclose(sample(params, g1, True), sample(params, g1, False), atol=1e-5)
    on = jax.tree_util.tree_map_with_path(
        lambda path, x: 0.3 * jax.random.normal(jax.random.key(len(str(path))), x.shape)
        if "inject_" in jax.tree_util.keystr(path) else x, params)
    assert np.abs(sample(on, g1, True) - sample(on, g2, True)).max() > 1e-2        # follows the glyph it is handed
    np.testing.assert_array_equal(sample(on, g1, False), sample(on, g2, False))     # ignores it
