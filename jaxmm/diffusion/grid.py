"""Image grids of samples: one PNG per call, used by every diffusion task (t2i, ARTIST, Toffee) and the sampling
command. Images are NHWC, either float in [-1, 1] (the diffusion convention) or uint8."""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from jaxmm import checks


def to_uint8(images) -> np.ndarray:
    """[N, H, W, C] float in [-1, 1] (clipped) or uint8 -> uint8 [N, H, W, 3]; a single channel is repeated."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if not (x.ndim == 4 and x.shape[-1] in (1, 3, 4)):
        checks.fail("images", "[N, H, W, C] with C in (1, 3, 4)", x.shape)
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating):
            checks.fail("images", "float in [-1, 1] or uint8", x.dtype)
        x = np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x[..., :3]


def image_grid(images, nrow: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile N images into rows of `nrow` (default ⌈√N⌉) with `pad` pixels between them -> uint8 [H', W', 3]."""
    x = to_uint8(images)
    n, h, w, _ = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    if nrow < 1:
        checks.fail("nrow", ">= 1", nrow)
    ncol_rows = math.ceil(n / nrow)
    grid = np.full((ncol_rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), pad_value, np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = x[i]
    return grid


def save_grid(images, path: str | os.PathLike, nrow: int | None = None, labels: Sequence[str] | None = None,
              scale: int = 1) -> str:
    """Write `image_grid(images, nrow)` as a PNG (upscaled `scale`x with nearest neighbour; with `labels`, one caption
    line under each row, images' labels joined by ' | '). Written atomically (tmp file + rename). Returns the path."""
    from PIL import Image, ImageDraw

    grid = image_grid(images, nrow)
    img = Image.fromarray(grid)
    if scale != 1:
        if not (isinstance(scale, int) and scale >= 1):
            checks.fail("scale", "an int >= 1", scale)
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    if labels is not None:
        n = to_uint8(images).shape[0]
        if len(labels) != n:
            checks.fail("labels", f"one label per image ({n})", len(labels))
        nrow = nrow or math.ceil(math.sqrt(n))
        rows = [" | ".join(labels[i:i + nrow]) for i in range(0, n, nrow)]
        line_h = 12
        canvas = Image.new("RGB", (img.width, img.height + line_h * len(rows) + 4), "white")
        canvas.paste(img, (0, 0))
        draw = ImageDraw.Draw(canvas)
        for k, text in enumerate(rows):
            draw.text((2, img.height + 2 + k * line_h), text, fill="black")
        img = canvas
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
