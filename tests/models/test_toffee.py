"""jaxmm.models.toffee: conditioning shapes, null rows, the λ knob's closed form; jaxmm.data.subjects' pair makers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.data import subjects as S
from jaxmm.models import toffee as T
from jaxmm.models.unet import UNetConfig

B, H = 2, 8


@pytest.fixture(scope="module")
def net_params():
    u = UNetConfig(in_channels=3 + 5, out_channels=3, block_out_channels=(8, 8), num_attention_heads=2,
                   cross_attention_dim=8, norm_num_groups=4)
    net = T.SubjectUNet(T.SubjectUNetConfig(unet=u, dino_dim=6, vocab_size=len(S.VOCAB), text_len=5))
    rng = np.random.default_rng(0)
    args = (jnp.asarray(rng.normal(size=(B, H, H, 3)), jnp.float32), jnp.array([3, 500]),
            jnp.asarray(rng.normal(size=(B, H, H, 5)), jnp.float32), jnp.asarray(rng.normal(size=(B, 4, 6)), jnp.float32),
            jnp.asarray(rng.integers(1, len(S.VOCAB), (B, 5)), jnp.int32))
    params = jax.jit(net.init)(jax.random.key(0), *args)["params"]
    return Jitted(net), params, args


class Jitted:
    """net.apply compiled once per argument structure (eager op-by-op dispatch is the slow part on CPU)."""

    def __init__(self, net):
        self.apply = jax.jit(net.apply)


def test_conditioning_shapes_and_each_condition_matters(net_params):
    net, params, (x, t, cond, tok, ids) = net_params
    y = net.apply({"params": params}, x, t, cond, tok, ids)
    assert y.shape == (B, H, H, 3)
    on, off = jnp.ones(B, bool), jnp.zeros(B, bool)
    diff = lambda a, b: float(jnp.abs(a - b).max())  # noqa: E731
    assert diff(y, net.apply({"params": params}, x, t, cond, tok, ids, use_subject=on, use_text=on)) == 0
    assert diff(y, net.apply({"params": params}, x, t, cond, tok, ids, use_subject=off, use_text=on)) > 1e-6
    assert diff(y, net.apply({"params": params}, x, t, cond, tok, ids, use_subject=on, use_text=off)) > 1e-6
    assert diff(y, net.apply({"params": params}, x, t, cond * 0, tok, ids)) > 1e-6
    assert diff(y, net.apply({"params": params}, x, t, cond, tok[..., ::-1], ids)) > 1e-6
    # a dropped subject ignores the tokens entirely
    a = net.apply({"params": params}, x, t, cond, tok, ids, use_subject=off)
    b = net.apply({"params": params}, x, t, cond, tok[..., ::-1], ids, use_subject=off)
    assert diff(a, b) == 0


def test_lambda_guidance_closed_form(net_params):
    net, params, (x, t, cond, tok, ids) = net_params
    rep = lambda a: jnp.concatenate([a, a, a])  # noqa: E731

    def fn(xx, tt, us, ut):
        return net.apply({"params": params}, xx, tt, rep(cond), rep(tok), rep(ids), None, us, ut)
    on, off = jnp.ones(B, bool), jnp.zeros(B, bool)
    full = net.apply({"params": params}, x, t, cond, tok, ids, use_subject=on, use_text=on)
    text = net.apply({"params": params}, x, t, cond, tok, ids, use_subject=off, use_text=on)
    unc = net.apply({"params": params}, x, t, cond, tok, ids, use_subject=off, use_text=off)
    for lam, ts in ((0.0, 1.0), (1.0, 1.0), (2.5, 3.0)):
        got = T.lambda_guidance(fn, lam, ts)(x, t)
        want = np.asarray(unc, np.float64) + ts * (np.asarray(text) - np.asarray(unc)) + lam * (
            np.asarray(full) - np.asarray(text))
        np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(T.lambda_guidance(fn, 1.0)(x, t), full, atol=1e-5)   # λ = 1: the plain model
    np.testing.assert_allclose(T.lambda_guidance(fn, 0.0)(x, t), text, atol=1e-5)   # λ = 0: text only


def test_bad_conditions_name_the_argument(net_params):
    net, params, (x, t, cond, tok, ids) = net_params
    with pytest.raises(ValueError, match="cond_image"):
        net.apply({"params": params}, x, t, cond[..., :4], tok, ids)
    with pytest.raises(ValueError, match="subject_tokens"):
        net.apply({"params": params}, x, t, cond, tok[..., :5], ids)
    with pytest.raises(ValueError, match="text_ids"):
        net.apply({"params": params}, x, t, cond, tok, ids[:, :3])


def test_view_features_closed_form():
    f = np.asarray(T.view_features(jnp.array([90.0, 0.0]), jnp.array([0.0, 30.0])))
    np.testing.assert_allclose(f, [[1, 0, 0, 1], [0, 1, 0.5, np.sqrt(3) / 2]], atol=1e-6)


def test_pair_makers():
    rng = np.random.default_rng(0)
    s, o = S.random_subject(rng), S.random_subject(rng)
    g = S.toffee_example(s, o, rng, 16, kind="generation")
    assert g["source"].max() == 0 and g["mask"].max() == 0 and g["target"].shape == (16, 16, 3)
    e = S.toffee_example(s, o, rng, 16, kind="editing")
    assert e["mask"].sum() > 0 and e["mask"].shape == (16, 16) and not np.array_equal(e["source"], e["target"])
    # outside the edit mask the source and the target share the background exactly (only the object changes)
    out = e["mask"] == 0
    np.testing.assert_array_equal(e["source"][out], e["target"][out])
    r = S.toffee_example(s, o, rng, 16, kind="generation", reconstruction=True)
    np.testing.assert_array_equal(r["reference"], r["target"])
    assert not np.array_equal(g["reference"], g["target"])
    d = S.draft(s, S.View(), S.Background(), 16)
    full = S.render(s, S.View(), S.Background(), 16)
    assert np.array_equal(d["mask"], full["mask"])
    assert S.encode_caption("a red box zebra", 6).tolist() == [S.VOCAB.index("a"), S.VOCAB.index("red"),
                                                               S.VOCAB.index("box"), 1, 0, 0]
    with pytest.raises(ValueError, match="kind"):
        S.toffee_example(s, o, rng, 16, kind="inpaint")
