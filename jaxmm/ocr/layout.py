"""Layout recovery, LATIN-Prompt style (Wang et al. 2023, as LLaVA-Read uses it; PAPERS.md §2): OCR words and
boxes -> text lines in reading order -> a character canvas where spaces and newlines stand for the page's
geometry, so an LLM's tokenizer sees columns and table cells where they are on the page.

Algorithm (reconstruction of the published idea; thresholds are ours):
1. Skew: the mean angle of the words' top edges (TL -> TR); every box is rotated by minus that angle about the
   page centre, so a slightly rotated page (or a rotated text line) becomes horizontal. A single word's own tilt does not
   matter beyond this, since grouping uses box centres.
2. Lines: words sorted by (deskewed) centre y; a word joins the current line when its centre lies within
   `line_tolerance` x the median word height of the line's mean centre y, else it starts a new line.
   Words side by side on the page (two columns, a table row) share a line.
3. Canvas: one row per line, top to bottom; a word starts at column round(x_left / char_width) with
   char_width = page width / `width`, moved right when needed to keep one space after the previous word (so a
   row may run past `width` when its words do not fit). Trailing spaces are stripped; no blank rows are added.
"""
from __future__ import annotations

import numpy as np

from jaxmm.checks import check_positive, fail
from jaxmm.ocr.engines import OcrResult


def _deskewed(boxes: np.ndarray, centre=(0.0, 0.0)) -> np.ndarray:
    """Boxes rotated by minus the mean top-edge angle about `centre` (the page centre keeps the margins)."""
    top = boxes[:, 1] - boxes[:, 0]
    angle = float(np.mean(np.arctan2(top[:, 1], top[:, 0]))) if len(boxes) else 0.0
    c, s = np.cos(-angle), np.sin(-angle)
    rot = np.array([[c, -s], [s, c]])
    centre = np.asarray(centre, np.float64)
    return (boxes.astype(np.float64) - centre) @ rot.T + centre


def layout_lines(result: OcrResult, line_tolerance: float = 0.5) -> list[list[int]]:
    """Word indices grouped into lines, lines top to bottom, words left to right (steps 1-2 above)."""
    if len(result) == 0:
        return []
    q = _deskewed(result.boxes)
    cx, cy = q[..., 0].mean(1), q[..., 1].mean(1)
    heights = 0.5 * (np.linalg.norm(q[:, 3] - q[:, 0], axis=-1) + np.linalg.norm(q[:, 2] - q[:, 1], axis=-1))
    lines: list[list[int]] = []
    for i in np.lexsort((cx, cy)):                   # by centre y, then x
        if lines:
            line = lines[-1]
            mean_y = cy[line].mean()
            tol = line_tolerance * np.median(heights[line + [i]])
            if abs(cy[i] - mean_y) <= tol:
                line.append(int(i))
                continue
        lines.append([int(i)])
    return [sorted(line, key=lambda j: (q[j, :, 0].min(), j)) for line in lines]


def layout_text(result: OcrResult, width: int = 80, page_width: float | None = None,
                line_tolerance: float = 0.5) -> str:
    """The words of `result` on a whitespace/newline canvas `width` characters wide (module docstring).
    page_width: the page's width in pixels (default: `result.size`'s width, else the right-most box edge)."""
    if not isinstance(result, OcrResult):
        fail("result", "an OcrResult (from jaxmm.ocr.read)", type(result).__name__)
    if not (isinstance(width, (int, np.integer)) and width >= 1):
        fail("width", "an integer >= 1 (characters per row)", width)
    check_positive("line_tolerance", line_tolerance)
    if len(result) == 0:
        return ""
    if page_width is None:
        page_width = result.size[1] if result.size[1] > 0 else float(result.boxes[..., 0].max())
    check_positive("page_width", page_width)
    page_height = result.size[0] if result.size[0] > 0 else float(result.boxes[..., 1].max())
    x_left = _deskewed(result.boxes, (0.5 * page_width, 0.5 * page_height))[..., 0].min(1)
    char_width = float(page_width) / width
    rows = []
    for line in layout_lines(result, line_tolerance):
        row = ""
        for j in line:
            col = int(np.floor(x_left[j] / char_width + 0.5))
            col = max(col, len(row) + 1 if row else 0)
            row = row.ljust(col) + result.words[j]
        rows.append(row.rstrip())
    return "\n".join(rows)
