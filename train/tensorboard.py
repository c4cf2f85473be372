"""TensorBoard event files in the workdir (`tensorboard --logdir runs/` shows each workdir as a run).

`Writer` receives every metrics.jsonl record (it is a sink of `train.metrics.MetricsWriter`), so the scalars in
TensorBoard are the numbers in metrics.jsonl (as float32, TensorBoard's scalar type): losses, `lr/<group>`,
`grad_norm/<group>`, CoMMIT's κ, throughput, MFU and `eval_*`. At each evaluation the loop also logs the first
`config.train.eval_samples` eval examples (`eval_samples/<i>`): each image-valued field (uint8 [H, W, C]) with the
task's one-line description of that row under it, and the description as text. The description comes from two
optional task methods: `sample_outputs(model, params, batch) -> dict of arrays` (jitted by the loop, e.g. greedy
answers) and `sample_text(batch, outputs) -> list[str]` (host side; `outputs` = {} without `sample_outputs`):
for `mllm.qa`, "<question> -> <prediction> (ref: <reference>)".

Written with tensorboardX (no TensorFlow). On resume the writer opens a new event file that starts with a purge
marker at the resumed step + 1, so TensorBoard hides what a killed run logged after its last checkpoint, as
metrics.jsonl drops those records. Only process 0 writes. Remote workdirs (gs://, s3://) are written through
`etils.epath` (each flush rewrites the file: object stores have no append).
"""
from __future__ import annotations

import io
import math
import textwrap
import time

import jax
import numpy as np

SAMPLE_PREFIX = "eval_samples"


class _EpathFile:
    """A write-only binary file on any `etils.epath` file system: buffered, the whole file rewritten on flush."""

    def __init__(self, path: str):
        from etils import epath

        self.path, self.buffer = epath.Path(path), io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        self.path.write_bytes(self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _EpathFactory:
    def open(self, path):
        return _EpathFile(path)

    def directory_check(self, path):
        from etils import epath

        epath.Path(path).mkdir(parents=True, exist_ok=True)


def _route_remote(logdir: str) -> None:
    """Make tensorboardX write `scheme://` logdirs through etils.epath (as every other run output is)."""
    if "://" in logdir:
        from tensorboardX import record_writer

        record_writer.register_writer_factory(logdir.split("://")[0], _EpathFactory())


class Writer:
    """TensorBoard events for one run in `logdir`. `resume_step`: the step the run resumes from (None: fresh)."""

    def __init__(self, logdir: str, resume_step: int | None = None, enabled: bool = True):
        self.active = enabled and jax.process_index() == 0
        self.writer = None
        if not self.active:
            return
        from tensorboardX import SummaryWriter

        logdir = str(logdir)  # a str or an etils.epath.Path
        _route_remote(logdir)
        # the file name has the time in seconds, then this suffix: a resumed run started within the same second
        # as the killed one gets its own file, listed after it
        self.writer = SummaryWriter(logdir=logdir, purge_step=(resume_step + 1) if resume_step else None,
                                    flush_secs=30, filename_suffix=f".{time.time_ns()}")

    def write(self, step: int, metrics: dict) -> None:
        """Scalars of one metrics record (a `MetricsWriter` sink): every finite-or-not number; others skipped."""
        if not self.active:
            return
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(k, float(v), int(step))

    def samples(self, step: int, images: dict, texts: list | None) -> None:
        """Per row i: one image per image field (`eval_samples/<i>` or `eval_samples/<i>/<field>` when there are
        several), captioned with `texts[i]`, and `texts[i]` as text."""
        if not self.active:
            return
        rows = len(texts) if texts else (len(next(iter(images.values()))) if images else 0)
        for i in range(rows):
            caption = texts[i] if texts else ""
            for key, imgs in images.items():
                tag = f"{SAMPLE_PREFIX}/{i}" if len(images) == 1 else f"{SAMPLE_PREFIX}/{i}/{key}"
                self.writer.add_image(tag, captioned(imgs[i], caption), int(step), dataformats="HWC")
            if caption:
                self.writer.add_text(f"{SAMPLE_PREFIX}/{i}", caption, int(step))

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def image_fields(batch: dict) -> dict:
    """The fields of a numpy batch that hold images: uint8 [rows, H, W, C] with C in (1, 3, 4)."""
    return {k: v for k, v in batch.items()
            if isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.ndim == 4 and v.shape[-1] in (1, 3, 4)}


def captioned(image: np.ndarray, caption: str, min_side: int = 128) -> np.ndarray:
    """uint8 [H', W', 3]: `image` (uint8 [H, W, C]) scaled up by an integer factor (nearest: pixels stay visible)
    to at least `min_side`, with `caption` printed in a white band under it (wrapped to the image width)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).convert("RGB")
    scale = max(1, math.ceil(min_side / min(img.size)))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    if not caption:
        return np.asarray(img)
    chars = max(8, img.width // 6)  # PIL's default bitmap font is ~6 px wide
    lines = [line for part in caption.split("\n") for line in textwrap.wrap(part, chars) or [""]]
    band = 12 * len(lines) + 4
    out = Image.new("RGB", (img.width, img.height + band), "white")
    out.paste(img, (0, 0))
    draw = ImageDraw.Draw(out)
    for j, line in enumerate(lines):
        draw.text((2, img.height + 2 + 12 * j), line, fill="black")
    return np.asarray(out)
