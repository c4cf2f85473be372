"""bench/input_pipeline.py cannot rot: its --small mode (a 60-image folder) runs end to end and writes a table
with sane numbers (positive finite rates, the demo's rate from the trainer, flat memory for the lazy source)."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rows(table: str, header: str) -> list[list[str]]:
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_small_mode_writes_a_sane_table(tmp_path):
    out = tmp_path / "table.md"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "input_pipeline.py"), "--small", "--out",
                          str(out)], capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    table = out.read_text()
    assert table in run.stdout

    rates = _rows(table, "| worker processes |")
    assert [r[0].split()[0] for r in rates] == ["0", "1"]
    demo = re.search(r"trains at ([\d.]+) steps/s = (\d+) examples/s", table)
    steps_s, demo_ex_s = float(demo.group(1)), float(demo.group(2))
    assert 0 < steps_s < 1000 and abs(steps_s * 32 - demo_ex_s) <= 1  # batch 32: ex/s = steps/s x batch
    for workers, ex_s, first, ratio in rates:
        assert 1 < float(ex_s) < 1e6 and 0 < float(first) < 600
        assert abs(float(ratio) - float(ex_s) / demo_ex_s) <= 0.02 * float(ratio) + 0.01

    mem = {(int(r[0]), r[1].split()[0]): float(r[3]) for r in _rows(table, "| folder (images) |")}
    assert set(mem) == {(6, "LlavaJsonSource"), (60, "LlavaJsonSource"), (6, "CachedSource"), (60, "CachedSource")}
    assert all(50 < v < 4000 for v in mem.values())  # a Python + JAX process, in MB
    assert abs(mem[60, "LlavaJsonSource"] - mem[6, "LlavaJsonSource"]) < 30  # flat (10x the images)
