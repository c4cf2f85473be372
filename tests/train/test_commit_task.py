"""CoMMIT as a task of the shared trainer (train/tasks/commit.py), at toy size through `train.main.run`:
κ / D_S / D_T logged at the measurement steps, the scheduler's per-group LRs read back from metrics.jsonl and
checked against the rule recomputed here from the logged κ, the cosine-decay baselines decaying only their
side, CoMMIT-CLR keeping the LRs constant, and kill-and-resume repeating the run exactly."""
from __future__ import annotations

import importlib.util
import math
import os
import pathlib
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from train import config as config_lib
from train import loop, tasks
from train.main import run
from train.metrics import read
from train.task import Hook
from train.tasks.commit import CommitTask, group_sides, replicator

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _config_module(name: str):
    """configs/<name>.py as a module (configs/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_config", ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


commit_config = _config_module("commit")


def _full(config):
    """A config file's (partial) config completed with the trainer's and the task's defaults, unlocked."""
    return ml_collections.ConfigDict(tasks.full_config(config).to_dict())

LR = 2e-3
TIMING = ("examples_per_s", "tokens_per_s", "tflops_per_s", "mfu", "kappa_time_s")


def tiny(method, steps=8, **over):
    c = _full(commit_config.get_config("vision_tiny"))
    c.task_args.method = method
    c.task_args.eval_generate = False
    c.train.steps, c.train.plots = steps, False
    c.mesh.shape = (1, 1, 1)
    c.optim.lr = LR
    c.checkpoint.update(dict(every=0, keep=3, async_save=False))
    return config_lib.apply_overrides(c, over)


def _records(workdir):
    return {r["step"]: r for r in read(os.path.join(workdir, "metrics.jsonl")) if "loss" in r}


def test_commit_logs_kappa_and_scheduler_follows_rule_and_resume_is_exact(tmp_path):
    cfg = tiny("commit", **{"checkpoint.every": 4})  # κ every 2 steps, LRs rewritten every 4
    wd = str(tmp_path / "commit")
    summary = run(cfg, wd)
    recs = _records(wd)
    assert sorted(recs) == list(range(1, 9))
    lo, hi = cfg.task_args.lr_clip
    for s in (2, 4, 6, 8):
        r = recs[s]
        assert r["d_s"] >= 0 and r["d_t"] > 0
        assert r["kappa"] == pytest.approx(r["d_s"] / (r["d_s"] + r["d_t"]), rel=1e-5)
        assert {"lr/encoder", "lr/projector", "lr/llm", "grad_norm/encoder", "grad_norm/llm"} <= set(r)
    for s in (1, 3, 5, 7):
        assert "kappa" not in recs[s]
    # window means and the rule η_S = η0 clip(2(1−κ̄)), η_T = η0 clip(2κ̄), read back from the logged LRs
    kbar4 = (recs[2]["kappa"] + recs[4]["kappa"]) / 2
    kbar8 = (recs[6]["kappa"] + recs[8]["kappa"]) / 2
    assert recs[4]["kappa_bar"] == pytest.approx(kbar4, rel=1e-6)
    assert recs[8]["kappa_bar"] == pytest.approx(kbar8, rel=1e-6)
    enc = LR * min(max(2 * (1 - kbar4), lo), hi)
    llm = LR * min(max(2 * kbar4, lo), hi)
    for s in range(1, 5):
        assert recs[s]["lr/encoder"] == pytest.approx(LR, rel=1e-6)
        assert recs[s]["lr/llm"] == pytest.approx(LR, rel=1e-6)
    for s in range(5, 9):
        assert recs[s]["lr/encoder"] == pytest.approx(enc, rel=1e-5)
        assert recs[s]["lr/projector"] == pytest.approx(enc, rel=1e-5)
        assert recs[s]["lr/llm"] == pytest.approx(llm, rel=1e-5)
    assert abs(kbar4 - 0.5) > 1e-3  # otherwise the check above cannot tell the rule from a constant LR
    # aux loss: zero while κ̄ = 0.5 (no lagging side); once κ̄ departs from 0.5 it is positive at EVERY step,
    # including the steps right after a measurement (5, 7), where the old snapshot loss was exactly zero
    for s in range(1, 5):
        assert recs[s]["aux_loss"] == 0.0
    for s in range(5, 9):
        assert recs[s]["aux_loss"] > 1e-9
    for s in range(5, 9):
        assert recs[s]["loss"] == pytest.approx(recs[s]["ce_loss"] + recs[s]["aux_loss"], rel=1e-5, abs=1e-7)
    assert summary["kappa_mean"] == pytest.approx(np.mean([recs[s]["kappa"] for s in (2, 4, 6, 8)]), rel=1e-6)
    assert summary["kappa_measurements"] == 4

    # kill after step 4's checkpoint (drop the newest one) and re-run: κ, κ̄ window, snapshot and LRs resume
    shutil.rmtree(os.path.join(wd, "checkpoints", "8"))
    again = run(cfg, wd)
    assert again["resumed_from"] == 4
    resumed = _records(wd)
    assert sorted(resumed) == list(range(1, 9))
    for s in range(1, 9):
        a = {k: v for k, v in recs[s].items() if k not in TIMING}
        b = {k: v for k, v in resumed[s].items() if k not in TIMING}
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-9), (s, k)


