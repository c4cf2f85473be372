"""A `gs://` workdir end to end, against a fake GCS server (docs/RELIABILITY.md, "Remote paths").

The fake: `gcp-storage-emulator` (an in-memory GCS JSON API server) in a thread of the test process. Both
clients the trainer uses for a bucket talk to it: `etils.epath` through fsspec's `gcsfs` (config.json,
metrics.jsonl, plots, summary.json, RUNNING.pid, Orbax's small files; `STORAGE_EMULATOR_HOST`) and Orbax's
tensorstore GCS driver (the arrays; `TENSORSTORE_GCS_HTTP_URL`). So these runs write what they would write to a
bucket, with Orbax's own GCS atomicity (`commit_success.txt` markers, no rename), and read it back from there.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings

import jax
import numpy as np
import pytest
from etils import epath

from trained_close import assert_losses_close, assert_params_close
from train import loop
from train.metrics import MetricsWriter, read, write_atomic
from train.report import Reporter
from train.task import Hook
from train.tasks import get, toy

# gcsfs's event loop thread outlives a test's objects: "Event loop is closed" from a garbage-collected session
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
TASK = get("toy.classify")
RUN = {"train.steps": 10, "checkpoint.every": 5, "checkpoint.keep": 3, "mesh.shape": (1, 1, 1),
       "optim.name": "sgd", "optim.momentum": 0.9}


@pytest.fixture(scope="module")
def bucket():
    """`gs://bucket` served by an in-process fake GCS server (tests/train/fake_gcs.py) for this module's tests."""
    import fsspec
    import gcsfs
    from fake_gcs import serve
    from fsspec.registry import _registry

    # gcsfs's default (extended) file system first asks Google's storage-control API for the bucket type, a
    # request that never reaches the fake server (and hangs without network): use its core file system
    saved_impls = {name: _registry.get(name) for name in ("gs", "gcs")}
    for name in saved_impls:
        fsspec.register_implementation(name, gcsfs.core.GCSFileSystem, clobber=True)
    for name in ("gcp_storage_emulator", "gcsfs"):  # 404s of existence checks are logged as errors there
        logging.getLogger(name).setLevel(logging.CRITICAL)
    saved_conf = fsspec.config.conf.get("gcs")
    with serve("bucket") as url, pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORAGE_EMULATOR_HOST", url)  # gcsfs (behind epath)
        mp.setenv("TENSORSTORE_GCS_HTTP_URL", url)  # Orbax's tensorstore GCS driver
        mp.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "fake")  # tensorstore: no credential lookup
        mp.setenv("FSSPEC_GCS_TOKEN", "anon")  # gcsfs in a subprocess: no credential lookup
        mp.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # ... and its core file system
        fsspec.config.conf["gcs"] = {"token": "anon"}  # gcsfs here
        _clear_fs_caches()
        try:
            yield "gs://bucket"
        finally:
            if saved_conf is None:
                fsspec.config.conf.pop("gcs", None)
            else:
                fsspec.config.conf["gcs"] = saved_conf
            for name, impl in saved_impls.items():
                _registry.pop(name, None)
                if impl is not None:
                    _registry[name] = impl
            _clear_fs_caches()


def _clear_fs_caches():
    import gcsfs
    from etils.epath import backend

    backend.fsspec_backend._get_filesystem.cache_clear()
    gcsfs.GCSFileSystem.clear_instance_cache()


@pytest.fixture
def workdir(bucket, tmp_path, monkeypatch):
    """A fresh `gs://bucket/<unique>` run directory; the cwd is a local folder, to see no `gs:` folder lands there."""
    monkeypatch.chdir(tmp_path)
    yield f"{bucket}/{uuid.uuid4().hex[:10]}"
    assert not (tmp_path / "gs:").exists(), "a remote path was written as a local one"


def _losses(workdir):
    return [r["loss"] for r in read(f"{workdir}/metrics.jsonl") if "loss" in r]


def _names(path) -> list[str]:
    return sorted(p.name for p in epath.Path(path).iterdir())


def _files(path: epath.Path):
    for p in path.iterdir():
        yield from (_files(p) if p.is_dir() else [p])


class _CrashAtStep7(TASK):
    """Stops the run at step 7, while step 5's asynchronous save may still be uploading."""

    def hooks(self, config):
        def crash(ctx):
            if ctx.step == 7:
                raise RuntimeError("stopped at step 7")
        return [Hook(1, crash, name="crash")]


