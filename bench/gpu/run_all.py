"""The GPU performance run of issue 24, in one shot: every part in its own process with its own timeout, under
one overall time budget, into one JSON and one markdown table.

    bash bench/gpu/run_all.sh                       # on the lent GPU machine (see docs/results/gpu.md)
    python bench/gpu/run_all.py --smoke             # CPU: tiny sizes, Pallas interpreted, cuDNN rows skipped

Parts (bench/gpu/parts.py holds the measurements): env (device, versions, nvidia-smi), pytest (`pytest -m gpu`
on the test files that carry the marker, JAX_PLATFORMS=cuda so that conftest's CPU default does not apply),
ntk, tensor, llm, unet (the diffusion UNet train step, bf16 vs float32). A part that crashes, hangs past
its timeout or finds the budget spent is recorded as such, with the rows it wrote before; the others still run.
Writes $OUT/gpu_results.json, $OUT/gpu_results.md and $OUT/gpu_log.txt (bench/gpu/out/ when OUT is unset).
This process never imports jax: the GPU stays free for the parts.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
# (name, timeout s on the GPU, timeout s in smoke mode); run in this order
PARTS = (("env", 60, 60), ("pytest", 100, 120), ("ntk", 180, 180), ("tensor", 120, 180), ("llm", 180, 120),
         ("unet", 150, 180))
MIN_START_S = 20  # a part is not started with less budget than this left
STATUSES = ("ok", "failed", "timeout", "crashed", "skipped")


def _tail(text, n=3000):
    return text[-n:] if len(text) > n else text


def run_process(cmd, timeout, log, env):
    """(rc or None on timeout, output, wall s); the process group is killed at the timeout."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        rc = None
    wall = time.perf_counter() - t0
    log.write(f"\n===== {' '.join(shlex.quote(c) for c in cmd)}  (rc={rc}, {wall:.1f} s)\n{out}")
    log.flush()
    return rc, out, wall


def part_process(name, timeout, smoke, log, env, tmp):
    """A measurement part of parts.py: its JSON record, with status, wall time and (on failure) the log tail."""
    path = os.path.join(tmp, f"{name}.json")
    cmd = [sys.executable, os.path.join(HERE, "parts.py"), name, "--json", path] + (["--smoke"] if smoke else [])
    rc, out, wall = run_process(cmd, timeout, log, env)
    try:
        with open(path) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        rec = {"part": name, "rows": [], "targets": [], "notes": []}
    rec["wall_s"] = wall
    if rc is None:
        rec.update(status="timeout", reason=f"killed at its {timeout:.0f} s timeout (rows before that kept)")
    elif rc != 0:
        last = [ln for ln in out.strip().splitlines() if ln.strip()][-1:] or ["no output"]
        rec.update(status="crashed", reason=f"exit code {rc}: {last[0][:300]}")
    else:
        bad = [r["name"] for r in rec["rows"] if r.get("status") in ("error", "incorrect")]
        rec.update(status="failed" if bad else "ok", reason=("rows failed: " + ", ".join(bad)) if bad else "")
        if not rec["rows"]:
            rec.update(status="failed", reason="the part wrote no rows")
    if rec["status"] != "ok":
        rec["log_tail"] = _tail(out)
    return rec


def gpu_test_files():
    files = []
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "**", "test_*.py"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            if re.search(r"mark\.gpu\b", f.read()):
                files.append(os.path.relpath(path, ROOT))
    return files


def part_pytest(timeout, on_gpu, log, env, tmp):
    """`pytest -m gpu` over the files that carry the marker (collecting every test file would import modules
    whose dependencies the GPU image may lack). On the GPU a skipped test counts as a failure."""
    files = gpu_test_files()
    rec = {"part": "pytest", "rows": [], "targets": [], "notes": [f"files: {' '.join(files)}"]}
    if not files:
        return {**rec, "status": "failed", "reason": "no test file carries the gpu marker", "wall_s": 0.0}
    xml = os.path.join(tmp, "pytest.xml")
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={xml}",
           *files]
    env = {**env, "JAX_PLATFORMS": "cuda" if on_gpu else "cpu"}
    rc, out, wall = run_process(cmd, timeout, log, env)
    rec["wall_s"] = wall
    counts = {}
    try:
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    except (OSError, ET.ParseError, AttributeError):
        pass
    rec["counts"] = counts
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if k != "tests") or "no report"
    rec["rows"].append({"name": "pytest -m gpu", "shape": f"{len(files)} files", "status": "ok", "note": summary})
    if rc is None:
        rec.update(status="timeout", reason=f"killed at its {timeout:.0f} s timeout")
    elif not on_gpu:
        ran = counts.get("passed", 0) + counts.get("failures", 0) + counts.get("errors", 0)
        rec.update(status="skipped" if rc in (0, 5) and not ran else "failed",
                   reason=f"needs CUDA: {summary}" if not ran else f"tests ran on CPU? rc={rc}, {summary}")
        rec["rows"][0]["status"] = "skipped" if rec["status"] == "skipped" else "error"
    elif rc == 0 and counts.get("passed") and not counts.get("skipped"):
        rec.update(status="ok", reason="")
    else:
        rec.update(status="failed", reason=f"rc={rc}: {summary}")
        rec["rows"][0]["status"] = "error"
    if rec["status"] != "ok":
        rec["log_tail"] = _tail(out)
    return rec


# ----------------------------------------------------------------------------------------------- report
def _fmt(v, spec):
    return "" if v is None else (spec % v) if isinstance(v, (int, float)) else str(v)


