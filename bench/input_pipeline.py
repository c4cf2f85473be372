"""Input that scales: examples/s of the LLaVA-JSON path (JSON + image folder -> decode, pad, resize -> the
trainer's conversation formatter -> batches) at 0, 1, 2 and 4 grain worker processes, against the demo model's
training rate (steps/s x batch size of configs/demo.py, measured in the same run by the trainer itself), and
the peak RSS of a full pass as the folder grows 10x (lazy source: flat up to the JSON index; a `CachedSource`
control shows what caching the set would cost).

    JAX_PLATFORMS=cpu .venv/bin/python bench/input_pipeline.py [--images 5000] [--out table.md]
    JAX_PLATFORMS=cpu .venv/bin/python bench/input_pipeline.py --small     # a tiny folder, seconds (the test)

The folder is generated in a temporary directory (procedural 96x96 images, PNG and JPEG alternating) and
deleted afterwards. Memory is measured in a fresh process per row (peak RSS of the reader, and the largest
worker's), so one row's allocations do not hide in another's peak.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}


def make_folder(folder: str, n: int, size: int = 96) -> str:
    """A LLaVA-JSON folder of n procedural images (a coloured square on a noisy gradient); returns the JSON."""
    from PIL import Image

    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    rng = np.random.default_rng(0)
    names = list(COLOURS)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    records = []
    for i in range(n):
        img = (ramp[None, :, None] * 0.5 + rng.normal(60, 20, (size, size, 3))).clip(0, 255).astype(np.uint8)
        colour = names[i % len(names)]
        y, x = rng.integers(0, size // 2, 2)
        img[y:y + size // 3, x:x + size // 3] = COLOURS[colour]
        rel = f"images/{i:06d}." + ("png" if i % 2 else "jpg")
        Image.fromarray(img).save(os.path.join(folder, rel), **({} if i % 2 else {"quality": 90}))
        records.append({"id": f"{i:06d}", "image": rel, "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the square?"}, {"from": "gpt", "value": colour}]})
    return write_json(folder, records, f"llava_{n}.json")


def write_json(folder: str, records: list, name: str) -> str:
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        json.dump(records, f)
    return path


def _numeric(example: dict) -> dict:
    return {k: v for k, v in example.items() if np.asarray(v).dtype.kind in "biuf"}


def loader(json_path: str, folder: str, *, image_size: int, batch_size: int, workers: int, cached: bool = False,
           num_epochs: int | None = 1):
    """The trainer's LLaVA-JSON path: source -> ConversationFormatter (demo lengths) -> batches."""
    from jaxmm.data import ByteTokenizer, CachedSource, ConversationFormatter, LlavaJsonSource, make_loader

    src = LlavaJsonSource(json_path, folder, image_size=image_size)
    if cached:  # the control: what keeping every example in RAM costs (CachedSource refuses file sources)
        src = CachedSource(_Uncached(src))
    fmt = ConversationFormatter(ByteTokenizer(), max_len=56)
    return make_loader(src, batch_size=batch_size, seed=0, num_epochs=num_epochs, shard_index=0, shard_count=1,
                       transforms=[fmt, _numeric], worker_count=workers, worker_buffer_size=2,
                       num_threads=1, prefetch=2)


class _Uncached:
    """The source with its `file_backed` mark hidden: only for the memory control row."""

    def __init__(self, src):
        self.src = src

    def __len__(self):
        return len(self.src)

    def __getitem__(self, i):
        return self.src[i]


def throughput(json_path, folder, *, image_size, batch_size, workers, batches) -> tuple[float, float]:
    """(examples/s after the first batch, seconds to the first batch: worker start-up)."""
    t0 = time.perf_counter()
    it = loader(json_path, folder, image_size=image_size, batch_size=batch_size, workers=workers, num_epochs=None)
    try:
        next(it)
        t1 = time.perf_counter()
        for _ in range(batches):
            batch = next(it)
            del batch
        return batches * batch_size / (time.perf_counter() - t1), t1 - t0
    finally:
        it.close()