@pytest.mark.parametrize("method,decayed,constant", [("feature_cd", ("encoder", "projector"), ("llm",)),
                                                     ("language_cd", ("llm",), ("encoder", "projector"))])
def test_cosine_decay_baselines_decay_only_their_side(tmp_path, method, decayed, constant):
    steps = 6
    cfg = tiny(method, steps=steps, **{"task_args.measure_every": 0, "task_args.cd_min_ratio": 0.1})
    run(cfg, str(tmp_path / method))
    recs = _records(str(tmp_path / method))
    for s in range(1, steps + 1):
        # update s uses the factor set after step s−1: 0.1 + 0.9·½(1 + cos(π (s−1)/T))
        factor = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 1) / steps))
        for g in decayed:
            assert recs[s][f"lr/{g}"] == pytest.approx(LR * factor, rel=1e-5), (s, g)
        for g in constant:
            assert recs[s][f"lr/{g}"] == pytest.approx(LR, rel=1e-6), (s, g)
        assert "kappa" not in recs[s]


def test_commit_clr_keeps_lrs_constant_and_adds_the_aux_loss(tmp_path):
    run(tiny("commit_clr"), str(tmp_path / "clr"))
    recs = _records(str(tmp_path / "clr"))
    for s in range(1, 9):
        for g in ("encoder", "projector", "llm"):
            assert recs[s][f"lr/{g}"] == pytest.approx(LR, rel=1e-6)
    kbar = recs[4]["kappa_bar"]
    assert kbar == pytest.approx((recs[2]["kappa"] + recs[4]["kappa"]) / 2, rel=1e-6)
    assert all(recs[s]["aux_loss"] > 1e-9 for s in range(5, 9)) and "lr_scale/encoder_side" not in recs[4]


def test_aux_gradient_reaches_only_the_lagging_side_in_the_trainer(tmp_path):
    """commit_clr and constant follow the same trajectory up to step 4 (κ̄ = 0.5, aux weight 0, same LRs); at
    step 5 κ̄ ≈ 0 (the encoder lags), so the aux gradient changes the encoder side's gradient and leaves the
    LLM's untouched."""
    run(tiny("commit_clr"), str(tmp_path / "clr"))
    run(tiny("constant"), str(tmp_path / "const"))
    clr, const = _records(str(tmp_path / "clr")), _records(str(tmp_path / "const"))
    assert clr[4]["kappa_bar"] < 0.5
    for s in range(1, 5):
        for g in ("encoder", "projector", "llm"):
            assert clr[s][f"grad_norm/{g}"] == pytest.approx(const[s][f"grad_norm/{g}"], rel=1e-4), (s, g)
    assert clr[5]["grad_norm/llm"] == pytest.approx(const[5]["grad_norm/llm"], rel=1e-4)
    moved = max(abs(clr[5][f"grad_norm/{g}"] / const[5][f"grad_norm/{g}"] - 1) for g in ("encoder", "projector"))
    assert moved > 1e-3, moved


def _captured_ctx(tmp_path):
    """Train CommitTask with one more hook that keeps the HookContext of the last step, to drive its hooks on a
    fixed model; returns (that run's task object, the context)."""
    captured = {}

    class _CaptureTask(CommitTask):
        def hooks(self, config):
            return super().hooks(config) + [Hook(config.train.steps, lambda ctx: captured.update(ctx=ctx) or {},
                                                 "capture")]

    loop.train(tiny("commit"), str(tmp_path / "capture"), _CaptureTask)
    return captured["ctx"].task, captured["ctx"]


def test_kappa_does_not_depend_on_the_multipliers_and_the_controller_settles(tmp_path):
    task, ctx = _captured_ctx(tmp_path)
    settings = [(1.0, 1.0), (2.0, 0.1), (0.1, 2.0)]

    def kappas(mode):
        c = ml_collections.ConfigDict(ctx.config.to_dict())
        c.task_args.kappa_lr = mode
        measure, out = task._measure_hook(c, replicator()), []
        for s_s, s_t in settings:
            task._scale_sides(ctx, {"encoder_side": s_s, "llm_side": s_t})
            out.append(measure(ctx)["kappa"])
            assert ctx.lr_scales()["llm"] == pytest.approx(s_t)  # the measurement restores the multipliers
        return out

    base = kappas("base")
    assert 0 < base[0] < 0.5
    np.testing.assert_allclose(base, base[0], rtol=1e-5)
    cur = kappas("current")  # the old measurement: κ follows the multipliers (KL ∝ step²)
    assert cur[1] > 10 * cur[0] > 10 * cur[2]

    # the controller on this fixed model (params, probe and optimizer state never change; only the hooks run):
    # it acts (multipliers leave 1) and settles — the same multipliers window after window, no alternation
    task._scale_sides(ctx, {"encoder_side": 1.0, "llm_side": 1.0})
    copy = replicator()
    measure, schedule = task._measure_hook(ctx.config, copy), task._schedule_hook(ctx.config, copy)
    trace = []
    for _ in range(6):
        for _ in range(2):  # lr_every / measure_every measurements per window
            measure(ctx)
        r = schedule(ctx)
        trace.append((r["lr_scale/encoder_side"], r["lr_scale/llm_side"]))
    assert trace[-1][0] > 1.5 and trace[-1][1] < 0.5
    for s_enc, s_llm in trace[1:]:
        assert s_enc == pytest.approx(trace[-1][0], abs=1e-3) and s_llm == pytest.approx(trace[-1][1], abs=1e-3)


