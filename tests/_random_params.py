"""Random parameters for a Linen module without `module.init`: tiny models' jitted init spends ~50 s on CPU
compiling the RNG of every parameter; this draws the same tree with NumPy in milliseconds."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def random_params(module, *args, seed: int = 0):
    """Params shaped as module.init(key, *args) gives them: kernels N(0, 1/fan_in), norm scales 1 + 0.1 N,
    biases 0.1 N (not the default zeros/ones, so a reference that ignores one of them fails)."""
    shapes = nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), *args)["params"])
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = path[-1].key
        if name == "kernel":
            return jnp.asarray(rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1])), jnp.float32)
        return jnp.asarray((name == "scale") + 0.1 * rng.normal(size=s.shape), jnp.float32)
    return jax.tree_util.tree_map_with_path(draw, shapes)