def _status_mb(pid: int | str, field: str) -> float:
    """A memory field of /proc/<pid>/status in MB (Linux), 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _rss_child(argv) -> None:
    """Child mode: one full pass over a folder; prints the peak RSS (MB) of this process (VmHWM: reset at exec,
    unlike getrusage's ru_maxrss, which a subprocess inherits from its parent) and of its largest worker
    (VmRSS sampled every 20 ms)."""
    import multiprocessing
    import threading

    json_path, folder, image_size, workers, cached = argv[0], argv[1], int(argv[2]), int(argv[3]), argv[4] == "1"
    peak, done = [0.0], threading.Event()

    def sample():
        while not done.wait(0.02):
            for p in multiprocessing.active_children():
                peak[0] = max(peak[0], _status_mb(p.pid, "VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    it = loader(json_path, folder, image_size=image_size, batch_size=32, workers=workers, cached=cached,
                num_epochs=2 if cached else 1)
    n = 0
    for batch in it:
        n += len(batch["input_ids"])
        del batch
    done.set()
    sampler.join()
    it.close()
    print(json.dumps({"examples": n, "rss_mb": _status_mb("self", "VmHWM"),
                      "worker_rss_mb": peak[0] if workers else None}))


def peak_rss(json_path, folder, *, image_size, workers, cached=False) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--_rss", json_path, folder, str(image_size),
                          str(workers), "1" if cached else "0"], capture_output=True, text=True, timeout=1800)
    if out.returncode:
        raise RuntimeError(f"memory run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def demo_rate(steps: int, log_every: int, train_examples: int = 512) -> dict:
    """The demo model's training rate, measured by the trainer (configs/demo.py; metrics.jsonl's
    examples_per_s over the log intervals after the first, which holds compilation)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from configs import demo
    from train import loop, tasks

    c = tasks.full_config(demo.get_config())  # the config file gives only what differs from the defaults
    c.data.train_examples, c.data.eval_examples = train_examples, 32  # the step's cost does not depend on it
    c.train.update(dict(steps=steps, log_every=log_every, eval_every=0, eval_examples=32, eval_batch_size=32,
                        progress=False, plots=False))
    c.task_args.eval_generate = False
    c.checkpoint.every, c.checkpoint.async_save = 0, False
    with tempfile.TemporaryDirectory() as workdir:
        loop.train(c, workdir, c.task)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            rates = [r["examples_per_s"] for r in map(json.loads, f) if "examples_per_s" in r]
    steady = rates[1:] or rates
    ex_s = float(np.median(steady))
    return {"batch_size": c.train.batch_size, "examples_per_s": ex_s, "steps_per_s": ex_s / c.train.batch_size}


def run(images: int, *, small: bool, image_size: int = 32, batch_size: int = 32, memory_image_size: int = 96) -> str:
    workers_list = (0, 1) if small else (0, 1, 2, 4)
    batches = 3 if small else max(10, min(60, images // batch_size // 2))
    folder = tempfile.mkdtemp(prefix="jaxmm_input_bench_")
    try:
        t = time.perf_counter()
        big = make_folder(folder, images)
        with open(big) as f:
            records = json.load(f)
        smallj = write_json(folder, records[: images // 10], f"llava_{images // 10}.json")
        gen_s = time.perf_counter() - t

        rows = []
        for w in workers_list:
            ex_s, start_s = throughput(big, folder, image_size=image_size, batch_size=batch_size, workers=w,
                                       batches=batches)
            rows.append((w, ex_s, start_s))
        demo = demo_rate(steps=4 if small else 60, log_every=2 if small else 10, train_examples=64 if small else 512)

        mem = []
        for n, path in ((images // 10, smallj), (images, big)):
            for w, cached in ((0, False), (0, True)) if small else ((0, False), (2, False), (0, True)):
                mem.append((n, w, cached, peak_rss(path, folder, image_size=memory_image_size, workers=w,
                                                   cached=cached)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    cores = os.cpu_count()
    lines = [f"LLaVA-JSON folder: {images} procedural 96x96 images (PNG/JPEG alternating; generated in {gen_s:.0f} s), "
             f"read at {image_size}x{image_size} (the demo ViT's input), batch {batch_size}, demo lengths "
             f"(max_len 56); machine: {cores} cores.", "",
             "| worker processes | loader examples/s | first batch after (s) | loader / demo step rate |",
             "|---|---|---|---|"]
    for w, ex_s, start_s in rows:
        lines.append(f"| {w} {'(in-process)' if w == 0 else ''} | {ex_s:.0f} | {start_s:.1f} | "
                     f"{ex_s / demo['examples_per_s']:.2f} |")
    lines += ["", f"Demo model (configs/demo.py: ViT 32 px + projector + 2-layer LLM, batch {demo['batch_size']}) "
                  f"trains at {demo['steps_per_s']:.2f} steps/s = {demo['examples_per_s']:.0f} examples/s "
                  "(the trainer's own metrics.jsonl, compile interval excluded).", "",
              f"Peak RSS of one pass over the folder at {memory_image_size}x{memory_image_size} (a cached example "
              f"is then {memory_image_size ** 2 * 3 // 1024} KB of pixels, so a cache would show), batch 32, a fresh "
              "process per row:", "",
              "| folder (images) | reader | worker processes | peak RSS, reader (MB) | peak RSS, largest worker (MB) |",
              "|---|---|---|---|---|"]
    for n, w, cached, m in mem:
        reader = "CachedSource (control: every example kept)" if cached else "LlavaJsonSource (lazy)"
        wk = f"{m['worker_rss_mb']:.0f}" if m["worker_rss_mb"] else "-"
        lines.append(f"| {n} | {reader} | {w} | {m['rss_mb']:.0f} | {wk} |")
    return "\n".join(lines) + "\n"


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--_rss":
        return _rss_child(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--small", action="store_true", help="a 60-image folder, 0-1 workers, 4 demo steps")
    p.add_argument("--out", default="", help="also write the markdown table here")
    args = p.parse_args()
    table = run(60 if args.small else args.images, small=args.small)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
