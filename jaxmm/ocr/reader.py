"""`read` one image and `read_many` over a dataset: engine by name, an on-disk cache keyed by the pixels, the
engine and its settings, an OCR budget (`max_words`), and worker processes with a progress bar for batches."""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import tempfile
from typing import Iterable

import numpy as np

from jaxmm.checks import fail
from jaxmm.ocr.engines import ENGINES, OcrResult, load_image

CACHE_ENV = "JAXMM_OCR_CACHE"
CACHE_FORMAT = 1   # bump when the stored result of an engine changes meaning


def truncate(result: OcrResult, max_words: int | None) -> OcrResult:
    """The OCR budget. Keeps the `max_words` words with the highest scores (ties: the earlier word in the engine's
    reading order wins) and returns them in their original reading order, so the rule is deterministic and a page
    over budget loses its least confident words first, never the end of the page wholesale."""
    if max_words is None:
        return result
    if isinstance(max_words, bool) or not (isinstance(max_words, (int, np.integer)) and max_words >= 0):
        fail("max_words", "None or an integer >= 0", repr(max_words))
    if len(result) <= max_words:
        return result
    order = np.lexsort((np.arange(len(result)), -result.scores))   # score descending, then index ascending
    return result.take(np.sort(order[:max_words]))


def _cache_dir(cache):
    if cache is False:
        return None
    if cache is None or cache is True:
        cache = os.environ.get(CACHE_ENV) or None
    return None if cache is None else os.fspath(cache)


def cache_key(pixels: np.ndarray, engine: str, settings: dict) -> str:
    """sha256 over the pixels (shape and bytes), the engine name and its full settings (defaults included)."""
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_FORMAT, engine, list(pixels.shape), str(pixels.dtype),
                         sorted(settings.items())], default=str).encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def _load_cached(path: str) -> OcrResult | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return OcrResult(json.loads(str(z["words"])), z["boxes"], z["scores"], tuple(z["size"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError):   # a damaged entry is read again and overwritten
        return None


def _store(path: str, result: OcrResult) -> None:
    """Atomic: written to a temporary file in the same folder, then renamed over `path`."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, words=np.asarray(json.dumps(result.words, ensure_ascii=False)), boxes=result.boxes,
                     scores=result.scores, size=np.asarray(result.size, np.int64))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read(image, engine: str = "rapidocr", *, cache=None, max_words: int | None = None, **settings) -> OcrResult:
    """Words, boxes [N, 4, 2] (pixel quads) and scores [N] read from `image` (a path, a PIL image or a uint8
    [H, W, C] array) by the engine named `engine` (see `ENGINES`: rapidocr, tesseract, oracle).

    settings: the engine's own (e.g. rapidocr's text_score, box_thresh, threads; oracle's truth=; a PIL image's
    `.info['ocr_truth']` is the oracle's default truth). cache: a folder (or None: $JAXMM_OCR_CACHE when set; False:
    off); an entry is keyed by the pixels, the engine and all its settings, so the same page is read once.
    max_words: the OCR budget, see `truncate` (applied after the cache, which keeps the full result)."""
    eng = ENGINES.get(engine)
    if engine == "oracle" and "truth" not in settings:
        info = getattr(image, "info", None)
        if isinstance(info, dict) and "ocr_truth" in info:
            settings["truth"] = info["ocr_truth"]
    settings = eng.settings(settings)
    pixels = load_image(image)
    folder = _cache_dir(cache) if eng.cacheable else None
    path = None
    if folder is not None:
        path = os.path.join(folder, f"{engine}-{cache_key(pixels, engine, settings)}.npz")
        hit = _load_cached(path)
        if hit is not None:
            return truncate(hit, max_words)
    result = eng.run(pixels, settings)
    if not isinstance(result, OcrResult):
        raise TypeError(f"OCR engine {engine!r} returned {type(result).__name__}, not an OcrResult")
    if path is not None:
        _store(path, result)
    return truncate(result, max_words)


def _read_one(args):
    image, engine, cache, max_words, settings = args
    return read(image, engine, cache=cache, max_words=max_words, **settings)


def read_many(images: Iterable, engine: str = "rapidocr", *, workers: int = 1, cache=None,
              max_words: int | None = None, progress: bool = True, **settings) -> list[OcrResult]:
    """`read` over many images (a list, a dataset, any iterable), in order; `workers` > 1 reads in that many
    processes (spawned: each loads its own engine), with a tqdm progress bar. Same results as reading one by one."""
    from tqdm.auto import tqdm

    if not (isinstance(workers, int) and workers >= 1):
        fail("workers", "an integer >= 1", workers)
    ENGINES.get(engine).settings(settings)          # a bad engine or setting fails before any process starts
    images = list(images)
    jobs = [(im, engine, _cache_dir(cache) or False, max_words, settings) for im in images]
    bar = tqdm(total=len(jobs), desc=f"ocr:{engine}", unit="img", disable=not progress)
    try:
        if workers == 1 or len(jobs) <= 1:
            out = []
            for job in jobs:
                out.append(_read_one(job))
                bar.update(1)
            return out
        ctx = multiprocessing.get_context("spawn")   # never fork a process that has JAX / onnxruntime threads
        with concurrent.futures.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as pool:
            out = []
            for result in pool.map(_read_one, jobs):
                out.append(result)
                bar.update(1)
            return out
    finally:
        bar.close()
