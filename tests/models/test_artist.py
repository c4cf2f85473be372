"""jaxmm.models.artist: the layout token format round-trips, the grammar mask never allows a token that breaks the
layout (checked against a plain-Python grammar, and shown to matter: unmasked decoding breaks), and ARTIST's
injection is the identity at init while gradients reach the zero convs and never the frozen textual model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.models import artist as A
from jaxmm.models.text_encoder import TextEncoderConfig
from jaxmm.models.unet import UNetConfig

SHAPE = (24, 48)


def test_layout_round_trip_contains_the_original_boxes():
    boxes = np.array([[3.2, 1.5, 20.7, 11.0], [25.0, 12.2, 47.9, 23.6]], np.float32)
    ids = A.encode_layout(["tiger", "42"], boxes, SHAPE)
    assert ids[-1] == A.EOS and len(ids) == 5 + 4 + 2 + 4 + 1
    words, got = A.decode_layout(ids, SHAPE)
    assert words == ["tiger", "42"]
    cell = np.array([SHAPE[1], SHAPE[0]] * 2) / (A.NUM_BINS - 1)
    assert np.all(got[:, :2] <= boxes[:, :2]) and np.all(got[:, 2:] >= boxes[:, 2:])   # quantised outwards
    assert np.all(np.abs(got - boxes) <= cell)                                             # by less than a cell
    assert A.decode_layout(ids[:-3], SHAPE) is None                                        # an unfinished box
    with pytest.raises(ValueError, match="text"):
        A.encode_text("tiger!")


def _reference_allowed(prefix, remaining, max_chars):
    """Plain-Python grammar: which next tokens keep `prefix` completable to a valid layout in `remaining` tokens."""
    if A.EOS in prefix:
        return {A.PAD}
    chars, coords, words = 0, [], 0
    for t in prefix:
        if A.CHAR0 <= t < A.COORD0:
            chars += 1
        else:
            coords.append(t - A.COORD0)
            if len(coords) == 4:
                chars, coords, words = 0, [], words + 1
    out = set()
    letters = range(A.CHAR0, A.COORD0)
    if not coords:
        if chars < max_chars and remaining >= 6:
            out |= set(letters)
        if chars >= 1 and remaining >= 5:
            out |= {A.COORD0 + q for q in range(A.NUM_BINS - 1)}
        if chars == 0 and words >= 1:
            out.add(A.EOS)
    elif len(coords) == 1:
        out |= {A.COORD0 + q for q in range(A.NUM_BINS - 1)}
    elif len(coords) == 2:
        out |= {A.COORD0 + q for q in range(coords[0] + 1, A.NUM_BINS)}
    else:
        out |= {A.COORD0 + q for q in range(coords[1] + 1, A.NUM_BINS)}
    return out


def test_grammar_mask_equals_a_python_grammar_on_random_walks():
    rng = np.random.default_rng(0)
    mask_fn = jax.jit(lambda s, r: A.layout_token_mask(s, r, max_chars=4))
    step_fn = jax.jit(A.layout_grammar_step)
    for _ in range(20):
        total, prefix, state = int(rng.integers(6, 30)), [], A.layout_grammar_init(1)
        for i in range(total):
            mask = np.asarray(mask_fn(state, jnp.int32(total - i)))[0]
            assert set(np.flatnonzero(mask)) == _reference_allowed(prefix, total - i, 4), prefix
            tok = int(rng.choice(np.flatnonzero(mask)))
            prefix.append(tok)
            state = step_fn(state, jnp.array([tok], jnp.int32))
        assert A.decode_layout(prefix, SHAPE) is not None


def test_constrained_greedy_always_parses_and_unmasked_does_not():
    table = jax.random.normal(jax.random.key(1), (A.VOCAB_SIZE, A.VOCAB_SIZE)) * 3

    def logits_fn(ids, mask):          # a random "bigram LM": the logits depend on the previous token only
        return table[ids]

    prompts = jax.random.randint(jax.random.key(2), (32, 5), A.CHAR0, A.COORD0)
    out = np.asarray(jax.jit(lambda p: A.constrained_greedy(logits_fn, p, jnp.ones_like(p), 14))(prompts))
    assert all(A.decode_layout(row, SHAPE) is not None for row in out)
    # the mask is not inert: the same model decoded without it breaks the format
    ids, bad, np_table = np.asarray(prompts), 0, np.asarray(table)
    for row in ids:
        seq = list(row)
        for _ in range(14):
            seq.append(int(np.argmax(np_table[seq[-1]])))
        bad += A.decode_layout(seq[5:], SHAPE) is None
    assert bad > 0
    with pytest.raises(ValueError, match="max_new"):
        A.constrained_greedy(logits_fn, prompts, jnp.ones_like(prompts), 3)


@pytest.fixture(scope="module")
def tiny():
    """One jitted program computes everything the two injection tests check (one compilation: CPU time)."""
    enc = TextEncoderConfig(vocab_size=A.VOCAB_SIZE, max_positions=16, d_model=8, num_layers=1, num_heads=1,
                            mlp_dim=16, eos_token_id=A.EOS)

    def unet(c):        # one level (mid block + one up block): the smallest UNet with both injection points
        return UNetConfig(in_channels=c, out_channels=c, block_out_channels=(8,), down_block_types=("DownBlock2D",),
                          up_block_types=("UpBlock2D",), num_attention_heads=1, cross_attention_dim=8,
                          norm_num_groups=4)
    visual, textual = A.ConditionalUNet(unet(3), enc), A.ConditionalUNet(unet(1), enc)
    model = A.Artist(textual, visual)
    k = jax.random.split(jax.random.key(0), 5)
    x, g = jax.random.normal(k[0], (2, 4, 4, 3)), jax.random.normal(k[1], (2, 4, 4, 1))
    t = jnp.array([3, 700])
    pids, lids = jax.random.randint(k[2], (2, 10), 1, A.VOCAB_SIZE), jax.random.randint(k[3], (2, 6), 1, A.VOCAB_SIZE)
    params = model.init(k[4], x, g, t, pids, lids)["params"]

    @jax.jit
    def run(params):
        out = lambda p, glyph: model.apply({"params": p}, x, glyph, t, pids, lids)[0]  # noqa: E731
        moved = dict(params, **{n: jax.tree.map(lambda a: a + 0.1, v) for n, v in params.items()
                                if n.startswith("inject")})
        return {"artist": out(params, g), "plain": visual.apply({"params": params["visual"]}, x, t, pids),
                "moved": out(moved, g), "moved_other_glyph": out(moved, -g),
                "grads": jax.grad(lambda p: jnp.sum(out(p, g) ** 2))(params)}
    return params, run(params)


def test_injection_is_the_identity_at_init_and_live_once_trained(tiny):
    params, r = tiny
    assert set(params) == {"textual", "visual", "inject_mid", "inject_up_0"}
    np.testing.assert_array_equal(np.asarray(r["artist"]), np.asarray(r["plain"]))
    assert float(jnp.abs(r["moved"] - r["plain"]).max()) > 1e-3
    # the textual branch drives it: another glyph input changes the visual output once the convs are non-zero
    assert float(jnp.abs(r["moved_other_glyph"] - r["moved"]).max()) > 1e-4


def test_gradients_reach_the_zero_convs_and_not_the_frozen_textual_model(tiny):
    _, r = tiny
    grads = r["grads"]
    norm = lambda tree: float(sum(jnp.sum(a ** 2) for a in jax.tree.leaves(tree)))  # noqa: E731
    for name in ("inject_mid", "inject_up_0"):
        assert norm(grads[name]["kernel"]) > 0, name
    assert norm(grads["textual"]) == 0.0
    assert norm(grads["visual"]) > 0


def test_greedy_boxes_for_words_forces_the_words_and_takes_the_grammatical_argmax():
    from jaxmm.models.artist import COORD0, NUM_BINS, VOCAB_SIZE, box_pixels, decode_layout, greedy_boxes_for_words

    rng = np.random.default_rng(0)
    table = rng.normal(size=(64, VOCAB_SIZE))           # logits depend on the position only
    table[:, COORD0] += 10.0                            # coordinate 0 always wins unless the grammar forbids it
    calls = []

    def logits_fn(ids):
        calls.append(ids.shape)
        return table[None, :ids.shape[1]]

    shape, words, prompt = (24, 48), ["ab", "c"], [2, 7, 8, 3]
    layout, boxes = greedy_boxes_for_words(logits_fn, prompt, words, shape)
    got_words, got_boxes = decode_layout(layout, shape)
    assert got_words == words
    np.testing.assert_allclose(got_boxes, boxes)
    # x0 = y0 = 0 (the boosted token); x1, y1 must exceed them: the argmax of the other coordinates, a python loop
    q = []
    pos = len(prompt)
    for w in words:
        pos += len(w)
        x1 = 1 + int(np.argmax(table[pos + 1, COORD0 + 1:COORD0 + NUM_BINS]))
        y1 = 1 + int(np.argmax(table[pos + 2, COORD0 + 1:COORD0 + NUM_BINS]))
        q.append((0, 0, x1, y1))
        pos += 4
    np.testing.assert_allclose(boxes, np.stack([box_pixels(v, shape) for v in q]))
    assert len(set(calls)) == 1 and len(calls) == 8      # one fixed length: one compilation
    with pytest.raises(ValueError, match="words"):
        greedy_boxes_for_words(logits_fn, prompt, ["a-b"], shape)
