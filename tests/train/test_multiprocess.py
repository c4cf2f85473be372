"""The trainer as users launch it (`python -m train ...` subprocesses): a 2-process run (4 CPU devices each,
gloo on loopback) equals the 8-device run, and a run killed with SIGKILL after a checkpoint and re-run writes
exactly the metrics.jsonl loss records and final params of an uninterrupted run."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from train import loop
from train.metrics import read
from train.tasks import get, toy
from trained_close import SGD, assert_losses_close, assert_params_close

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "tests", "train", "toy_config.py")


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", PYTHONPATH=ROOT)
    return env


def _cmd(workdir, *flags):
    return [sys.executable, "-m", "train", f"--config={CONFIG}", f"--workdir={workdir}", *flags]


def _losses(workdir):
    return [(r["step"], r["loss"]) for r in read(os.path.join(workdir, "metrics.jsonl")) if "loss" in r]


def _final_params(workdir, step):
    ckpt = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                 item_handlers=dict(state=ocp.StandardCheckpointHandler()))
    meta = ckpt.item_metadata(step)["state"]
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta)
    state = ckpt.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    ckpt.close()
    return {k: np.asarray(v) for k, v in _flat(state["params"]).items()}


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    steps = 5
    # SGD, not Adam: see tests/train/trained_close.py for the tolerance argument
    loop.train(toy.config(**{"train.steps": steps, "mesh.shape": (8, 1, 1), "checkpoint.async_save": False, **SGD}),
               str(tmp_path / "one"), get("toy.classify"))
    port = _free_port()
    procs = [subprocess.Popen(_cmd(tmp_path / "two", f"--config.train.steps={steps}", "--config.mesh.shape=(8,1,1)",
                                   *(f"--config.{k}={v}" for k, v in SGD.items()),
                                   f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"),
                              env=_env(4), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    assert "[summary]" in outs[0] and "eval_accuracy=" in outs[0]
    two, one = _losses(tmp_path / "two"), _losses(tmp_path / "one")
    assert [s for s, _ in two] == list(range(1, steps + 1))
    assert_losses_close([l for _, l in two], [l for _, l in one])
    assert_params_close(_final_params(tmp_path / "two", steps), _final_params(tmp_path / "one", steps), "2 processes")


def test_sigkill_and_rerun_equals_uninterrupted(tmp_path):
    flags = ["--config.train.steps=16", "--config.checkpoint.every=4", "--config.checkpoint.keep=10",
             "--config.mesh.shape=(2,1,1)", "--config.model.dropout=0.2", "--config.task_args.sleep_s=0.25"]
    env = _env(2)
    full = subprocess.run(_cmd(tmp_path / "full", *flags), env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=240)
    assert full.returncode == 0, full.stdout[-2000:] + full.stderr[-3000:]

    victim = subprocess.Popen(_cmd(tmp_path / "killed", *flags), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 200
    while time.time() < deadline and not (ckpts / "8").is_dir():  # a finished (renamed) checkpoint
        assert victim.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    killed_at = max(s for s, _ in _losses(tmp_path / "killed"))
    assert 8 <= killed_at < 16, killed_at  # really killed mid-run, after step 8's checkpoint

    again = subprocess.run(_cmd(tmp_path / "killed", *flags), env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=240)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert "resumed_from=8" in again.stdout or "resumed_from=12" in again.stdout, again.stdout[-500:]
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "full")
    a, b = _final_params(tmp_path / "killed", 16), _final_params(tmp_path / "full", 16)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