def markdown(res) -> str:
    env = res["env"]
    lines = [f"# GPU results ({'SMOKE: tiny sizes on CPU, numbers mean nothing' if res['smoke'] else 'full run'})",
             "", f"- device: {env.get('device_kind', '?')} ({env.get('backend', '?')}), jax {env.get('jax', '?')}, "
             f"jaxlib {env.get('jaxlib', '?')}; nvidia-smi: {env.get('nvidia_smi', 'n/a')}",
             f"- started {res['started']}, total wall {res['wall_s']:.0f} s of a {res['budget_s']:.0f} s budget",
             f"- command: `{res['command']}`", "", "## Parts", "", "| part | status | wall s | reason |",
             "|---|---|---|---|"]
    for p in res["parts"]:
        lines.append(f"| {p['part']} | {p['status']} | {p.get('wall_s', 0):.1f} | {p.get('reason', '')} |")
    lines += ["", "## Targets (ratios within this run)", "", "| target | value | threshold | met | note |",
              "|---|---|---|---|---|"]
    for p in res["parts"]:
        for t in p.get("targets", []):
            met = {True: "yes", False: "NO", None: "n/a"}[t["met"]]
            lines.append(f"| {t['name']} | {_fmt(t['value'], '%.3f')} | {t['threshold']} | {met} | {t['note']} |")
    lines += ["", "## Rows", "", "ratio: time / the peer's time in the same process (cuDNN attention for NTK); "
              "rel err: worst ‖got − ref‖/‖ref‖ over the output and every gradient against float32 maths; "
              "TFLOP/s for fwd+bwd counts 3.5× the forward; spread: (slowest − fastest) / median of the timed calls.", "",
              "| part | name | shape | status | ms | TFLOP/s | ratio | rel err | max abs err | note |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for p in res["parts"]:
        for r in p.get("rows", []):
            note = r.get("note", "")
            extra = [f"spread {100 * r['spread']:.0f}%"] if r.get("spread") is not None else []
            if r.get("of_matmul_ceiling") is not None:
                extra.append(f"{100 * r['of_matmul_ceiling']:.1f}% of matmul")
            for k in ("mfu_cost_analysis", "mfu_model"):
                if r.get(k) is not None:
                    extra.append(f"{k} {100 * r[k]:.1f}%")
            if r.get("tokens_per_s"):
                extra.append(f"{r['tokens_per_s']:.0f} tok/s")
            note = "; ".join(extra + ([note] if note else []))
            lines.append(f"| {p['part']} | {r['name']} | {r.get('shape', '')} | {r.get('status', '')} | "
                         f"{_fmt(r.get('ms'), '%.3f')} | {_fmt(r.get('tflops'), '%.1f')} | "
                         f"{_fmt(r.get('ratio'), '%.3f')} | {_fmt(r.get('rel_err'), '%.1e')} | "
                         f"{_fmt(r.get('max_abs_err'), '%.1e')} | {note.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (checks the logic)")
    ap.add_argument("--budget", type=float, default=None, help="overall seconds (default 450 GPU / 600 smoke)")
    ap.add_argument("--out", default=None, help="output folder (default $OUT, else bench/gpu/out)")
    ap.add_argument("--parts", default=None, help="comma-separated subset (default: all)")
    a = ap.parse_args()
    budget = a.budget or (600.0 if a.smoke else 450.0)
    out = a.out or os.environ.get("OUT") or os.path.join(HERE, "out")
    os.makedirs(out, exist_ok=True)
    wanted = set(a.parts.split(",")) if a.parts else None
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PYTHONUNBUFFERED": "1"}
    if a.smoke:
        env["JAX_PLATFORMS"] = "cpu"
    else:  # each part has the GPU to itself; the naive tensor attention at n=2048 needs ~90 GB
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
    t0 = time.perf_counter()
    res = {"smoke": a.smoke, "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join(shlex.quote(c) for c in sys.argv), "budget_s": budget, "env": {}, "parts": []}
    json_path, md_path = os.path.join(out, "gpu_results.json"), os.path.join(out, "gpu_results.md")

    def write():
        res["wall_s"] = time.perf_counter() - t0
        with open(json_path, "w") as f:
            json.dump(res, f, indent=1, default=float)
        with open(md_path, "w") as f:
            f.write(markdown(res))

    with open(os.path.join(out, "gpu_log.txt"), "w") as log, tempfile.TemporaryDirectory() as tmp:
        for name, gpu_timeout, smoke_timeout in PARTS:
            if wanted is not None and name not in wanted and name != "env":
                res["parts"].append({"part": name, "status": "skipped", "reason": "not in --parts", "rows": [],
                                     "targets": [], "notes": [], "wall_s": 0.0})
                continue
            left = budget - (time.perf_counter() - t0)
            timeout = min(smoke_timeout if a.smoke else gpu_timeout, left - 5)
            print(f"[{time.perf_counter() - t0:6.1f} s] {name} (timeout {timeout:.0f} s)", flush=True)
            if timeout < MIN_START_S:
                rec = {"part": name, "status": "skipped", "rows": [], "targets": [], "notes": [], "wall_s": 0.0,
                       "reason": f"time budget spent ({left:.0f} s left of {budget:.0f} s)"}
            elif name == "pytest":
                rec = part_pytest(timeout, not a.smoke, log, env, tmp)  # a full run expects the GPU
            else:
                rec = part_process(name, timeout, a.smoke, log, env, tmp)
            if name == "env":
                res["env"] = {k: v for k, v in rec.items() if k not in ("rows", "targets", "notes", "part")}
            res["parts"].append(rec)
            print(f"[{time.perf_counter() - t0:6.1f} s] {name}: {rec['status']} {rec.get('reason', '')}",
                  flush=True)
            write()
    write()
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
