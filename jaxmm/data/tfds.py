"""TFDS datasets as sources of our example dicts, through `tfds.data_source` (random access over ArrayRecord
files; no TensorFlow needed). The dataset must already be prepared in ArrayRecord format, e.g.
`tfds build mnist --file_format=array_record --data_dir=DIR` (this adapter never downloads by default).

`TFDSSource(name, split=..., data_dir=..., <field mapping>)[i]` ->
  image          uint8 [H, W, 3] (grayscale repeated to 3 channels; resized to image_size x image_size when set)
  conversations  [("user", "<image>\\n" + question), ("assistant", answer)]
  tfds_index     int64 scalar
The mapping: `image_key` (None for text-only), the question as fixed text `question` or a feature
`question_key`, the answer from feature `answer_key` (ClassLabel ids become their names, bytes are decoded,
numbers printed); or a `conversation_fn(raw_example) -> [(role, text)]` for anything else.
`data_dir` goes through `etils.epath` (a `gs://` bucket works where the file-system package is installed).
Examples are read from the ArrayRecord files on every access (`file_backed = True`: never cached whole in
RAM); the source pickles, so `make_loader(..., worker_count=N)` decodes it in grain worker processes.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
from etils import epath
from PIL import Image

from jaxmm.checks import check_positive, fail


def _text(value) -> str:
    value = value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        fail("answer/question feature", "a scalar feature", f"shape {value.shape}")
    return str(value)


class TFDSSource:
    """Random-access source over `tfds.data_source(name, split=split, data_dir=data_dir)` (see module doc)."""
    file_backed = True

    def __init__(self, name: str, *, split: str = "train", data_dir: str | os.PathLike | None = None,
                 image_key: str | None = "image", question: str = "What is shown in the image?",
                 question_key: str | None = None, answer_key: str | None = "label",
                 conversation_fn: Callable[[dict], list] | None = None, image_size: int | None = None,
                 download: bool = False):
        import tensorflow_datasets as tfds

        if data_dir is not None:
            data_dir = os.fspath(data_dir)
            if not epath.Path(data_dir).is_dir():
                raise FileNotFoundError(f"TFDS data_dir not found: {data_dir}")
        if image_size is not None:
            check_positive("image_size", image_size)
        if conversation_fn is None and answer_key is None:
            fail("answer_key", "a feature name (or pass conversation_fn)", None)
        try:
            self.source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
        except (NotImplementedError, tfds.core.registered.DatasetNotFoundError, FileNotFoundError) as e:
            where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
            raise FileNotFoundError(
                f"TFDS dataset {name!r} (split {split!r}) is not prepared as ArrayRecord under {where}: run "
                f"`tfds build {name.split(':')[0]} --file_format=array_record --data_dir={where}` ({e})") from e
        features = self.source.dataset_info.features
        for key in (image_key, question_key, None if conversation_fn else answer_key):
            if key is not None and key not in features:
                fail("field mapping", f"feature names of {name} ({sorted(features.keys())})", repr(key))
        names = getattr(features[answer_key], "names", None) if answer_key and answer_key in features else None
        self.answer_names = list(names) if names else None
        self.name, self.split = name, split
        self.image_key, self.question, self.question_key = image_key, question, question_key
        self.answer_key, self.conversation_fn, self.image_size = answer_key, conversation_fn, image_size

    def __len__(self) -> int:
        return len(self.source)

    def _image(self, image) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
            fail(self.image_key, "an image [H, W, 1|3|4]", f"shape {image.shape}")
        image = np.broadcast_to(image[..., :3], image.shape[:2] + (3,)).astype(np.uint8)
        if self.image_size is not None and image.shape[:2] != (self.image_size, self.image_size):
            image = np.asarray(Image.fromarray(image).resize((self.image_size,) * 2, Image.BICUBIC))
        return np.ascontiguousarray(image)

    def __getitem__(self, index: int) -> dict:
        raw = self.source[int(index)]
        if self.conversation_fn is not None:
            turns = list(self.conversation_fn(raw))
        else:
            q = _text(raw[self.question_key]) if self.question_key else self.question
            a = raw[self.answer_key]
            if self.answer_names is not None:
                a = self.answer_names[int(a)]
            turns = [("user", ("<image>\n" if self.image_key else "") + q), ("assistant", _text(a))]
        out = {"conversations": turns, "tfds_index": np.int64(index)}
        if self.image_key is not None:
            out["image"] = self._image(raw[self.image_key])
        return out


def tfds_source(name: str, **kwargs):
    """`TFDSSource(name, ...)` as a `grain.MapDataset`."""
    import grain

    return grain.MapDataset.source(TFDSSource(name, **kwargs))
