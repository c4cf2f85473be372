"""Issue 14.7: the trainer traces the loss with the run's mesh and logical-axis rules in context, so a model's
activation sharding constraints (jaxmm BlockConfig.residual_axes, `nn.with_logical_constraint`) apply in training
(without the mesh in context Flax makes them no-ops), and a param-shaped `TrainState.extra` entry (an EMA) is
sharded like its param."""
from __future__ import annotations

import flax.linen as nn
import jax

from train import loop
from train.hooks import ema_hook
from train.tasks import toy


def test_the_loss_is_traced_under_the_mesh_and_rules_and_an_ema_is_sharded_like_the_params(tmp_path):
    seen = []

    class _Probe(toy.ToyClassify):
        def loss_fn(self, model, params, batch, rng, extra=None):
            x = batch["x"]
            seen.append((dict(jax.sharding.get_abstract_mesh().shape), nn.get_logical_axis_rules(), x))
            # what jaxmm's Stack does with residual_axes: a constraint that needs the mesh in context
            batch = {**batch, "x": nn.with_logical_constraint(x, ("batch", None))}
            return super().loss_fn(model, params, batch, rng, extra)

        def step_hooks(self, config):
            return [ema_hook(0.5)]

    c = toy.config(**{"train.steps": 2, "checkpoint.every": 0, "mesh.shape": (2, 4, 1)})
    _, state = loop.train(c, str(tmp_path / "w"), _Probe, return_state=True)
    assert seen
    mesh_shape, rules, _ = seen[0]
    assert mesh_shape == {"data": 2, "fsdp": 4, "tensor": 1}
    assert ("batch", ("data", "fsdp")) in tuple(rules)
    for p, e in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.extra["ema"])):
        assert e.sharding.is_equivalent_to(p.sharding, p.ndim)
    assert any(not p.sharding.is_fully_replicated for p in jax.tree.leaves(state.params))
