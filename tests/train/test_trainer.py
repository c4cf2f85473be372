"""The shared trainer (train/loop.py) on the toy task (train/tasks/toy.py): config checks, sharded = one device,
named groups (frozen, schedules, LR rewriting, accumulation), checkpoints (resume, corrupt fallback, new mesh)."""
from __future__ import annotations

import math
import os
import shutil

import jax
import ml_collections
import numpy as np
import optax
import pytest

from train import config as config_lib
from train import loop, optim
from train.metrics import read
from train.task import Hook
from train.tasks import get, toy
from trained_close import SGD, assert_losses_close, assert_params_close

TASK = get("toy.classify")


def _params(state):
    return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(x)
            for path, x in jax.tree_util.tree_flatten_with_path(state.params)[0]}


def _run(tmp_path, name, task=TASK, **overrides):
    summary, state = loop.train(toy.config(**overrides), str(tmp_path / name), task, return_state=True)
    return summary, state


def _losses(workdir):
    return [(r["step"], r["loss"]) for r in read(os.path.join(workdir, "metrics.jsonl")) if "loss" in r]


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("key,value,named", [
    ("train.stpes", 3, "config.train.stpes"),
    ("model.hiddn", 3, "config.model.hiddn"),
    ("optim.groups.encoder", ml_collections.ConfigDict(dict(lr=1e-3, frozn=True)), "config.optim.groups.encoder.frozn"),
    ("model", ml_collections.ConfigDict(dict(hidden="16", classes=4, lora_rank=2, dropout=0.0)), "config.model.hidden"),
])
def test_unknown_or_mistyped_key_fails_naming_it(tmp_path, monkeypatch, key, value, named):
    c = toy.config()
    c.unlock()
    node, *_ = c, None
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node.unlock()
    node[leaf] = value
    compiled = []
    monkeypatch.setattr(jax, "jit", lambda *a, **k: compiled.append(1))
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        loop.train(c, str(tmp_path / "w"), TASK)
    assert not compiled


def test_group_that_matches_no_parameter_fails(tmp_path):
    c = toy.config()
    c.optim.groups.encodr = config_lib.group(lr=1e-3)
    with pytest.raises(ValueError, match=r"config\.optim\.groups\.encodr"):
        loop.train(c, str(tmp_path / "w"), TASK)


def test_locked_config_rejects_new_keys():
    c = toy.config()
    c.lock()
    with pytest.raises(AttributeError, match="stpes"):
        c.train.stpes = 3


def test_param_groups_from_paths():
    assert optim.param_group(("llm", "block_0", "q", "lora_a")) == "lora"
    assert optim.param_group(("encoder", "attn", "ntk_features")) == "ntk"
    assert optim.param_group(("llm", "prefix_keys")) == "prefix"
    assert optim.param_group(("projector", "dense", "kernel")) == "projector"


# ------------------------------------------------------------------------------------------------ sharding
def test_meshes_match_one_device(tmp_path):
    # SGD, not Adam: see tests/train/trained_close.py for the tolerance argument
    base = {"mesh.shape": (1, 1, 1), "train.steps": 5, "checkpoint.every": 0, **SGD}
    _, ref = _run(tmp_path, "one", **base)
    ref_l = _losses(tmp_path / "one")
    for name, shape in [("dp", (8, 1, 1)), ("fsdp", (1, 8, 1)), ("tp", (1, 2, 4))]:
        _, st = _run(tmp_path, name, **{**base, "mesh.shape": shape})
        kernel = st.params["encoder"]["kernel"]
        assert len(kernel.sharding.device_set) == 8
        if name != "dp":  # really sharded, not replicated
            assert kernel.addressable_shards[0].data.size < kernel.size
        assert_losses_close([l for _, l in _losses(tmp_path / name)], [l for _, l in ref_l], name)
        assert_params_close(_params(st), _params(ref), name)


