"""Observability (train/tensorboard.py, train/perf.py): TensorBoard events read back with TensorBoard's own
reader equal metrics.jsonl (also across a resume), eval sample images with their captions, FLOPs from XLA's cost
analysis against the closed form, MFU arithmetic, the profiler window."""
from __future__ import annotations

import glob
import io
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator as ea

from train import config as config_lib
from train import loop, perf, tasks
from train import tensorboard as tb_lib
from train.metrics import read
from train.tasks import toy


def _events(workdir):
    acc = ea.EventAccumulator(workdir, size_guidance={ea.SCALARS: 0, ea.IMAGES: 0, ea.TENSORS: 0})
    acc.Reload()
    return acc


def _assert_scalars_equal_jsonl(workdir, acc):
    """Every number of every metrics.jsonl record is in TensorBoard once, at its step, with its value (float32)."""
    records = read(os.path.join(workdir, "metrics.jsonl"))
    checked = 0
    for rec in records:
        for key, value in rec.items():
            if key == "step" or not isinstance(value, (int, float)):
                continue
            events = [e for e in acc.Scalars(key) if e.step == rec["step"]]
            assert len(events) == 1, (key, rec["step"], events)
            assert events[0].value == np.float32(value), (key, rec["step"], events[0].value, value)
            checked += 1
    for key in acc.Tags()["scalars"]:  # and nothing else
        assert sorted(e.step for e in acc.Scalars(key)) == sorted(r["step"] for r in records if key in r), key
    return checked


# ------------------------------------------------------------------------------------------------ TensorBoard
def test_tensorboard_scalars_equal_metrics_jsonl_across_a_resume(tmp_path):
    workdir = str(tmp_path / "run")
    cfg = dict(**{"train.steps": 10, "train.eval_every": 5, "checkpoint.every": 5, "checkpoint.async_save": False})
    loop.train(toy.config(**cfg), workdir, "toy.classify")
    # a run killed after step 10 was logged but before its checkpoint: resume from 5 and log 6..10 again
    shutil.rmtree(os.path.join(workdir, "checkpoints", "10"))
    summary = loop.train(toy.config(**cfg), workdir, "toy.classify")
    assert summary["resumed_from"] == 5
    assert len(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))) == 2
    acc = _events(workdir)
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "train_accuracy", "examples_per_s", "tflops_per_s", "eval_loss", "eval_accuracy"} <= tags
    assert any(t.startswith("grad_norm/") for t in tags) and any(t.startswith("lr/") for t in tags)
    assert [e.step for e in acc.Scalars("loss")] == list(range(1, 11))  # the purge marker hid the first 6..10
    assert _assert_scalars_equal_jsonl(workdir, acc) > 100


def test_off_switches_tensorboard_profile_and_mfu_on_cpu(tmp_path):
    workdir = str(tmp_path / "run")
    summary = loop.train(toy.config(**{"train.steps": 2, "train.tensorboard": False}), workdir, "toy.classify")
    records = read(os.path.join(workdir, "metrics.jsonl"))
    assert records
    assert not glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
    assert not os.path.exists(os.path.join(workdir, "profile"))  # train.profile = () by default
    # CPU has no peak in the table: MFU is unknown (None, with the reason), never a number
    assert summary["mfu"] is None and "cpu" in summary["mfu_unknown"]
    assert not any("mfu" in r for r in records) and all(r["tflops_per_s"] > 0 for r in records if "loss" in r)


def _image(y) -> np.ndarray:
    img = np.zeros((8, 6, 3), np.uint8)
    img[..., int(y) % 3] = 60 * (int(y) + 1)
    img[2:4, 1:5] = 255
    return img


class ImageToy(toy.ToyClassify):
    """The toy classifier with an image per example and a predicted class per eval sample."""

    def datasets(self, config):
        train, evals = super().datasets(config)
        add = lambda ex: {**ex, "image": _image(ex["y"])}  # noqa: E731
        return train.map(add), evals.map(add)

    def sample_outputs(self, model, params, batch):
        return {"pred": jnp.argmax(model.apply({"params": params}, batch["x"]), -1)}

    def sample_text(self, batch, outputs):
        return [f"pred {p} ref {y}" for p, y in zip(outputs["pred"], batch["y"])]


