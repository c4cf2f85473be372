"""OCR for text-rich images (issue 16): one interface over several engines, and layout recovery.

    from jaxmm import ocr
    result = ocr.read("page.png")                     # rapidocr (PP-OCR on onnxruntime): words, boxes, scores
    ocr.read(image, engine="oracle", truth=(words, boxes))   # ground truth of procedural data, for ablations
    ocr.read_many(pages, workers=2, cache="ocr_cache")       # batch, worker processes, progress bar, disk cache
    text = ocr.layout_text(result, width=80)          # LATIN-Prompt-style whitespace canvas for an LLM prompt

Engines: `ENGINES` (rapidocr, tesseract, oracle); add one with `register(Engine(name, run, defaults))`.
"""
from jaxmm.ocr.engines import ENGINES, Engine, OcrResult, load_image, register, split_line, xyxy_to_quads
from jaxmm.ocr.layout import layout_lines, layout_text
from jaxmm.ocr.reader import CACHE_ENV, cache_key, read, read_many, truncate

__all__ = ["ENGINES", "Engine", "OcrResult", "load_image", "register", "split_line", "xyxy_to_quads",
           "layout_lines", "layout_text", "cache_key", "read", "read_many", "truncate"]