def test_config_typos_and_bad_switches_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"config\.task_args\.method"):
        run(tiny("comit"), str(tmp_path / "a"))
    with pytest.raises(ValueError, match=r"config\.task_args\.measure_every"):
        run(tiny("commit", **{"task_args.measure_every": 0}), str(tmp_path / "b"))
    with pytest.raises(ValueError, match=r"config\.task_args\.lr_clip"):
        run(tiny("commit", **{"task_args.lr_clip": (2.0, 0.1)}), str(tmp_path / "c"))
    with pytest.raises(ValueError, match=r"config\.task_args\.kappa_lr"):
        run(tiny("commit", **{"task_args.kappa_lr": "scaled"}), str(tmp_path / "d"))
    with pytest.raises(ValueError, match=r"variant"):
        commit_config.get_config("video")


def test_group_sides_follow_the_parameter_paths():
    labels = {"encoder": {"w": "encoder"}, "projector": {"w": "projector"},
              "llm": {"w": "llm", "q": {"lora_a": "lora"}}}
    side = {"encoder": {"w": True}, "projector": {"w": True}, "llm": {"w": False, "q": {"lora_a": False}}}
    assert group_sides(labels, side) == {"encoder": "encoder_side", "projector": "encoder_side",
                                         "llm": "llm_side", "lora": "llm_side"}
    labels["encoder"]["lora_b"], side["encoder"]["lora_b"] = "lora", True
    assert group_sides(labels, side)["lora"] == "mixed"


def test_demo_two_stages_run_and_stage2_starts_from_stage1s_encoder(tmp_path):
    """configs/demo.py (`make demo`), both stages chained as the Makefile does, at :stage1_tiny / :tiny size:
    stage 1 (vit_probe, word and colour heads) trains the ViT; stage 2 (CoMMIT) takes
    `model.init.from_workdir=<stage 1>:encoder`, keeps it frozen, measures κ and ends with the per-kind eval accuracies. Stage 2's encoder equals stage 1's
    checkpointed one bit for bit after training (an inert init would leave stage 2's own random init there; an
    unfrozen encoder would have moved)."""
    from train.checkpoint import read_params

    demo = _config_module("demo")
    full, s1_full = _full(demo.get_config()), _full(demo.get_config("stage1"))
    assert full.task == "commit.train" and full.task_args.method == "commit" and full.optim.groups.encoder.frozen
    assert s1_full.task == "vit_probe" and s1_full.data.target == "word+color"
    assert (full.model.vit.image_size, full.model.vit.patch_size) == (32, 4)
    assert {k: full.model.vit[k] for k in demo.VIT} == {k: s1_full.model[k] for k in demo.VIT} == demo.VIT
    with pytest.raises(ValueError, match="variant"):
        demo.get_config("huge")
    s1 = _full(demo.get_config("stage1_tiny"))
    s1.mesh.shape, s1.checkpoint.async_save = (1, 1, 1), False
    wd1 = str(tmp_path / "stage1")
    s1_summary = run(s1, wd1)  # two heads (word, colour): both accuracies, the overall one their mean
    np.testing.assert_allclose(s1_summary["eval_accuracy"], (s1_summary["eval_accuracy/word"]
                                                             + s1_summary["eval_accuracy/color"]) / 2, atol=1e-3)
    c = _full(demo.get_config("tiny"))
    c.model.init.from_workdir = f"{wd1}:encoder"
    c.mesh.shape, c.checkpoint.async_save = (1, 1, 1), False
    wd = str(tmp_path / "demo")
    summary = run(c, wd)
    assert 0.0 <= summary["eval_accuracy"] <= 1.0
    assert {"eval_accuracy/count", "eval_accuracy/color", "eval_accuracy/read"} <= set(summary)
    assert summary["kappa_measurements"] == 1 and 0.0 <= summary["kappa_last"] <= 1.0
    assert os.path.isfile(os.path.join(wd, "metrics.jsonl"))
    enc1 = read_params(os.path.join(wd1, "checkpoints"), ["encoder"])[1]["encoder"]
    step, p2 = read_params(os.path.join(wd, "checkpoints"), ["encoder", "projector"])
    assert step == c.train.steps
    flat1, flat2 = jax.tree_util.tree_flatten_with_path(enc1)[0], jax.tree_util.tree_flatten_with_path(p2["encoder"])[0]
    assert [p for p, _ in flat1] == [p for p, _ in flat2]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(flat1, flat2))