def _gelu(x):  # jax.nn.gelu's default (tanh) form, float64
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def test_eval_samples_are_images_captioned_with_the_final_model_predictions(tmp_path):
    workdir = str(tmp_path / "run")
    n = 3
    summary, state = loop.train(toy.config(**{"train.steps": 4, "train.eval_samples": n}), workdir, ImageToy,
                                return_state=True)
    acc = _events(workdir)
    assert acc.Tags()["images"] == [f"eval_samples/{i}" for i in range(n)]
    # the reference: the eval examples and float64 NumPy logits of the final params
    c = toy.config()
    evals = toy.make_data(c.data.eval_examples, c.data.dim, c.model.classes, c.seed + 1)[:n]
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), state.params)
    enc, head = p["encoder"], p["head"]
    for i, ex in enumerate(evals):
        h = ex["x"] @ enc["kernel"] + enc["bias"] + (ex["x"] @ enc["lora_a"]) @ enc["lora_b"]
        pred = int(np.argmax(_gelu(h) @ head["kernel"] + head["bias"]))
        text = f"pred {pred} ref {ex['y']}"
        (event,) = acc.Images(f"eval_samples/{i}")
        assert event.step == 4
        png = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
        np.testing.assert_array_equal(png, tb_lib.captioned(_image(ex["y"]), text))
        (t,) = acc.Tensors(f"eval_samples/{i}/text_summary")
        assert t.tensor_proto.string_val[0].decode() == text
    # the image is the example's, scaled by an integer factor to >= 128 px, with the caption band below it
    png = np.asarray(Image.open(io.BytesIO(acc.Images("eval_samples/0")[0].encoded_image_string)).convert("RGB"))
    scale = 128 // 6 + 1
    np.testing.assert_array_equal(png[:8 * scale, :6 * scale], np.kron(_image(evals[0]["y"]),
                                                                       np.ones((scale, scale, 1), np.uint8)))
    assert png.shape[0] > 8 * scale and (png[8 * scale:] == 255).mean() > 0.5  # a mostly white caption band


def test_mllm_sample_text_decodes_question_prediction_and_reference():
    from configs import demo
    from train.tasks.mllm import MLLMQATask

    task = MLLMQATask(tasks.full_config(demo.get_config("tiny")))
    tok = task.tok
    pad = lambda ids, n: np.array(ids + [tok.pad_id] * (n - len(ids)), np.int32)  # noqa: E731
    batch = {"prompt_ids": np.stack([pad(tok.encode("how many words?"), 48)]),
             "answer_ids": np.stack([pad(tok.encode("2") + [tok.eos_id], 8)])}
    outputs = {"answer": np.stack([pad(tok.encode("3"), 9)])}
    assert task.sample_text(batch, outputs) == ["how many words? -> '3' (ref: '2')"]


# ------------------------------------------------------------------------------------------------ FLOPs and MFU
def test_compiled_flops_of_a_matmul_equal_2mnk_per_device():
    m, k, n = 64, 48, 40
    f = jax.jit(lambda x, w: x @ w)
    x, w = np.ones((m, k), np.float32), np.ones((k, n), np.float32)
    assert perf.compiled_flops(f, x, w) == pytest.approx(2 * m * n * k, rel=1e-3)
    # rows sharded over the 8 test devices: each device runs an [m/8, k] x [k, n] matmul
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    assert perf.compiled_flops(f, xs, w) == pytest.approx(2 * m * n * k / 8, rel=1e-3)


def test_flops_from_the_cost_analysis_forms():
    assert perf.flops_from_cost_analysis({"flops": 10.0, "bytes accessed": 3.0}) == 10.0
    assert perf.flops_from_cost_analysis([{"flops": 10.0}, {"flops": 5.0}]) == 15.0  # older JAX: a list
    assert perf.flops_from_cost_analysis([{"bytes accessed": 3.0}]) is None  # no flops entry
    assert perf.flops_from_cost_analysis({"flops": -1.0}) is None  # "unknown" on some backends
    assert perf.flops_from_cost_analysis(None) is None


