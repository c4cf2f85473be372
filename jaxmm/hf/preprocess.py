"""Image preprocessing of an HF vision folder (`preprocessor_config.json` of CLIPImageProcessor /
SiglipImageProcessor), as transformers' PIL backend does it:

  resize   `size = {"shortest_edge": s}`: the short side to s, the long side to int(s·long/short) (CLIP);
           `size = {"height": h, "width": w}`: to h x w (SigLIP); PIL resampling `resample` (3 = bicubic)
  crop     `do_center_crop`: the centre `crop_size` window, top = (H − h) // 2, left = (W − w) // 2
  rescale  x · rescale_factor (1/255)
  normalize (x − image_mean) / image_std per channel

`geometric` (resize + crop; uint8 in, uint8 out, on the host with PIL) and `normalize` (rescale + normalize; NumPy or
jnp arrays, so a training step can run it on device) split the two halves; `__call__` runs both.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from jaxmm.checks import fail

PROCESSOR_TYPES = ("CLIPImageProcessor", "SiglipImageProcessor")


@dataclasses.dataclass(frozen=True)
class ImageProcessor:
    shortest_edge: int | None = None  # resize the short side to this (CLIP)
    size: tuple[int, int] | None = None  # or resize to (height, width) (SigLIP)
    crop: tuple[int, int] | None = None  # centre crop (height, width)
    resample: int = 3  # PIL.Image resampling filter (3 = BICUBIC)
    rescale_factor: float | None = 1 / 255
    mean: tuple[float, ...] | None = (0.5, 0.5, 0.5)
    std: tuple[float, ...] | None = (0.5, 0.5, 0.5)

    @classmethod
    def from_folder(cls, path) -> "ImageProcessor":
        """The processor of an HF folder's `preprocessor_config.json` (or that file). FileNotFoundError without
        one; ValueError for another processor type (naming it) or a size without a known form."""
        file = os.path.join(path, "preprocessor_config.json") if os.path.isdir(path) else os.fspath(path)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"ImageProcessor.from_folder: no preprocessor_config.json in {str(path)!r}")
        with open(file, encoding="utf-8") as f:
            c = json.load(f)
        kind = str(c.get("image_processor_type", "")).removesuffix("Fast").removesuffix("Pil")
        if kind not in PROCESSOR_TYPES:
            fail(f"{file}: image_processor_type", f"one of {PROCESSOR_TYPES}", repr(c.get("image_processor_type")))
        size, shortest, crop = c.get("size"), None, None
        if c.get("do_resize", True):
            if isinstance(size, int):  # old configs: an int is CLIP's shortest edge, SigLIP's square side
                size = {"shortest_edge": size} if kind == "CLIPImageProcessor" else {"height": size, "width": size}
            if isinstance(size, dict) and "shortest_edge" in size:
                shortest, size = int(size["shortest_edge"]), None
            elif isinstance(size, dict) and {"height", "width"} <= set(size):
                size = (int(size["height"]), int(size["width"]))
            else:
                fail(f"{file}: size", "{'shortest_edge': s} or {'height': h, 'width': w}", repr(size))
        else:
            size = None
        if c.get("do_center_crop", False):
            cs = c.get("crop_size")
            cs = {"height": cs, "width": cs} if isinstance(cs, int) else cs
            if not isinstance(cs, dict) or not {"height", "width"} <= set(cs):
                fail(f"{file}: crop_size", "{'height': h, 'width': w}", repr(cs))
            crop = (int(cs["height"]), int(cs["width"]))
        return cls(shortest_edge=shortest, size=size, crop=crop, resample=int(c.get("resample", 3)),
                   rescale_factor=float(c.get("rescale_factor", 1 / 255)) if c.get("do_rescale", True) else None,
                   mean=tuple(float(x) for x in c["image_mean"]) if c.get("do_normalize", True) else None,
                   std=tuple(float(x) for x in c["image_std"]) if c.get("do_normalize", True) else None)

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(height, width) of every output, or None when it depends on the input (shortest edge, no crop)."""
        return self.crop or self.size

    @property
    def pad_color(self) -> tuple[int, int, int]:
        """LLaVA-1.5's expand2square fill colour: the mean as uint8 (CLIP: (122, 116, 104))."""
        return tuple(int(m * 255) for m in (self.mean or (0.5, 0.5, 0.5)))

    def geometric(self, image) -> np.ndarray:
        """Resize + centre crop: an RGB PIL image or uint8 array [H, W, 3] -> uint8 [h, w, 3]."""
        from PIL import Image

        im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
        im = im.convert("RGB")
        w, h = im.size
        if self.shortest_edge is not None:
            s = self.shortest_edge
            short, long = min(w, h), max(w, h)
            new_long = int(s * long / short)
            im = im.resize((s, new_long) if w <= h else (new_long, s), resample=self.resample)
        elif self.size is not None:
            im = im.resize((self.size[1], self.size[0]), resample=self.resample)
        out = np.asarray(im, np.uint8)
        if self.crop is not None:
            ch, cw = self.crop
            if out.shape[0] < ch or out.shape[1] < cw:
                fail("image", f"at least {ch} x {cw} pixels after resizing (crop_size)", f"{out.shape[:2]}")
            top, left = (out.shape[0] - ch) // 2, (out.shape[1] - cw) // 2
            out = out[top:top + ch, left:left + cw]
        return np.ascontiguousarray(out)

    def normalize(self, x, xp=np):
        """Rescale + normalise uint8 (or float) pixels [..., 3] -> float32 (NumPy, or jax.numpy with xp=jnp)."""
        x = xp.asarray(x).astype(xp.float32)
        if self.rescale_factor is not None:
            x = x * np.float32(self.rescale_factor)
        if self.mean is not None:
            x = (x - xp.asarray(self.mean, xp.float32)) / xp.asarray(self.std, xp.float32)
        return x

    def __call__(self, image) -> np.ndarray:
        """pixel values float32 [h, w, 3] (NHWC without the batch axis) of one image."""
        return self.normalize(self.geometric(image))