def test_gs_workdir_stopped_midway_resumes_to_the_uninterrupted_run(workdir, tmp_path):
    ref_summary, ref = loop.train(toy.config(**RUN), str(tmp_path / "local"), TASK, return_state=True)
    ref_losses = _losses(str(tmp_path / "local"))

    with pytest.raises(RuntimeError, match="stopped at step 7"):
        loop.train(toy.config(**RUN, **{"train.plots": True}), workdir, _CrashAtStep7)
    ckpts = f"{workdir}/checkpoints"
    assert _names(ckpts) == ["5"] and (epath.Path(ckpts) / "5" / "commit_success.txt").exists()
    # the remote metrics.jsonl was rewritten whole before the save of step 5: every record up to it is there
    assert [r["step"] for r in read(f"{workdir}/metrics.jsonl")] == [1, 2, 3, 4, 5]
    # a save cut off by a kill on GCS: a step directory without Orbax's commit marker, removed on the next start
    (epath.Path(ckpts) / "8" / "state").mkdir(parents=True)
    (epath.Path(ckpts) / "8" / "state" / "manifest.ocdbt").write_bytes(b"half")
    with pytest.warns(UserWarning, match=r"unfinished checkpoint save gs://bucket/.*/checkpoints/8"):
        summary, state = loop.train(toy.config(**RUN, **{"train.plots": True}), workdir, TASK, return_state=True)

    assert summary["resumed_from"] == 5
    assert_losses_close(_losses(workdir), ref_losses, "losses of the resumed gs:// run")
    assert len(ref_losses) == 10
    assert_params_close(state.params, ref.params, "params of the resumed gs:// run")
    assert summary["eval_accuracy"] == pytest.approx(ref_summary["eval_accuracy"], abs=1e-6)
    assert _names(ckpts) == ["10", "5"]
    assert {"config.json", "metrics.jsonl", "summary.json", "loss.png"} <= set(_names(workdir))
    assert "RUNNING.pid" not in _names(workdir)
    assert epath.Path(workdir, "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # ~40 s: a `python -m train` subprocess (JAX start-up) on top of two runs
def test_gs_workdir_sigkilled_midway_resumes_to_the_uninterrupted_run(workdir, tmp_path):
    """`python -m train --workdir gs://...` killed with SIGKILL after its step-4 checkpoint (a save of step 8 may
    be cut off mid-upload), then rerun: same losses and params as an uninterrupted local run."""
    over = {**RUN, "train.steps": 12, "checkpoint.every": 4, "checkpoint.keep": 5, "task_args.sleep_s": 0.3}
    ref_summary, ref = loop.train(toy.config(**over), str(tmp_path / "local"), TASK, return_state=True)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    flags = [f"--config.{k}={v}".replace(" ", "") for k, v in over.items()]
    victim = subprocess.Popen([sys.executable, "-m", "train", "--config=tests/train/toy_config.py",
                               f"--workdir={workdir}", *flags], cwd=root, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=root))
    marker = epath.Path(workdir, "checkpoints", "4", "commit_success.txt")
    deadline = time.time() + 200
    while time.time() < deadline and not marker.exists():  # a finished step-4 checkpoint on the bucket
        assert victim.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    killed_at = max(r["step"] for r in read(f"{workdir}/metrics.jsonl"))
    assert 4 <= killed_at < 12, killed_at  # the bucket's metrics.jsonl: every record up to the last saved step

    summary, state = loop.train(toy.config(**over), workdir, TASK, return_state=True)
    assert summary["resumed_from"] in (4, 8), summary["resumed_from"]
    assert_losses_close(_losses(workdir), _losses(str(tmp_path / "local")), "losses after SIGKILL and rerun")
    assert_params_close(state.params, ref.params, "params after SIGKILL and rerun")
    assert _names(f"{workdir}/checkpoints") == ["12", "4", "8"]


def test_gs_corrupt_newest_checkpoint_falls_back_and_a_changed_config_is_refused(workdir):
    _, full = loop.train(toy.config(**RUN), workdir, TASK, return_state=True)
    expected = _losses(workdir)
    rng = np.random.default_rng(0)
    data = [f for f in _files(epath.Path(workdir, "checkpoints", "10", "state")) if f.parent.name == "d"]
    assert data
    for f in data:  # flip 64 bytes of every data object of the newest state (as test_reliability does locally)
        raw = bytearray(f.read_bytes())
        for i in rng.choice(len(raw), min(64, len(raw)), replace=False):
            raw[i] ^= 0xFF
        f.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="step 10 .* unreadable"):
        summary, again = loop.train(toy.config(**RUN), workdir, TASK, return_state=True)
    assert summary["resumed_from"] == 5 and _losses(workdir) == expected
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(full.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ckpts = epath.Path(workdir, "checkpoints")
    assert _names(ckpts) == ["10", "5", "corrupt_10"]
    # set aside by copy: the marker deleted first, every other object moved
    assert not (ckpts / "corrupt_10" / "commit_success.txt").exists()
    assert (ckpts / "corrupt_10" / "state" / "_METADATA").exists()

    saved = epath.Path(workdir, "config.json").read_text()
    with pytest.raises(ValueError, match=r"optim\.lr: saved 0\.03, now 0\.1"):
        loop.train(toy.config(**RUN, **{"optim.lr": 0.1}), workdir, TASK)
    assert epath.Path(workdir, "config.json").read_text() == saved
    assert "RUNNING.pid" not in _names(workdir)


def test_gs_claim_names_the_host(workdir):
    claim = epath.Path(workdir, "RUNNING.pid")
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    claim.write_text(f"{os.getppid()}@{socket.gethostname()}")  # a live process on this machine
    with pytest.raises(RuntimeError, match=f"another run \\(pid {os.getppid()}\\)"):
        loop.claim_workdir(workdir)
    claim.write_text("12345@another-host")  # cannot be checked from here: a warning, then this run's claim
    with pytest.warns(UserWarning, match="pid 12345 on host another-host"):
        loop.claim_workdir(workdir)
    assert claim.read_text() == f"{os.getpid()}@{socket.gethostname()}"
    loop.release_workdir(workdir)
    assert not claim.exists()


def test_gs_metrics_are_rewritten_whole_and_resume_drops_later_records(workdir):
    path = f"{workdir}/metrics.jsonl"
    w = MetricsWriter(path, flush_every_s=1e9)
    for s in (1, 2, 3):
        w.write(s, {"loss": float(s)})
    assert read(path) == []  # no append on an object store: written on flush
    w.flush()
    assert read(path) == [{"step": s, "loss": float(s)} for s in (1, 2, 3)]
    MetricsWriter(path, resume_step=2)
    assert read(path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}]