def test_peak_flops_table():
    assert perf.peak_flops("NVIDIA H200", "bfloat16") == 989.4e12
    assert perf.peak_flops("NVIDIA H100 80GB HBM3", "float32") == 494.7e12
    assert perf.peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756e12
    assert perf.peak_flops("NVIDIA A100-SXM4-80GB", "bfloat16") == 312e12
    assert perf.peak_flops("TPU v5 lite", "bfloat16") == 197e12  # v5e, not v5p
    assert perf.peak_flops("TPU v5", "bfloat16") == 459e12
    assert perf.peak_flops("TPU v6 lite", "bfloat16") == 918e12
    assert perf.peak_flops("TPU v4", "float32") == 275e12
    assert perf.peak_flops("cpu", "bfloat16") is None
    with pytest.raises(ValueError, match="dtype"):
        perf.peak_flops("TPU v4", "float16")


def test_mfu_arithmetic_and_unknown():
    assert perf.mfu(2e12, 10, 4.0, 1e13) == pytest.approx(0.5)  # 2e13 FLOP in 4 s = 5e12 FLOP/s of 1e13
    assert perf.mfu(2e12, 10, 4.0, None) is None
    assert perf.mfu(None, 10, 4.0, 1e13) is None
    c = toy.config()
    assert perf.device_peak(c)[0] is None  # CPU: unknown, not a made-up number
    c.train.peak_flops_per_device = 3e12
    assert perf.device_peak(c) == (3e12, "config.train.peak_flops_per_device")


def test_run_reports_mfu_with_an_overridden_peak(tmp_path, caplog):
    peak = 2e9
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        summary = loop.train(toy.config(**{"train.steps": 6, "train.log_every": 2,
                                           "train.peak_flops_per_device": peak}), str(tmp_path / "a"), "toy.classify")
    # the FLOP count comes from the executable the steps run: the step is compiled once, not twice
    assert sum("Finished XLA compilation of jit(train_step)" in r.getMessage() for r in caplog.records) == 1
    records = [r for r in read(str(tmp_path / "a" / "metrics.jsonl")) if "loss" in r]
    flops = summary["step_flops_per_device"]
    assert flops > 0
    for r in records:
        # examples/s = batch * steps / dt and MFU = flops * steps / dt / peak: MFU from examples/s
        assert r["mfu"] == pytest.approx(flops * r["examples_per_s"] / 32 / peak, rel=1e-6)
        assert r["tflops_per_s"] == pytest.approx(r["mfu"] * peak / 1e12, rel=1e-9)
    assert summary["mfu"] == pytest.approx(np.mean([r["mfu"] for r in records]))
    assert summary["compile_s"] > 0


# ------------------------------------------------------------------------------------------------ profiler
def test_profile_window_writes_a_trace(tmp_path):
    workdir = str(tmp_path / "run")
    loop.train(toy.config(**{"train.steps": 4, "train.profile": (2, 2)}), workdir, "toy.classify")
    traces = glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*", "*.xplane.pb"))
    assert traces and all(os.path.getsize(t) > 0 for t in traces)


@pytest.mark.parametrize("window", [(0, 2), (2, 0), (1, 2, 3), (1.5, 2)])
def test_bad_profile_window_fails_naming_the_key(window):
    c = toy.config()
    c.train.profile = window
    with pytest.raises(ValueError, match=r"config\.train\.profile"):
        config_lib.fill(c, toy.ToyClassify().default_config())


def test_tensorboard_writes_a_gs_workdir_through_epath(tmp_path):
    """A gs:// logdir goes through etils.epath (here mocked onto tmp_path: bucket paths -> local paths)."""
    from etils.epath import testing

    local = lambda p: str(tmp_path / os.fspath(p).removeprefix("gs://"))  # noqa: E731
    redirect = lambda fn, p, *a, **k: fn(local(p), *a, **k)  # noqa: E731
    with testing.mock_epath(open=redirect, mkdir=redirect, makedirs=redirect, exists=redirect):
        writer = tb_lib.Writer("gs://bucket/run")
        writer.write(1, {"loss": 2.5, "lr/llm": 1e-3})
        writer.write(2, {"loss": 1.25, "lr/llm": 5e-4})
        writer.close()
    acc = _events(str(tmp_path / "bucket" / "run"))
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 2.5), (2, 1.25)]
    assert [e.value for e in acc.Scalars("lr/llm")] == [np.float32(1e-3), np.float32(5e-4)]
