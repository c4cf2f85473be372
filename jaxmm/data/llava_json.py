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

Every record is checked when the source is built; a bad one fails the build with a `BadRecordError`
naming the JSON file, the record's index and id and the reason (with the count of further bad records),
or, with `skip_bad_records=True`, is dropped and counted (`source.skipped`: reason kind -> count;
`source.bad_records`: (index, id, reason)). A record is bad when
  - it is not an object with a non-empty `conversations` list of {"from": human|gpt|system|..., "value": str};
  - its roles do not alternate human, gpt, human, ... (after leading system turns) or it has no gpt turn;
  - it has more than one `<image>` tag, one outside a human turn, one without an `image`, or any `<audio>`
    (a record with `image` and no tag gets "<image>\n" before its first human turn, as in LLaVA);
  - `image` is not a file name (a one-element list is taken as its element);
  - with `formatter=` (a `ConversationFormatter`): it does not fit the formatter's lengths ("prompt of N
    tokens + 1 answer token exceeds max_len M");
  - with `check_files="startup"` (or "decode"): its image file is missing, its header unreadable (with
    "decode" the whole file is decoded, which also finds truncated files), or its size is out of bounds:
    aspect ratio over `max_aspect_ratio` or more than `max_pixels` pixels (read from the header, before
    anything is decoded or padded; `load_image` checks the same bounds again).
