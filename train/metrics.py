"""Observability: metrics.jsonl (one JSON record per logged step), the progress bar, PNG curves.

Only process 0 writes. On resume `MetricsWriter(path, resume_step=s)` drops every record with step > s, so a
killed-and-resumed run ends with exactly the records an uninterrupted run writes.

Paths go through `etils.epath`: a local path or a `gs://` (`s3://`, ...) URL where its fsspec file system
(gcsfs, s3fs) is installed. An object store has no append and no atomic rename, but an object upload becomes
visible only once complete: there `write_atomic` writes the object directly and `MetricsWriter` rewrites
metrics.jsonl whole (at most every `flush_every_s`, and on `flush()`, which the loop calls before each
checkpoint save).
"""
from __future__ import annotations

import io
import json
import math
import os
import time

import jax
import numpy as np
from etils import epath


def is_remote(path) -> bool:
    """True for a URL path (`gs://`, `s3://`, ...): an object store, not the local file system."""
    return "://" in os.fspath(path)


def write_atomic(path, data: str | bytes) -> None:
    """Write a whole file or nothing. Locally: a temporary file beside it, then one rename (a kill leaves the old
    file). On an object store: one upload, which replaces the object only when complete (no rename there)."""
    path = epath.Path(path)
    raw = data.encode() if isinstance(data, str) else data
    if is_remote(path):
        path.write_bytes(raw)
        return
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(raw)
    tmp.replace(path)


def save_png(fig, path, dpi: int = 100) -> str:
    """Render a matplotlib figure to PNG bytes and write them atomically (`write_atomic`) to a local or remote
    path; returns the path as a string."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    write_atomic(path, buf.getvalue())
    return os.fspath(path)


def _clean(v):
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()


class MetricsWriter:
    def __init__(self, path: str, resume_step: int | None = None, flush_every_s: float = 30.0):
        self.path = os.fspath(path)
        self.active = jax.process_index() == 0
        self._lines = None  # remote: every line of the file (rewritten whole); local: appended to the file
        self.flush_every_s, self._flushed = flush_every_s, time.monotonic()
        if not self.active:
            return
        kept = []
        if resume_step is not None and epath.Path(path).exists():
            with epath.Path(path).open() as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by a kill
                        continue
                    if rec.get("step", math.inf) <= resume_step:
                        kept.append(line if line.endswith("\n") else line + "\n")
        write_atomic(path, "".join(kept))
        if is_remote(path):
            self._lines = kept

    def write(self, step: int, metrics: dict) -> None:
        if not self.active:
            return
        rec = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
        if self._lines is not None:
            self._lines.append(json.dumps(rec) + "\n")
            if time.monotonic() - self._flushed >= self.flush_every_s:
                self.flush()
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()

    def flush(self) -> None:
        """Remote: write the file with every record so far (one upload). Local: nothing (each write appends)."""
        if self.active and self._lines is not None:
            write_atomic(self.path, "".join(self._lines))
            self._flushed = time.monotonic()


def read(path) -> list[dict]:
    with epath.Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (the one place that sets it up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(path, out_dir) -> list[str]:
    """One PNG per metric family (loss, lr, eval, then one for the rest); returns the files written."""
    plt = pyplot()

    records = read(path)
    keys = sorted({k for r in records for k, v in r.items() if k != "step" and isinstance(v, (int, float))})
    families = {
        "loss": [k for k in keys if "loss" in k],
        "lr": [k for k in keys if k.startswith("lr/")],
        "eval": [k for k in keys if k.startswith("eval") and "loss" not in k],
    }
    used = {k for ks in families.values() for k in ks} | {"examples_per_s", "tokens_per_s"}
    families["other"] = [k for k in keys if k not in used]
    written = []
    for fam, ks in families.items():
        if not ks:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for k in ks:
            pts = [(r["step"], r[k]) for r in records if isinstance(r.get(k), (int, float))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="." if len(pts) < 30 else None, label=k)
        ax.set_xlabel("step")
        ax.set_title(fam)
        if fam == "loss" and all(r[k] > 0 for k in ks for r in records if isinstance(r.get(k), (int, float))):
            ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(save_png(fig, epath.Path(out_dir) / f"{fam}.png", dpi=100))
        plt.close(fig)
    return written


class Progress:
    """tqdm bar over steps: loss, examples (or tokens) per second, ETA."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled and jax.process_index() == 0:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True, mininterval=0.5, unit="step")

    def update(self, n: int, **postfix) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                                     refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