class _LocalRowsOnly(TASK):
    """The loss of a data-parallel step that forgot the cross-device mean: shard 0's rows only (a wrong
    sharding's typical effect)."""

    def loss_fn(self, model, params, batch, rng, extra=None):
        half = {k: v[: v.shape[0] // 2] for k, v in batch.items()}
        return super().loss_fn(model, params, half, rng, extra)


def test_comparison_catches_a_wrong_sharding(tmp_path):
    base = {"mesh.shape": (2, 1, 1), "train.steps": 5, "checkpoint.every": 0, **SGD}
    _, ref = _run(tmp_path, "ref", **base)
    _, wrong = _run(tmp_path, "wrong", task=_LocalRowsOnly, **base)
    with pytest.raises(AssertionError):
        assert_params_close(_params(wrong), _params(ref))
    gap = max(np.abs(v - _params(ref)[k]).max() for k, v in _params(wrong).items())
    assert gap > 100 * 1e-5, gap  # far outside the tolerance, not at its edge


# ------------------------------------------------------------------------------------------------ optimizer
def test_frozen_group_does_not_change_and_others_do(tmp_path):
    c = toy.config(**{"train.steps": 4, "checkpoint.every": 0})
    c.optim.groups.encoder = config_lib.group(frozen=True)
    _, st = loop.train(c, str(tmp_path / "f"), TASK, return_state=True)
    model = TASK(c).build_model(c)
    init_rng = jax.random.split(jax.random.PRNGKey(c.seed))[0]  # the loop's params key
    x0 = np.zeros((1, c.data.dim), np.float32)
    init = jax.tree.map(np.asarray, __import__("flax").linen.meta.unbox(model.init(init_rng, x0)["params"]))
    np.testing.assert_array_equal(np.asarray(st.params["encoder"]["kernel"]), init["encoder"]["kernel"])
    np.testing.assert_array_equal(np.asarray(st.params["encoder"]["bias"]), init["encoder"]["bias"])
    assert np.abs(np.asarray(st.params["head"]["kernel"]) - init["head"]["kernel"]).max() > 1e-3
    assert np.abs(np.asarray(st.params["encoder"]["lora_b"]) - init["encoder"]["lora_b"]).max() > 1e-3
    rec = read(str(tmp_path / "f" / "metrics.jsonl"))[0]
    assert rec["lr/encoder"] == 0.0


def test_group_schedules_logged_match_closed_form(tmp_path):
    c = toy.config(**{"train.steps": 10, "checkpoint.every": 0})
    c.optim.groups.head = config_lib.group(lr=0.1, schedule="warmup_cosine", warmup_steps=4, min_lr_ratio=0.1)
    c.optim.groups.lora = config_lib.group(lr=0.05, schedule="cosine")
    loop.train(c, str(tmp_path / "s"), TASK)
    recs = [r for r in read(str(tmp_path / "s" / "metrics.jsonl")) if "loss" in r]
    for r in recs:
        t = r["step"] - 1  # the LR used by update number t (0-based)
        head = 0.1 * t / 4 if t < 4 else 0.01 + 0.5 * (0.1 - 0.01) * (1 + math.cos(math.pi * (t - 4) / 6))
        lora = 0.05 * 0.5 * (1 + math.cos(math.pi * t / 10))
        assert r["lr/head"] == pytest.approx(head, rel=1e-5, abs=1e-8)
        assert r["lr/lora"] == pytest.approx(lora, rel=1e-5, abs=1e-8)
        assert r["lr/encoder"] == pytest.approx(c.optim.lr, rel=1e-6)


class _ScaleHook(TASK):
    """Halves the head's LR multiplier and sets the LoRA LR to 0.01 at step 2; records the proposed head
    update's norm."""

    def hooks(self, config):
        def fn(ctx):
            if ctx.step != 2:
                return {}
            u = ctx.proposed_updates()
            head_only = ctx.group_updates(u, "head")
            ctx.set_lr_scales({"head": 0.5})
            ctx.set_lrs({"lora": 0.01})
            return {"head_update_norm": float(optax.global_norm(head_only)),
                    "enc_in_head_update": float(optax.global_norm(head_only["encoder"]))}
        return [Hook(1, fn)]


def test_hook_rewrites_group_lr_and_sees_proposed_updates(tmp_path):
    _run(tmp_path, "h", task=_ScaleHook, **{"train.steps": 4, "checkpoint.every": 0})
    recs = [r for r in read(str(tmp_path / "h" / "metrics.jsonl")) if "loss" in r]
    lr = toy.config().optim.lr
    assert [r["lr/head"] for r in recs] == pytest.approx([lr, lr, lr / 2, lr / 2], rel=1e-6)
    assert [r["lr/encoder"] for r in recs] == pytest.approx([lr] * 4, rel=1e-6)
    assert [r["lr/lora"] for r in recs] == pytest.approx([lr, lr, 0.01, 0.01], rel=1e-6)
    assert recs[1]["head_update_norm"] > 0 and recs[1]["enc_in_head_update"] == 0.0


def test_gradient_accumulation_matches_full_batch(tmp_path):
    base = {"train.steps": 3, "checkpoint.every": 0, "mesh.shape": (2, 1, 1), **SGD}
    _, a = _run(tmp_path, "a1", **base)
    _, b = _run(tmp_path, "a4", **base, **{"train.grad_accum": 4})
    assert_losses_close([l for _, l in _losses(tmp_path / "a4")], [l for _, l in _losses(tmp_path / "a1")])
    assert_params_close(_params(b), _params(a), "grad_accum=4")


# ------------------------------------------------------------------------------------------------ checkpoints
def test_corrupt_newest_checkpoint_falls_back_with_warning(tmp_path):
    over = {"train.steps": 10, "checkpoint.every": 5, "checkpoint.keep": 3, "checkpoint.async_save": False,
            "mesh.shape": (2, 1, 1)}
    _, full = _run(tmp_path, "c", **over)
    expected = _losses(tmp_path / "c")
    newest = tmp_path / "c" / "checkpoints" / "10" / "state"
    for root, _, files in os.walk(newest):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "r+b") as fh:
                fh.truncate(os.path.getsize(p) // 3)
    with pytest.warns(UserWarning, match="step 10 .* unreadable"):
        summary, again = _run(tmp_path, "c", **over)
    assert summary["resumed_from"] == 5
    assert _losses(tmp_path / "c") == expected
    for k, v in _params(again).items():
        np.testing.assert_array_equal(v, _params(full)[k], err_msg=k)


def test_restore_onto_a_different_mesh(tmp_path):
    base = {"checkpoint.every": 5, "checkpoint.async_save": False, **SGD}
    _, ref = _run(tmp_path, "ref", **base, **{"train.steps": 8, "mesh.shape": (8, 1, 1)})
    _run(tmp_path, "m", **base, **{"train.steps": 5, "mesh.shape": (8, 1, 1)})
    summary, st = _run(tmp_path, "m", **base, **{"train.steps": 8, "mesh.shape": (1, 2, 4)})
    assert summary["resumed_from"] == 5
    assert st.params["encoder"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert_losses_close([l for _, l in _losses(tmp_path / "m")], [l for _, l in _losses(tmp_path / "ref")])
    assert_params_close(_params(st), _params(ref), "resumed on (1, 2, 4)")


def test_rerun_of_a_finished_run_resumes_at_the_end(tmp_path):
    over = {"train.steps": 5, "checkpoint.async_save": False, "mesh.shape": (1, 1, 1)}
    first = _run(tmp_path, "r", **over)[0]
    second = _run(tmp_path, "r", **over)[0]
    assert second["resumed_from"] == 5
    assert second["eval_accuracy"] == first["eval_accuracy"]
    assert len(_losses(tmp_path / "r")) == 5


def test_workdir_in_use_by_a_live_process_is_refused(tmp_path):
    import subprocess
    import sys

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.makedirs(tmp_path / "busy")
        (tmp_path / "busy" / "RUNNING.pid").write_text(str(other.pid))
        with pytest.raises(RuntimeError, match=f"pid {other.pid}"):
            loop.train(toy.config(), str(tmp_path / "busy"), TASK)
    finally:
        other.kill()
        other.wait()
    # the process is gone: its stale pid file does not block a rerun
    summary = loop.train(toy.config(**{"train.steps": 2, "mesh.shape": (1, 1, 1)}), str(tmp_path / "busy"), TASK)
    assert summary["steps"] == 2 and not (tmp_path / "busy" / "RUNNING.pid").exists()