Image files are checked lazily by default (`check_files="lazy"`): the build reads only the JSON, and an image
is first opened when its example is read, so a run over a million-image folder (or a bucket) starts at once.
A missing image file then fails that read (the training step) with a FileNotFoundError naming the record and
the file; an undecodable or out-of-bounds one with a `BadRecordError` naming the record and the file (also
from a grain worker process: both pickle). `skip_bad_records` can only drop what the build saw: use
`check_files="startup"` to drop records with missing images.
A missing JSON file or image folder raises FileNotFoundError naming the path. A non-UTF-8 or malformed JSON
file and an empty record list raise ValueError naming the file (and the byte offset / line).
Paths go through `etils.epath`: `gs://bucket/llava.json` and a `gs://` image folder work where the file-system
package is installed (gcsfs, or TensorFlow's gfile). The source holds the parsed records (text and file
names), never decoded images: memory does not grow with the images read (`file_backed = True`: the
trainer never caches it; `jaxmm.data.CachedSource` refuses it).
`write_llava_folder(source, folder, n)` exports any of our sources (e.g. `TextVQA`) in this layout.
"""
from __future__ import annotations

import codecs
import collections
import json
import os
import warnings

import numpy as np
from etils import epath
from PIL import Image

from jaxmm.checks import check_positive, fail

ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
PAD_COLOR = (122, 116, 104)  # LLaVA-1.5 expand2square: CLIP image mean * 255
MAX_ASPECT_RATIO = 20.0      # a 20000 x 2 strip would otherwise become a 20000^2 pad canvas (1.2 GB)
MAX_PIXELS = 64_000_000      # 8000 x 8000; PIL itself refuses beyond 2 * Image.MAX_IMAGE_PIXELS
CHECK_FILES = ("lazy", "startup", "decode")


class BadRecordError(ValueError):
    """A record the source cannot use. `kind` is a short tag (the key of `LlavaJsonSource.skipped`)."""

    def __init__(self, json_path: str, index: int, record_id, kind: str, reason: str, more: str = ""):
        self.json_path, self.index, self.record_id = json_path, index, record_id
        self.kind, self.reason = kind, reason
        self.more = more
        super().__init__(f"{json_path}: record {index} (id {record_id!r}): {reason}{more}")

    def __reduce__(self):  # picklable with its fields (raised in a grain worker, re-raised in the trainer)
        return type(self), (self.json_path, self.index, self.record_id, self.kind, self.reason, self.more)


class _Bad(Exception):
    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def size_problem(width: int, height: int, max_aspect_ratio: float = MAX_ASPECT_RATIO,
                 max_pixels: int = MAX_PIXELS) -> str | None:
    """Why an image of this size is refused (None when it is within bounds)."""
    if width < 1 or height < 1:
        return f"image of {width}x{height} pixels is empty"
    aspect = max(width, height) / min(width, height)
    if max_aspect_ratio and aspect > max_aspect_ratio:
        return (f"image of {width}x{height} pixels has aspect ratio {aspect:.4g} > max_aspect_ratio "
                f"{max_aspect_ratio}")
    if max_pixels and width * height > max_pixels:
        return f"image of {width}x{height} = {width * height} pixels exceeds max_pixels {max_pixels}"
    return None


def load_image(path: str, image_size: int, resize: str = "pad", *, max_aspect_ratio: float = MAX_ASPECT_RATIO,
               max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """RGB uint8 [image_size, image_size, 3] from an image file (a local path or any `etils.epath` path; see
    the module docstring for `resize`). The size is checked against the bounds from the header, before
    decoding; ValueError when out of bounds, FileNotFoundError naming the path when there is no such file."""
    if resize not in ("pad", "stretch"):
        fail("resize", "'pad' or 'stretch'", repr(resize))
    with _open_image(path) as f, Image.open(f) as im:
        problem = size_problem(*im.size, max_aspect_ratio, max_pixels)
        if problem:
            raise ValueError(f"{path}: {problem}")
        im = im.convert("RGB")
        if resize == "pad":
            w, h = im.size
            side = max(w, h)
            canvas = Image.new("RGB", (side, side), PAD_COLOR)
            canvas.paste(im, ((side - w) // 2, (side - h) // 2))
            im = canvas
        im = im.resize((image_size, image_size), Image.BICUBIC)
        return np.asarray(im, np.uint8)


def _open_image(path: str):
    """The image file opened for binary reading (one request: no separate existence check on a bucket)."""
    try:
        return epath.Path(path).open("rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise FileNotFoundError(f"image file not found: {path}") from None


def _read_records(path: str) -> list:
    p = epath.Path(path)
    if not p.exists() or p.is_dir():
        raise FileNotFoundError(f"LLaVA conversation file not found: {path}")
    raw = p.read_bytes()
    skip = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        text = raw[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = skip + e.start
        raise ValueError(f"{path}: not UTF-8: byte 0x{raw[at]:02x} at offset {at} ({e.reason}); "
                         "re-encode the file as UTF-8") from None
    if path.endswith(".jsonl"):
        records = []
        for lineno, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
        if not isinstance(records, list):
            fail("json_path", f"a JSON list of records in {path}", type(records).__name__)
    if not records:
        raise ValueError(f"{path}: no records (the file holds an empty list)")
    return records


def _parse(rec) -> tuple[str | None, list[tuple[str, str]]]:
    """(image file relative to the folder or None, [(role, text)]) of a record, or raises _Bad."""
    if not isinstance(rec, dict):
        raise _Bad("structure", f"expected a JSON object, got {type(rec).__name__}")
    turns = rec.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise _Bad("structure", f"expected a non-empty 'conversations' list, got {repr(turns)[:80]}")
    out = []
    for j, t in enumerate(turns):
        if not isinstance(t, dict) or t.get("from") not in ROLE_MAP or not isinstance(t.get("value"), str):
            raise _Bad("structure", f"turn {j}: expected {{'from': one of {tuple(ROLE_MAP)}, 'value': str}}, "
                                    f"got {repr(t)[:80]}")
        out.append((ROLE_MAP[t["from"]], t["value"]))
    first = next((j for j, (r, _) in enumerate(out) if r != "system"), len(out))
    for j, (role, _) in enumerate(out[first:], first):
        expected = ("user", "assistant")[(j - first) % 2]
        if role != expected:
            raise _Bad("roles", f"turn {j} is {turns[j]['from']!r}; expected human and gpt turns alternating, "
                                f"starting with human (after any system turns)")
    if not any(r == "assistant" for r, _ in out):
        raise _Bad("no_assistant_turn", "no gpt turn (nothing to train on)")

    image = rec.get("image")
    if isinstance(image, list) and len(image) == 1:
        image = image[0]
    if isinstance(image, list):
        raise _Bad("image_field", f"'image' is a list of {len(image)} files; a record takes one image")
    if image is not None and not isinstance(image, str):
        raise _Bad("image_field", f"'image' must be a file name, got {type(image).__name__}")
    image = image or None

    tags = [(j, r) for j, (r, text) in enumerate(out) for _ in range(text.count("<image>"))]
    if len(tags) > 1:
        raise _Bad("image_tags", f"{len(tags)} <image> tags (at most one, in a human turn)")
    if tags and tags[0][1] != "user":
        raise _Bad("image_tags", f"<image> tag in turn {tags[0][0]} ({turns[tags[0][0]]['from']!r}); "
                                 "it belongs in a human turn")
    if tags and image is None:
        raise _Bad("image_tags", "<image> tag but no 'image' file")
    if any("<audio>" in text for _, text in out):
        raise _Bad("image_tags", "<audio> tag in an image-text record")
    return image, out


class LlavaJsonSource:
    """Random-access source over a LLaVA conversation JSON and its image folder (see the module docstring).

    Args:
      json_path: the conversation file (.json list or .jsonl); image_folder: the folder `image` is relative to.
      image_size / resize: output images (square, "pad" or "stretch").
      check_files: "lazy" (default: an image file is opened, and checked, when its example is read),
        "startup" (at the build: the file exists, its header reads and its size is within bounds) or "decode"
        (also decode it fully at the build: finds truncated files, slow).
      skip_bad_records: drop and count bad records instead of failing the build.
      max_aspect_ratio / max_pixels: image size bounds (0 turns one off).
      formatter: a `ConversationFormatter`; records that do not fit its lengths are bad (used by the build
        only, not kept).
    """
    file_backed = True  # examples are read from files on every access: never cache the whole set in RAM

    def __init__(self, json_path: str | os.PathLike, image_folder: str | os.PathLike | None, *,
                 image_size: int = 64, resize: str = "pad", check_files: str = "lazy",
                 skip_bad_records: bool = False, max_aspect_ratio: float = MAX_ASPECT_RATIO,
                 max_pixels: int = MAX_PIXELS, formatter=None):
        check_positive("image_size", image_size)
        if resize not in ("pad", "stretch"):
            fail("resize", "'pad' or 'stretch'", repr(resize))
        if check_files not in CHECK_FILES:
            fail("check_files", " | ".join(map(repr, CHECK_FILES)), repr(check_files))
        self.json_path = os.fspath(json_path)
        self.image_size, self.resize = int(image_size), resize
        self.image_folder = None if image_folder is None else os.fspath(image_folder)
        self.max_aspect_ratio, self.max_pixels = max_aspect_ratio, max_pixels
        self.check_files = check_files
        raw = _read_records(self.json_path)
        if any(isinstance(r, dict) and r.get("image") for r in raw):
            if self.image_folder is None or not epath.Path(self.image_folder).is_dir():
                raise FileNotFoundError(f"LLaVA image folder not found: {self.image_folder}")

        self.records = []        # (index in the file, id, image path or None, [(role, text)])
        self.bad_records = []    # (index in the file, id, kind, reason)
        for i, rec in enumerate(raw):
            rid = str(rec.get("id", i)) if isinstance(rec, dict) else str(i)
            try:
                self.records.append((i, rid, *self._check(rec, formatter)))
            except _Bad as bad:
                self.bad_records.append((i, rid, bad.kind, bad.reason))
        self.skipped = dict(collections.Counter(kind for _, _, kind, _ in self.bad_records))
        if self.bad_records and (not skip_bad_records or not self.records):
            i, rid, kind, reason = self.bad_records[0]
            tally = ", ".join(f"{k}: {n}" for k, n in self.skipped.items())
            more = (f" [{len(self.bad_records)} of {len(raw)} records are bad ({tally})"
                    + ("; skip_bad_records=True drops them]" if not skip_bad_records else "]"))
            if kind == "image_missing":  # a missing file stays a FileNotFoundError, with the record named
                raise FileNotFoundError(f"{self.json_path}: record {i} (id {rid!r}): {reason}{more}")
            raise BadRecordError(self.json_path, i, rid, kind, reason, more)
        if self.bad_records:
            warnings.warn(f"{self.json_path}: skipped {len(self.bad_records)} of {len(raw)} bad records "
                          f"({self.skipped}); first: record {self.bad_records[0][0]}: {self.bad_records[0][3]}")

    @property
    def num_skipped(self) -> int:
        return len(self.bad_records)

    def _check(self, rec, formatter) -> tuple[str | None, list]:
        image, turns = _parse(rec)
        path = None if image is None else os.path.join(self.image_folder, image)
        if formatter is not None:
            example = {"conversations": turns, "image": np.zeros((1, 1, 3), np.uint8), "has_image": int(bool(path))}
            problem = formatter.length_problem(example)
            if problem:
                raise _Bad("too_long", problem)
        if path is not None and self.check_files != "lazy":
            try:
                f = _open_image(path)
            except FileNotFoundError as e:
                raise _Bad("image_missing", str(e)) from None
            try:
                with f, Image.open(f) as im:
                    size = im.size
                    if self.check_files == "decode":
                        im.load()
            except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
                raise _Bad("image_unreadable", f"cannot read image {path}: {type(e).__name__}: {e}") from None
            problem = size_problem(*size, self.max_aspect_ratio, self.max_pixels)
            if problem:
                raise _Bad("image_size", f"{path}: {problem}")
        return path, turns

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        i, rid, path, turns = self.records[int(index)]
        s = self.image_size
        if path is not None:
            try:
                image = load_image(path, s, self.resize, max_aspect_ratio=self.max_aspect_ratio,
                                   max_pixels=self.max_pixels)
            except FileNotFoundError as e:
                raise FileNotFoundError(f"{self.json_path}: record {i} (id {rid!r}): {e}") from e
            except Exception as e:  # a truncated or corrupt file that passed the header check
                raise BadRecordError(self.json_path, i, rid, "image_unreadable",
                                     f"cannot decode image {path}: {type(e).__name__}: {e}") from e
            has_image = 1
        else:
            image, has_image = np.zeros((s, s, 3), np.uint8), 0
        return {"id": rid, "image": image, "has_image": np.int32(has_image), "conversations": list(turns)}


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