def test_gs_reporter_and_write_atomic(workdir):
    report = Reporter(workdir)
    report.section("## a\n", x=1.5)
    report.section("## b\n", y=[1, 2])
    report.json("extra.json", {"k": "v"})
    with report.figure("f.png") as (fig, ax):
        ax.plot([0, 1], [1, 0])
    report.metrics.write(3, {"loss": 0.25})
    root = epath.Path(workdir)
    assert root.joinpath("results.md").read_text() == "## a\n\n## b\n"
    assert root.joinpath("results.json").read_text().replace(" ", "").replace("\n", "") == '{"x":1.5,"y":[1,2]}'
    assert root.joinpath("extra.json").read_text().replace(" ", "").replace("\n", "") == '{"k":"v"}'
    assert root.joinpath("f.png").read_bytes()[:4] == b"\x89PNG"
    assert read(report.path("metrics.jsonl")) == [{"step": 3, "loss": 0.25}]
    write_atomic(f"{workdir}/bytes.bin", b"\x00\x01")
    assert root.joinpath("bytes.bin").read_bytes() == b"\x00\x01"
    assert _names(workdir) == ["bytes.bin", "extra.json", "f.png", "metrics.jsonl", "results.json", "results.md"]


def test_local_write_atomic_leaves_only_the_file(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_atomic(tmp_path / "a.json", "{}")
        write_atomic(str(tmp_path / "a.json"), "[1]")
    assert os.listdir(tmp_path) == ["a.json"] and (tmp_path / "a.json").read_text() == "[1]"


def test_fake_gcs_keeps_object_generations_and_conditional_writes(bucket):
    """What tensorstore (Orbax's array writer, OCDBT manifests) relies on and tests/train/fake_gcs.py adds to the
    emulator: a read returns the object's generation, a write conditioned on a stale generation is refused."""
    import tensorstore as ts

    kv = ts.KvStore.open({"driver": "gcs", "bucket": "bucket", "path": f"{uuid.uuid4().hex[:10]}/"}).result()
    first = kv.write("a", b"one").result().generation
    assert kv.read("a").result().stamp.generation == first
    second = kv.write("a", b"two", if_equal=first).result().generation
    assert second not in (first, b"")
    assert kv.write("a", b"three", if_equal=first).result().generation == b""  # refused: stale generation
    got = kv.read("a").result()
    assert (got.value, got.stamp.generation) == (b"two", second)


def _tiny_experiment(config, report):
    report.section("## tiny\n", value=config.value)
    report.metrics.write(1, {"loss": config.value})
    return {"value": config.value}


def test_gs_experiment_through_the_entry_point(workdir):
    """`train.main.run` (what `python -m train` calls) on a gs:// workdir with an experiment: claim, config.json,
    the reporter's files and summary.json land on the bucket; the claim is released."""
    import json

    import ml_collections

    from train.experiment import experiment
    from train.main import run

    name = "test_remote_paths.tiny"
    experiment(name)(_tiny_experiment)
    config = ml_collections.ConfigDict({"task": name, "value": 0.5})
    assert run(config, workdir) == {"value": 0.5}
    root = epath.Path(workdir)
    assert _names(workdir) == ["config.json", "metrics.jsonl", "results.json", "results.md", "summary.json"]
    assert json.loads(root.joinpath("config.json").read_text()) == {"task": name, "value": 0.5}
    assert json.loads(root.joinpath("summary.json").read_text()) == {"value": 0.5}
    assert read(f"{workdir}/metrics.jsonl") == [{"step": 1, "loss": 0.5}]
