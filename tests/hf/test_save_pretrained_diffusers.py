"""jaxmm.hf.save_pretrained routes a UNet / AutoencoderKL to diffusers' folder layout (jaxmm.hf.diffusers):
save -> jaxmm.hf.from_pretrained gives back the same config and every param bit for bit. Params are random
NumPy trees of the init's shapes (jax.eval_shape: no forward pass compiled)."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.hf import from_pretrained, save_pretrained
from jaxmm.models.unet import UNet, UNetConfig
from jaxmm.models.vae import AutoencoderKL, VAEConfig


def _random_params(module, *args):
    shapes = nn.meta.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)["params"])
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


CASES = {
    "unet": (UNet(UNetConfig(in_channels=3, out_channels=3, block_out_channels=(8, 16), num_attention_heads=2,
                             cross_attention_dim=12, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), freq_shift=1.0)),
             (jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,), jnp.int32), jnp.zeros((1, 5, 12)))),
    "vae": (AutoencoderKL(VAEConfig(block_out_channels=(8, 16), latent_channels=2)), (jnp.zeros((1, 8, 8, 3)),)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip(name, tmp_path):
    module, args = CASES[name]
    params = _random_params(module, *args)
    folder = save_pretrained(module, params, tmp_path / name, extra_config={"note": "jaxmm"})
    config = json.loads((tmp_path / name / "config.json").read_text())
    assert config["_class_name"] == ("UNet2DConditionModel" if name == "unet" else "AutoencoderKL")
    assert config["note"] == "jaxmm"
    loaded, got = from_pretrained(folder)
    assert type(loaded) is type(module) and loaded.config == module.config
    flat_a = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_b = dict(jax.tree_util.tree_flatten_with_path(nn.meta.unbox(got))[0])
    assert len(flat_a) == len(flat_b)
    for path, a in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_b[path]), a, err_msg=jax.tree_util.keystr(path))


def test_refusals(tmp_path):
    module, args = CASES["unet"]
    params = _random_params(module, *args)
    save_pretrained(module, params, tmp_path / "u")
    with pytest.raises(ValueError, match="folder"):
        save_pretrained(module, params, tmp_path / "u")
    save_pretrained(module, params, tmp_path / "u", overwrite=True)
    with pytest.raises(ValueError, match="architecture"):
        save_pretrained(module, params, tmp_path / "v", architecture="AutoencoderKL")
