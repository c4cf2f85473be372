"""The experiments' reporter (train/report.py) and protocol (train/experiment.py): sections accumulate into
results.md / results.json atomically, figures land as PNGs, a check runs before any compute, and an Experiment
runs through train.main.run like any task."""
from __future__ import annotations

import json
import math
import os

import jax.numpy as jnp
import ml_collections
import pytest

from train import report as report_lib
from train.experiment import Experiment, experiment


def test_sections_accumulate_and_files_are_whole(tmp_path):
    r = report_lib.Reporter(str(tmp_path))
    r.section("# one\n\n" + report_lib.table(["a", "b"], [[1, 0.5], ["x", math.inf]]), first={"v": 1})
    assert json.loads((tmp_path / "results.json").read_text()) == {"first": {"v": 1}}
    r.section("# two", second=[1, 2])
    md = (tmp_path / "results.md").read_text()
    assert md == "# one\n\n| a | b |\n|---|---|\n| 1 | 0.5 |\n| x | ∞ |\n\n# two\n"
    assert json.loads((tmp_path / "results.json").read_text()) == {"first": {"v": 1}, "second": [1, 2]}
    r.json("extra.json", {"x": jnp.float32(2.0)})  # arrays' scalars are written as numbers
    assert json.loads((tmp_path / "extra.json").read_text()) == {"x": 2.0}
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_figure_and_metrics(tmp_path):
    r = report_lib.Reporter(str(tmp_path))
    with r.figure("a.png") as (fig, ax):
        ax.plot([1, 2], [3, 4])
    report_lib.line_plot(r, "b.png", "t", "x", "y", {"s": ([1, 2], [1, 4])}, ref=("ref", [1, 2], [1, 2]))
    assert os.path.getsize(tmp_path / "a.png") > 1000 and os.path.getsize(tmp_path / "b.png") > 1000
    r.metrics.write(3, {"loss": jnp.float32(0.5)})
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 3, "loss": 0.5}
    assert report_lib.fmt(None) == report_lib.fmt(math.nan) == "–" and report_lib.fmt(0.123456) == "0.123"


def test_experiment_checks_before_running_and_runs_through_main(tmp_path):
    from train import tasks
    from train.main import run

    ran = []

    def check(config):
        if config.n < 1:
            raise ValueError(f"config.n: expected a positive integer, got {config.n}")

    @experiment("test_report.square", check=check)
    def square(config, report):
        ran.append(config.n)
        report.section(f"n = {config.n}", square=config.n ** 2)
        return {"square": float(config.n ** 2)}

    assert isinstance(tasks.get("test_report.square"), Experiment)
    with pytest.raises(ValueError, match="config.n"):
        run(ml_collections.ConfigDict(dict(task="test_report.square", n=0)), str(tmp_path / "bad"))
    assert ran == []
    summary = run(ml_collections.ConfigDict(dict(task="test_report.square", n=3)), str(tmp_path / "ok"))
    assert summary == {"square": 9.0} and ran == [3]
    assert json.loads((tmp_path / "ok" / "summary.json").read_text()) == summary
    assert json.loads((tmp_path / "ok" / "results.json").read_text()) == {"square": 9}
    assert os.path.isfile(tmp_path / "ok" / "config.json")


def test_show_results_displays_each_figure_then_the_tables(tmp_path, monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(40))
    (tmp_path / "b.png").write_bytes(png)
    (tmp_path / "a.png").write_bytes(png[:-1])
    (tmp_path / "results.md").write_text("| x |\n|---|\n| 1 |\n")
    report_lib.show_results(tmp_path, width=100)
    assert [type(o).__name__ for o in shown] == ["Image", "Image", "Markdown"]
    assert shown[0].data == png[:-1] and shown[1].data == png and shown[1].width == 100   # sorted by name
    assert shown[2].data == "| x |\n|---|\n| 1 |\n"
