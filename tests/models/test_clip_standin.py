"""jaxmm.models.clip_standin: the symmetric InfoNCE loss and the towers against float64 NumPy, and the one encoder
against the two it replaced (ARTIST's `ImageTextEncoder`, Toffee's `TinyCLIP`, copied below as they were): the same
param tree (fast: Flax derives each param's init key from its path, so the same tree means the same initial
values), and (slow: eager inits of a transformer and a ViT cost ~15 CPU-s) the same initial values and embeddings,
so both experiments' numbers are unchanged."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.models.clip_standin import ContrastiveEncoder, contrastive_loss
from jaxmm.models.text_encoder import TextEncoder, TextEncoderConfig
from jaxmm.models.vit import ViT, ViTConfig


def _log_softmax64(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_contrastive_loss_is_symmetric_infonce_in_float64():
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(2, 5, 8))
    img /= np.linalg.norm(img, axis=-1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=-1, keepdims=True)
    logits = 7.0 * img @ txt.T
    want = -0.5 * (np.trace(_log_softmax64(logits)) + np.trace(_log_softmax64(logits.T))) / 5
    got = contrastive_loss(jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32), 7.0)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    # matched pairs score lower than shuffled ones
    assert float(contrastive_loss(jnp.asarray(img), jnp.asarray(img), 10.0)) < float(
        contrastive_loss(jnp.asarray(img), jnp.asarray(img[::-1]), 10.0))
    with pytest.raises(ValueError, match="text_embeds"):
        contrastive_loss(jnp.zeros((4, 8)), jnp.zeros((3, 8)), 1.0)


# ---------------------------------------------------------------------------------- the replaced modules, verbatim
class _OldImageTextEncoder(nn.Module):   # jaxmm/models/artist.py before the refactor
    encoder: TextEncoderConfig
    width: int = 32
    embed_dim: int = 64

    def setup(self):
        self.convs = [nn.Conv(c, (3, 3), strides=(2, 2)) for c in (self.width, 2 * self.width, 4 * self.width)]
        self.image_proj = nn.Dense(self.embed_dim)
        self.text = TextEncoder(self.encoder)
        self.text_proj = nn.Dense(self.embed_dim)
        self.logit_scale = self.param("logit_scale", lambda k: jnp.asarray(np.log(10.0), jnp.float32))

    def encode_image(self, images):
        h = images
        for conv in self.convs:
            h = nn.gelu(conv(h))
        h = self.image_proj(h.mean(axis=(1, 2)))
        return h / jnp.linalg.norm(h, axis=-1, keepdims=True)

    def __call__(self, images, ids):
        txt = self.text_proj(self.text(ids, (ids != 0).astype(jnp.int32))["pooler_output"])
        return (self.encode_image(images), txt / jnp.linalg.norm(txt, axis=-1, keepdims=True),
                jnp.exp(self.logit_scale))


class _OldTinyCLIP(nn.Module):   # train/tasks/toffee.py before the refactor ([0, 1] images)
    size: int
    vocab: int
    dim: int = 64

    @nn.compact
    def __call__(self, images, ids):
        vit = ViT(ViTConfig(image_size=self.size, patch_size=8, d_model=64, num_layers=2, num_heads=4, mlp_dim=128,
                            projection_dim=self.dim), name="vision")
        img = vit(images * 2 - 1)["image_embeds"]
        e = nn.Embed(self.vocab, 64, name="words")(ids)
        keep = (ids > 0)[..., None]
        txt = nn.Dense(self.dim, name="text_proj")((e * keep).sum(1) / jnp.maximum(keep.sum(1), 1))
        norm = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
        return norm(img), norm(txt)


def _ids(rng, vocab, n=3, length=7):
    ids = rng.integers(1, vocab, (n, length)).astype(np.int32)
    ids[0, 4:] = 0                      # padding
    ids[:, -1] = np.where(ids[:, -1] == 0, 0, 1)
    return jnp.asarray(ids)


_ENC = TextEncoderConfig(vocab_size=20, max_positions=8, d_model=16, num_layers=1, num_heads=2, mlp_dim=32,
                         eos_token_id=1)
_VIT = ViTConfig(image_size=16, patch_size=8, d_model=64, num_layers=2, num_heads=4, mlp_dim=128, projection_dim=64)


def _artist_pair():
    return (_OldImageTextEncoder(_ENC, width=8, embed_dim=12),
            ContrastiveEncoder(text_encoder=_ENC, width=8, embed_dim=12))


def _toffee_pair():
    return _OldTinyCLIP(16, 30), ContrastiveEncoder(vit=_VIT, vocab_size=30, width=64, embed_dim=64, temperature=0.07)


@pytest.mark.parametrize("pair", [_artist_pair, _toffee_pair])
def test_param_tree_equals_the_replaced_modules(pair):
    old, new = pair()
    args = (jax.random.key(0), jnp.zeros((2, 16, 16, 3)), jnp.ones((2, 7), jnp.int32))
    shapes = lambda m: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda p, x: (jax.tree_util.keystr(p), x.shape), jax.eval_shape(m.init, *args)["params"])
    assert jax.tree.leaves(shapes(new)) == jax.tree.leaves(shapes(old))


def test_conv_and_bag_of_words_towers_against_float64():
    model = ContrastiveEncoder(vocab_size=9, width=2, embed_dim=3, temperature=0.5)
    rng = np.random.default_rng(3)
    images = jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
    ids = jnp.asarray([[3, 5, 5, 0], [8, 0, 0, 0]], jnp.int32)
    p = model.init(jax.random.key(0), images, ids)["params"]
    i, t, s = model.apply({"params": p}, images, ids)
    f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
    gelu = lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))  # noqa: E731

    def conv(x, kernel, bias):   # 3x3 stride 2, SAME padding (Flax: pad 0 before, 1 after for even sizes)
        n, h, w, _ = x.shape
        xp = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        out = np.zeros((n, h // 2, w // 2, kernel.shape[-1]))
        for a in range(h // 2):
            for b in range(w // 2):
                patch = xp[:, 2 * a:2 * a + 3, 2 * b:2 * b + 3, :]
                patch = np.pad(patch, ((0, 0), (0, 3 - patch.shape[1]), (0, 3 - patch.shape[2]), (0, 0)))
                out[:, a, b] = np.einsum("nhwc,hwcd->nd", patch, kernel) + bias
        return out

    h = f64(images)
    for k in range(3):
        h = gelu(conv(h, f64(p[f"convs_{k}"]["kernel"]), f64(p[f"convs_{k}"]["bias"])))
    h = h.mean((1, 2)) @ f64(p["image_proj"]["kernel"]) + f64(p["image_proj"]["bias"])
    np.testing.assert_allclose(i, h / np.linalg.norm(h, axis=-1, keepdims=True), atol=1e-5)
    emb = f64(p["words"]["embedding"])
    bag = np.stack([emb[[3, 5, 5]].mean(0), emb[8]]) @ f64(p["text_proj"]["kernel"]) + f64(p["text_proj"]["bias"])
    np.testing.assert_allclose(t, bag / np.linalg.norm(bag, axis=-1, keepdims=True), atol=1e-5)
    assert float(s) == np.float32(2.0) and "logit_scale" not in p            # fixed: 1 / temperature


def _init_and_apply(old, new, old_images, new_images, ids):
    """Both modules initialised from one key; the new one applied with the old params. Eager: cheaper on CPU than
    compiling the four programs for one call each."""
    p_old = old.init(jax.random.key(0), old_images, ids)["params"]
    p_new = new.init(jax.random.key(0), new_images, ids)["params"]
    return p_old, p_new, new.apply({"params": p_old}, new_images, ids), old.apply({"params": p_old}, old_images, ids)


@pytest.mark.slow
def test_artist_configuration_equals_the_replaced_image_text_encoder():
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.uniform(-1, 1, (3, 16, 24, 3)), jnp.float32)
    ids = _ids(rng, 20)
    old, new = _artist_pair()
    p_old, p_new, (i, t, s), out_old = _init_and_apply(old, new, images, images, ids)
    jax.tree.map(np.testing.assert_array_equal, p_new, p_old)      # same tree, same initial values
    for a, b in zip((i, t, s), out_old):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(i, axis=-1), 1, rtol=1e-5)
    np.testing.assert_allclose(float(s), 10.0, rtol=1e-6)           # learned, exp(log 10) at init
    np.testing.assert_array_equal(new.apply({"params": p_new}, images, method=new.encode_image), i)


@pytest.mark.slow
def test_toffee_configuration_equals_the_replaced_tiny_clip():
    rng = np.random.default_rng(2)
    images = jnp.asarray(rng.uniform(0, 1, (3, 16, 16, 3)), jnp.float32)
    ids = _ids(rng, 30)
    old, new = _toffee_pair()
    p_old, p_new, (i, t, s), (oi, ot) = _init_and_apply(old, new, images, images * 2 - 1, ids)
    jax.tree.map(np.testing.assert_array_equal, p_new, p_old)
    np.testing.assert_array_equal(i, oi)
    np.testing.assert_array_equal(t, ot)
    assert "logit_scale" not in p_new and float(s) == np.float32(1 / 0.07)
    # the bag of words in float64: the mean embedding of the non-padding ids, projected, normalised
    emb, proj = (np.asarray(x, np.float64) for x in (p_new["words"]["embedding"], p_new["text_proj"]["kernel"]))
    want = []
    for row in np.asarray(ids):
        h = emb[row[row != 0]].mean(0) @ proj + np.asarray(p_new["text_proj"]["bias"], np.float64)
        want.append(h / np.linalg.norm(h))
    np.testing.assert_allclose(np.asarray(t), np.stack(want), atol=1e-5)


def test_bad_configuration_names_the_argument():
    with pytest.raises(ValueError, match="vit.projection_dim"):
        ContrastiveEncoder(vit=ViTConfig(image_size=16, projection_dim=32), vocab_size=5, embed_dim=64).init(
            jax.random.key(0), jnp.zeros((1, 16, 16, 3)), jnp.ones((1, 3), jnp.int32))
    with pytest.raises(ValueError, match="text_encoder / vocab_size"):
        ContrastiveEncoder().init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), jnp.ones((1, 3), jnp.int32))
    with pytest.raises(ValueError, match="images"):
        ContrastiveEncoder(vocab_size=5).init(jax.random.key(0), jnp.zeros((16, 16, 3)), jnp.ones((1, 3), jnp.int32))
