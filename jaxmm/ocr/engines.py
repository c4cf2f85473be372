"""OCR engines behind one interface: `OcrResult` (words, pixel quadrilaterals, scores), the image loader every
engine shares, and the `rapidocr`, `tesseract` and `oracle` engines, registered by name in `ENGINES`.

An engine is a function `(image: uint8 [H, W, 3] RGB, settings: dict) -> OcrResult`; the engine-specific settings
are checked against the engine's `defaults` before anything runs. Engines import their libraries lazily, so
`import jaxmm.ocr` works without them (`pip install 'jaxmm[ocr]'` for rapidocr)."""
from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any, Callable

import numpy as np

from jaxmm.checks import fail
from jaxmm.registry import Registry


@dataclasses.dataclass(frozen=True)
class OcrResult:
    """Words read from one image. `boxes[i]` is word i's quadrilateral in pixels, corners (x, y) in the order
    top-left, top-right, bottom-right, bottom-left of the text's own frame (so a rotated word has a rotated quad);
    `scores[i]` in [0, 1]; `size` is the image's (height, width). Words keep the engine's reading order."""
    words: list
    boxes: np.ndarray
    scores: np.ndarray
    size: tuple = (0, 0)

    def __post_init__(self):
        words = [str(w) for w in self.words]
        boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4, 2) if len(words) == 0 else np.asarray(
            self.boxes, np.float32)
        scores = np.asarray(self.scores, np.float32).reshape(-1)
        if boxes.shape != (len(words), 4, 2):
            fail("boxes", f"shape ({len(words)}, 4, 2) (one quadrilateral per word)", f"shape {boxes.shape}")
        if scores.shape != (len(words),):
            fail("scores", f"shape ({len(words)},) (one score per word)", f"shape {scores.shape}")
        object.__setattr__(self, "words", words)
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))

    def __len__(self):
        return len(self.words)

    def take(self, index) -> "OcrResult":
        """The words at `index` (an int array), in that order."""
        index = np.asarray(index, np.int64).reshape(-1)
        return OcrResult([self.words[i] for i in index], self.boxes[index], self.scores[index], self.size)

    @staticmethod
    def empty(size=(0, 0)) -> "OcrResult":
        return OcrResult([], np.zeros((0, 4, 2), np.float32), np.zeros((0,), np.float32), size)


def xyxy_to_quads(xyxy) -> np.ndarray:
    """Axis-aligned boxes [N, 4] (x0, y0, x1, y1) -> quadrilaterals [N, 4, 2] (TL, TR, BR, BL)."""
    b = np.asarray(xyxy, np.float32).reshape(-1, 4)
    x0, y0, x1, y1 = b.T
    return np.stack([np.stack([x0, y0], -1), np.stack([x1, y0], -1), np.stack([x1, y1], -1),
                     np.stack([x0, y1], -1)], 1)


