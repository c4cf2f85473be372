"""The one reporter of the experiments (`train/experiment.py`): everything a sweep, audit or table writes into its
workdir goes through here, so every experiment's outputs look alike and survive a kill.

    report = Reporter(workdir)
    report.section(markdown, error_vs_n=numbers)   # results.md (sections in order) + results.json, both atomic
    report.json("privacy_reports.json", obj)        # any other JSON file, atomic
    with report.figure("x.png", figsize=(6, 4)) as (fig, ax): ...   # one matplotlib set-up, PNG, closed
    report.metrics.write(step, {...})               # metrics.jsonl (train.metrics.MetricsWriter)

Only process 0 writes. The workdir may be local or a `gs://` URL (paths through `etils.epath`, writes through
`train.metrics.write_atomic`). Helpers shared by the experiments: `table` (a Markdown table), `fmt` (a number for a
table cell), `line_plot` (the usual log-log figure), `show_results` (a run's figures and tables in a notebook).
Timing: `jaxmm.timing.time_call`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os

import jax
from etils import epath

from train.metrics import MetricsWriter, pyplot, save_png, write_atomic  # noqa: F401  (pyplot: re-exported)



class Reporter:
    def __init__(self, workdir: str, name: str = "results"):
        self.workdir = workdir
        self.name = name
        self.active = jax.process_index() == 0
        self.sections: list[str] = []
        self.data: dict = {}
        self._metrics = None
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> str:
        return os.fspath(epath.Path(self.workdir) / name)

    def section(self, markdown: str, **numbers) -> None:
        """Append a Markdown section to `<name>.md` and `numbers` (key -> JSON-able) to `<name>.json`; both files
        are rewritten atomically, so a run killed between sections keeps the finished ones."""
        self.sections.append(markdown.rstrip("\n") + "\n")
        self.data.update(numbers)
        print(markdown, flush=True)
        if self.active:
            write_atomic(self.path(f"{self.name}.md"), "\n".join(self.sections))
            write_atomic(self.path(f"{self.name}.json"), json.dumps(self.data, indent=1, default=_json_default))

    def json(self, name: str, obj) -> str:
        if self.active:
            write_atomic(self.path(name), json.dumps(obj, indent=1, default=_json_default))
        return self.path(name)

    @contextlib.contextmanager
    def figure(self, name: str, *, figsize=(6, 4), ncols: int = 1, dpi: int = 120):
        """`with report.figure("x.png") as (fig, ax):` draw, and the PNG is saved (tight layout) and closed."""
        plt = pyplot()
        fig, ax = plt.subplots(1, ncols, figsize=figsize)
        try:
            yield fig, ax
            fig.tight_layout()
            if self.active:
                save_png(fig, self.path(name), dpi=dpi)
        finally:
            plt.close(fig)

    @property
    def metrics(self) -> MetricsWriter:
        """metrics.jsonl of this run (started empty on first use)."""
        if self._metrics is None:
            self._metrics = MetricsWriter(self.path("metrics.jsonl"), flush_every_s=0.0)  # remote: each write whole
        return self._metrics


def _json_default(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def fmt(x, spec: str = ".3g") -> str:
    """A table cell: strings as they are, None/NaN as '–', ±inf as '∞', floats with `spec`."""
    if isinstance(x, str):
        return x
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return ("∞" if x > 0 else "−∞") if math.isinf(x) else format(x, spec)
    return str(x)


def table(headers, rows, spec: str = ".3g") -> str:
    """A Markdown table; cells through `fmt`."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(fmt(v, spec) for v in r) + " |" for r in rows]
    return "\n".join(out)


def line_plot(report: Reporter, name: str, title: str, xlabel: str, ylabel: str, series: dict, *, logx=True,
              logy=True, ref=None, figsize=(5.2, 3.6), dpi=110) -> None:
    """One line per `series` item {label: (xs, ys)}, markers on; `ref` = (label, xs, ys) drawn dashed black."""
    with report.figure(name, figsize=figsize, dpi=dpi) as (fig, ax):
        for label, (xs, ys) in series.items():
            ax.plot(xs, ys, "o-", label=label)
        if ref is not None:
            ax.plot(ref[1], ref[2], "k--", lw=1, label=ref[0])
        ax.set_xscale("log" if logx else "linear")
        ax.set_yscale("log" if logy else "linear")
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)


def show_results(run_dir, width: int = 520) -> None:
    """In a notebook: the run's PNG figures (sorted by name) and its results.md tables, as docs/results shows them."""
    from IPython.display import Image, Markdown, display

    run_dir = epath.Path(run_dir)
    for png in sorted(run_dir.glob("*.png")):
        print(png.name)
        display(Image(data=png.read_bytes(), width=width))
    md = run_dir / "results.md"
    if md.exists():
        display(Markdown(md.read_text()))
