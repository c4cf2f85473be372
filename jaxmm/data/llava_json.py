"""User data in the LLaVA conversation format (LLaVA-Instruct layout): a JSON list (or JSON-lines file) of

    {"id": "000001", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is ...?"}, {"from": "gpt", "value": "..."}]}

with `image` relative to an image folder. `LlavaJsonSource(json_path, image_folder, image_size=...)` is a
random-access source of the same example dicts as the procedural sets:
  id             str
  image          uint8 [image_size, image_size, 3]  padded to a square with LLaVA-1.5's fill colour (the
                 CLIP mean, (122, 116, 104)) and resized (bicubic), or squashed with `resize="stretch"`
  has_image      int32 scalar, 0 for a text-only record (its image is zeros and it gets no placeholder)
  conversations  [(role, text)]: "human"/"user" -> "user", "gpt"/"assistant" -> "assistant", "system"

A missing JSON file, image folder or image file raises FileNotFoundError naming the path (image files are
checked when the source is built unless `check_images=False`, then when read).
`write_llava_folder(source, folder, n)` exports any of our sources (e.g. `TextVQA`) in this layout.
"""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from jaxmm.ops._checks import check_positive, fail

ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
PAD_COLOR = (122, 116, 104)  # LLaVA-1.5 expand2square: CLIP image mean * 255


def load_image(path: str, image_size: int, resize: str = "pad") -> np.ndarray:
    """RGB uint8 [image_size, image_size, 3] from an image file (see the module docstring for `resize`)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    with Image.open(path) as im:
        im = im.convert("RGB")
        if resize == "pad":
            w, h = im.size
            side = max(w, h)
            canvas = Image.new("RGB", (side, side), PAD_COLOR)
            canvas.paste(im, ((side - w) // 2, (side - h) // 2))
            im = canvas
        elif resize != "stretch":
            fail("resize", "'pad' or 'stretch'", repr(resize))
        im = im.resize((image_size, image_size), Image.BICUBIC)
        return np.asarray(im, np.uint8)


def _read_records(path: str) -> list:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LLaVA conversation file not found: {path}")
    with open(path) as f:
        if path.endswith(".jsonl"):
            return [json.loads(line) for line in f if line.strip()]
        records = json.load(f)
    if not isinstance(records, list):
        fail("json_path", f"a JSON list of records in {path}", type(records).__name__)
    return records


class LlavaJsonSource:
    """Random-access source over a LLaVA conversation JSON and its image folder."""

    def __init__(self, json_path: str | os.PathLike, image_folder: str | os.PathLike | None, *,
                 image_size: int = 64, resize: str = "pad", check_images: bool = True):
        check_positive("image_size", image_size)
        if resize not in ("pad", "stretch"):
            fail("resize", "'pad' or 'stretch'", repr(resize))
        self.json_path = os.fspath(json_path)
        self.records = _read_records(self.json_path)
        self.image_size, self.resize = int(image_size), resize
        self.image_folder = None if image_folder is None else os.fspath(image_folder)
        for i, rec in enumerate(self.records):
            self._check_record(i, rec)
        with_images = [r for r in self.records if r.get("image")]
        if with_images:
            if self.image_folder is None or not os.path.isdir(self.image_folder):
                raise FileNotFoundError(f"LLaVA image folder not found: {self.image_folder}")
            if check_images:
                for r in with_images:
                    path = os.path.join(self.image_folder, r["image"])
                    if not os.path.isfile(path):
                        raise FileNotFoundError(f"image file not found: {path} (record id {r.get('id')!r})")

    def _check_record(self, i, rec):
        where = f"record {i} (id {rec.get('id')!r}) of {self.json_path}" if isinstance(rec, dict) else f"record {i}"
        turns = rec.get("conversations") if isinstance(rec, dict) else None
        if not isinstance(turns, list) or not turns:
            fail(where, "a non-empty 'conversations' list", repr(rec)[:80])
        for t in turns:
            if not isinstance(t, dict) or t.get("from") not in ROLE_MAP or not isinstance(t.get("value"), str):
                fail(where, f"turns {{'from': one of {tuple(ROLE_MAP)}, 'value': str}}", repr(t)[:80])

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        rec = self.records[int(index)]
        s = self.image_size
        if rec.get("image"):
            image = load_image(os.path.join(self.image_folder, rec["image"]), s, self.resize)
            has_image = 1
        else:
            image, has_image = np.zeros((s, s, 3), np.uint8), 0
        return {
            "id": str(rec.get("id", index)),
            "image": image,
            "has_image": np.int32(has_image),
            "conversations": [(ROLE_MAP[t["from"]], t["value"]) for t in rec["conversations"]],
        }


def llava_json_dataset(json_path, image_folder, **kwargs):
    """`LlavaJsonSource(...)` as a `grain.MapDataset`."""
    import grain

    return grain.MapDataset.source(LlavaJsonSource(json_path, image_folder, **kwargs))


def write_llava_folder(source, folder: str | os.PathLike, n: int, *, json_name: str = "conversations.json",
                       image_dir: str = "images") -> str:
    """Write the first `n` examples of `source` (dicts with "image" and "conversations") as a LLaVA folder:
    `<folder>/<json_name>` and PNGs under `<folder>/<image_dir>/`. Returns the JSON path."""
    folder = os.fspath(folder)
    os.makedirs(os.path.join(folder, image_dir), exist_ok=True)
    inv = {"user": "human", "assistant": "gpt", "system": "system"}
    records = []
    for i in range(n):
        ex = source[i]
        rel = f"{image_dir}/{i:06d}.png"
        Image.fromarray(np.asarray(ex["image"], np.uint8)).save(os.path.join(folder, rel))
        records.append({"id": f"{i:06d}", "image": rel,
                        "conversations": [{"from": inv[r], "value": t} for r, t in ex["conversations"]]})
    path = os.path.join(folder, json_name)
    with open(path, "w") as f:
        json.dump(records, f, indent=1)
    return path