def load_image(image, name: str = "image") -> np.ndarray:
    """A path, a PIL image or a uint8 array [H, W] / [H, W, C] (C in 1, 3, 4) -> uint8 [H, W, 3] RGB.
    Errors name the argument (and the path for a file that cannot be read) instead of failing inside an engine."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        try:
            with Image.open(path) as im:
                im.load()
                return np.asarray(im.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ValueError(f"{name}: could not read an image from file {path!r} ({type(e).__name__}: {e})") from None
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray) and hasattr(image, "__array__"):
        image = np.asarray(image)
    if not isinstance(image, np.ndarray):
        fail(name, "a path, a PIL image or a uint8 [H, W, C] array", type(image).__name__)
    if image.dtype != np.uint8:
        fail(name, "a uint8 array (pixel values 0..255; convert floats with (x * 255).astype(np.uint8))",
             f"dtype {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        fail(name, "an array [H, W] or [H, W, C] with C in (1, 3, 4)", f"shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        fail(name, "an image of at least 1 x 1 pixels", f"shape {image.shape}")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, -1)
    return np.ascontiguousarray(image[..., :3])


def split_line(text: str, quad: np.ndarray, score: float):
    """One recognised text line -> its whitespace-separated words, each with a quadrilateral cut from the line's
    quad. Reconstruction (PP-OCR recognises lines, not words): every character, spaces included, is given an equal
    share of the line's length, and a word's corners are interpolated along the top (TL->TR) and bottom (BL->BR)
    edges at its first and last character positions; exact for monospace text, approximate otherwise."""
    n = len(text)
    tl, tr, br, bl = np.asarray(quad, np.float64)
    words, boxes = [], []
    pos = 0
    for word in text.split():
        start = text.index(word, pos)
        end = pos = start + len(word)
        t0, t1 = start / n, end / n
        boxes.append([tl + t0 * (tr - tl), tl + t1 * (tr - tl), bl + t1 * (br - bl), bl + t0 * (br - bl)])
        words.append(word)
    return words, np.asarray(boxes, np.float32).reshape(-1, 4, 2), np.full(len(words), score, np.float32)


@dataclasses.dataclass(frozen=True)
class Engine:
    """`run(image uint8 [H, W, 3], settings) -> OcrResult`; `defaults` lists every setting it takes and `check`
    validates their values before anything runs; `missing()` says why the engine cannot run here (None when it
    can); `cacheable` is False for engines whose answer does not come from the pixels (oracle)."""
    name: str
    run: Callable[[np.ndarray, dict], OcrResult]
    defaults: dict
    missing: Callable[[], str | None] = lambda: None
    cacheable: bool = True
    check: Callable[[dict], None] = lambda settings: None

    def settings(self, given: dict) -> dict:
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            fail("settings", f"settings of OCR engine {self.name!r} (some of {sorted(self.defaults)})", unknown)
        settings = {**self.defaults, **given}
        self.check(settings)
        return settings


ENGINES = Registry("OCR engine", "engine")
register, get = ENGINES.register, ENGINES.get


# --- rapidocr: PaddleOCR's PP-OCR det + cls + rec models (ONNX files shipped in the wheel) on onnxruntime ---------
# PP-OCR detects and recognises text *lines*. Word boxes: word_boxes="ctc" (default) takes rapidocr's own
# (return_word_box: each word's span of CTC output columns, mapped back through the line's crop transform, so a
# rotated line gives rotated word quads; a line whose words it cannot split falls back to interpolation);
# word_boxes="interpolate" cuts the line quad by character count (`split_line`, a reconstruction).
_RAPID: dict = {}   # settings that change the model build -> a loaded RapidOCR, one per process


def _rapidocr_missing():
    try:
        import onnxruntime  # noqa: F401
        import rapidocr  # noqa: F401
    except ImportError as e:
        return f"rapidocr/onnxruntime not installed ({e}); pip install 'jaxmm[ocr]'"
    return None


MAX_ASPECT = 16   # rapidocr is given images at most this elongated (see `pad_to_aspect`)


def pad_to_aspect(image: np.ndarray, max_aspect: float = MAX_ASPECT) -> np.ndarray:
    """`image` [H, W, 3] extended at the bottom or right with its median border colour until long side / short
    side <= max_aspect; pixel coordinates of the original are unchanged. rapidocr needs this: it rounds each side
    to a multiple of 32 after scaling the long side to max_side_len, so a strip under ~1/120 as tall as it is long
    raises its ResizeImgError (seen with 1 x 3000 and 8 x 4000 arrays, rapidocr 3.10), and its detector scales the
    short side up to 736 px, so a 1 x 1900 strip would become a 736 x 1.4 M px input (from its resize rule; not
    run). At 16 the detector input is at most 736 x 11,776 px (about 2 s of CPU)."""
    h, w = image.shape[:2]
    if max(h, w) <= max_aspect * min(h, w):
        return image
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    fill = np.median(border, axis=0).astype(np.uint8)
    short = int(np.ceil(max(h, w) / max_aspect))
    shape = (short, w, 3) if h < w else (h, short, 3)
    out = np.empty(shape, np.uint8)
    out[...] = fill
    out[:h, :w] = image
    return out


def _rapidocr_run(image: np.ndarray, s: dict) -> OcrResult:
    reason = _rapidocr_missing()
    if reason:
        raise ImportError(reason)
    _rapidocr_check(s)
    h, w = image.shape[:2]
    image = pad_to_aspect(image)
    key = (s["threads"], s["max_side_len"], s["use_cls"])
    if key not in _RAPID:
        from rapidocr import RapidOCR
        _RAPID[key] = RapidOCR(params={
            "Global.log_level": "error", "Global.max_side_len": s["max_side_len"], "Global.use_cls": s["use_cls"],
            "EngineConfig.onnxruntime.intra_op_num_threads": s["threads"],
            "EngineConfig.onnxruntime.inter_op_num_threads": 1})
    # rapidocr takes BGR arrays (OpenCV order) when given an ndarray
    ctc = s["word_boxes"] == "ctc"
    out = _RAPID[key](np.ascontiguousarray(image[..., ::-1]), text_score=s["text_score"],
                      box_thresh=s["box_thresh"], unclip_ratio=s["unclip_ratio"], return_word_box=ctc)
    if getattr(out, "txts", None) is None or getattr(out, "boxes", None) is None:
        return OcrResult.empty((h, w))
    groups = list(out.word_results) if ctc and out.word_results else []
    words, boxes, scores = [], [], []
    for text, quad, score in zip(out.txts, out.boxes, out.scores):
        group = groups[0] if groups else ()
        if group and [g[0] for g in group] == text.split():   # rapidocr's word boxes for this line
            groups.pop(0)
            ws = [g[0] for g in group]
            bs = np.asarray([g[2] for g in group], np.float32).reshape(-1, 4, 2)
            ss = np.asarray([g[1] for g in group], np.float32)
        else:                                                   # none (or not this line's): interpolate
            ws, bs, ss = split_line(text, quad, float(score))
        words += ws
        boxes.append(bs)
        scores.append(ss)
    if not words:
        return OcrResult.empty((h, w))
    return OcrResult(words, np.concatenate(boxes), np.concatenate(scores), (h, w))


def _rapidocr_check(s: dict) -> None:
    if s["word_boxes"] not in ("ctc", "interpolate"):
        fail("word_boxes", "'ctc' or 'interpolate'", repr(s["word_boxes"]))
    m = s["max_side_len"]
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 640:
        # >= 640 keeps a MAX_ASPECT strip's short side >= 40 px after rapidocr's resize (it rounds to 32s)
        fail("max_side_len", "an integer >= 640 (px)", repr(m))


# use_cls=False (rapidocr's own default is True): its 180-degree line classifier turned whole upright lines of
# dense textrich documents upside down, which were then read as fragments ("lot t za t a t x ple"); 16 px documents
# went from 0.84-0.91 word recall with it to 0.99 without (docs/results/ocr.md). Pass use_cls=True for pages that
# may be upside down.
register(Engine("rapidocr", _rapidocr_run, missing=_rapidocr_missing, check=_rapidocr_check, defaults=dict(
    text_score=0.5, box_thresh=0.5, unclip_ratio=1.6, max_side_len=2000, use_cls=False, threads=1,
    word_boxes="ctc")))


# --- tesseract through pytesseract (word level; needs the `tesseract` binary, e.g. Debian's tesseract-ocr) -------
def _tesseract_missing():
    try:
        import pytesseract  # noqa: F401
    except ImportError:
        return "pytesseract not installed (pip install pytesseract)"
    if shutil.which("tesseract") is None:
        return "the tesseract binary is not on PATH (apt-get install tesseract-ocr)"
    return None


def _tesseract_run(image: np.ndarray, s: dict) -> OcrResult:
    reason = _tesseract_missing()
    if reason:
        raise RuntimeError(f"engine 'tesseract' cannot run: {reason}")
    import pytesseract
    from PIL import Image

    d = pytesseract.image_to_data(Image.fromarray(image), lang=s["lang"], config=f"--psm {s['psm']}",
                                  output_type=pytesseract.Output.DICT)
    keep = [i for i, (t, c) in enumerate(zip(d["text"], d["conf"])) if str(t).strip() and float(c) >= 0]
    xyxy = [[d["left"][i], d["top"][i], d["left"][i] + d["width"][i], d["top"][i] + d["height"][i]] for i in keep]
    return OcrResult([str(d["text"][i]).strip() for i in keep], xyxy_to_quads(xyxy),
                     [float(d["conf"][i]) / 100 for i in keep], image.shape[:2])


register(Engine("tesseract", _tesseract_run, missing=_tesseract_missing, defaults=dict(lang="eng", psm=3)))


# --- oracle: the ground truth, passed as `truth=` ----------------------------------------------------------------
def as_result(truth: Any, size=(0, 0)) -> OcrResult:
    """An OcrResult, or a dict / tuple (words, boxes[, scores]) with boxes [N, 4, 2] quads or [N, 4] xyxy."""
    if isinstance(truth, OcrResult):
        return truth if truth.size != (0, 0) else dataclasses.replace(truth, size=tuple(size))
    if isinstance(truth, dict):
        words, boxes, scores = truth.get("words"), truth.get("boxes"), truth.get("scores")
    elif isinstance(truth, (tuple, list)) and len(truth) in (2, 3):
        words, boxes, scores = (*truth, None)[:3]
    else:
        fail("truth", "an OcrResult, a dict with words/boxes[/scores] or a tuple (words, boxes[, scores])",
             type(truth).__name__)
    if words is None or boxes is None:
        fail("truth", "both words and boxes", "a missing one")
    boxes = np.asarray(boxes, np.float32)
    if boxes.ndim == 2 and boxes.shape[-1] == 4:
        boxes = xyxy_to_quads(boxes)
    scores = np.ones(len(words), np.float32) if scores is None else scores
    return OcrResult(list(words), boxes, scores, size)


def _oracle_run(image: np.ndarray, s: dict) -> OcrResult:
    if s["truth"] is None:
        fail("truth", "the ground truth for engine 'oracle' (read(image, engine='oracle', truth=...) or a PIL "
             "image with .info['ocr_truth'])", None)
    return as_result(s["truth"], image.shape[:2])


register(Engine("oracle", _oracle_run, defaults=dict(truth=None), cacheable=False))
