"""Issue 14.7: CoMMIT's Δ snapshot (`TrainState.extra["lead_update"]`, the aux loss's target, param-shaped) is
sharded like the params instead of replicated on every device, and the run's numbers do not change: the same tiny
run on a (data 1, fsdp 2, tensor 4) mesh of 8 CPU devices and on one device (where sharded and replicated are the
same placement, i.e. the numbers of the replicated snapshot) gives the same κ, losses and Δ."""
from __future__ import annotations

import importlib.util
import os
import pathlib

import jax
import numpy as np
import pytest

from train import loop, tasks
from train.metrics import read
from train.tasks.commit import CommitTask

CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "commit.py"


def _config():
    spec = importlib.util.spec_from_file_location("commit_config", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("vision_tiny")


def _run(tmp_path, name, mesh):
    cfg = tasks.full_config(_config())  # the file gives only what differs
    cfg.train.steps, cfg.train.plots, cfg.mesh.shape = 2, False, mesh
    # SGD + momentum: linear in the gradient, so two meshes agree to float32 reordering (tests/train/trained_close.py)
    cfg.optim.update(dict(name="sgd", momentum=0.9, lr=0.05))
    # κ measured and κ̄ set after steps 1 and 2: step 2's loss has the aux term, whose target is the snapshot
    cfg.task_args.update(dict(method="commit", eval_generate=False, measure_every=1, lr_every=1))
    wd = str(tmp_path / name)
    _, state = loop.train(cfg, wd, CommitTask, return_state=True)
    return {r["step"]: r for r in read(os.path.join(wd, "metrics.jsonl")) if "loss" in r}, state


def test_snapshot_is_sharded_like_the_params_and_kappa_is_unchanged(tmp_path):
    assert jax.device_count() == 8
    one, state1 = _run(tmp_path, "one", (1, 1, 1))
    eight, state8 = _run(tmp_path, "eight", (1, 2, 4))

    params, snap = state8.params, state8.extra["lead_update"]
    assert jax.tree.structure(snap) == jax.tree.structure(params)
    p_sh = [x.sharding for x in jax.tree.leaves(params)]
    s_sh = [x.sharding for x in jax.tree.leaves(snap)]
    for p, s, x in zip(p_sh, s_sh, jax.tree.leaves(params)):
        assert s.is_equivalent_to(p, x.ndim), (s, p)
    sharded = [s for s in s_sh if not s.is_fully_replicated]
    assert len(sharded) > len(s_sh) // 2  # the mesh shards most params (embed over fsdp, heads/mlp over tensor)
    # per device the snapshot now holds a fraction of the bytes it held replicated
    dev = jax.devices()[0]
    held = sum(sh.data.nbytes for x in jax.tree.leaves(snap) for sh in x.addressable_shards if sh.device == dev)
    total = sum(x.nbytes for x in jax.tree.leaves(snap))
    assert held < 0.5 * total, (held, total)

    # the numbers: κ, D_S, D_T at both measurements, step 2's aux loss (it reads the snapshot) and Δ itself. The
    # KLs are float32 sums over the vocabulary of p·(log p − log q) for a small step: another summation order moves
    # them by ~1e-8 absolute (measured: D_S = 1.6e-6 differs by 1.8e-8 between the meshes), so D_S/D_T get an
    # absolute tolerance of 1e-7 and κ = D_S / (D_S + D_T) one of 1e-7 / D_T ~ 1e-4; the losses are O(1)
    # and agree to float32 rounding
    assert one[1]["aux_loss"] == 0 and one[2]["aux_loss"] > 1e-6 and abs(one[1]["kappa"] - 0.5) > 1e-2
    for s in (1, 2):
        assert eight[s]["kappa"] == pytest.approx(one[s]["kappa"], rel=1e-4, abs=1e-4), s
        for k in ("d_s", "d_t"):
            assert eight[s][k] == pytest.approx(one[s][k], rel=1e-4, abs=1e-7), (s, k)
        for k in ("loss", "ce_loss", "aux_loss"):
            assert eight[s][k] == pytest.approx(one[s][k], rel=1e-4, abs=1e-6), (s, k)
    for a, b in zip(jax.tree.leaves(snap), jax.tree.leaves(state1.extra["lead_update"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)


def test_lr_rewrite_keeps_the_scale_placed_so_the_step_is_not_recompiled():
    """CoMMIT rewrites `lr_scale` (optim.set_lr_scales) between steps; the rewritten scalar must keep the state's
    sharding, else the jitted train step sees new input types and is traced and compiled again (it was, after the
    first κ measurement of every CoMMIT run). Counted: a jitted function of the state runs once per trace."""
    from jax.sharding import NamedSharding, PartitionSpec

    from train import optim

    cfg = tasks.full_config(_config())
    params = {"encoder": {"w": np.ones((2, 2), np.float32)}, "llm": {"w": np.ones((2, 2), np.float32)}}
    tx, _, groups = optim.make_optimizer(cfg, params)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    repl = NamedSharding(mesh, PartitionSpec())
    state = jax.device_put(tx.init(params), repl)
    traces = []

    @jax.jit
    def touch(s):
        traces.append(1)
        return jax.tree.map(lambda x: x, s)

    touch(state)
    new = optim.set_lr_scales(state, {"encoder": 0.5, "llm": 2.0})
    touch(new)
    assert len(traces) == 1, "set_lr_scales changed the state's input types: the train step would recompile"
    assert {g: float(v) for g, v in optim.lr_scales(new, groups).items()} == {"encoder": 0.5, "llm": 2.0}
