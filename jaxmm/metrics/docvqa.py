"""ANLS (average normalised Levenshtein similarity), the DocVQA / ST-VQA metric for answers read from documents.

Per question: max over its answers of s = 1 - NL(pred, answer) if NL < threshold else 0, with
NL = Levenshtein(pred, answer) / max(len(pred), len(answer)) on strings lower-cased with whitespace runs
collapsed and stripped (the DocVQA evaluation's normalisation). ANLS is the mean over questions; threshold 0.5.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxmm.checks import fail


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each cost 1)."""
    prev = np.arange(len(b) + 1)
    for i, ca in enumerate(a, 1):
        cur = np.empty_like(prev)
        cur[0] = i
        sub = prev[:-1] + np.array([ca != cb for cb in b], dtype=prev.dtype)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, sub[j - 1])
        prev = cur
    return int(prev[-1])


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def anls(predictions: Sequence[str], answers: Sequence, *, threshold: float = 0.5) -> float:
    """Mean ANLS. predictions: [Q] strings; answers: [Q] strings or non-empty lists of acceptable strings."""
    if isinstance(predictions, str) or not isinstance(predictions, Sequence) or not predictions:
        fail("predictions", "a non-empty list of answer strings", repr(predictions)[:80])
    if len(answers) != len(predictions):
        fail("answers", f"one entry per prediction ({len(predictions)})", f"{len(answers)} entries")
    if not 0 < threshold <= 1:
        fail("threshold", "a number in (0, 1]", threshold)
    total = 0.0
    for i, (pred, gts) in enumerate(zip(predictions, answers)):
        gts = [gts] if isinstance(gts, str) else gts
        if not isinstance(pred, str) or not gts or not all(isinstance(g, str) for g in gts):
            fail(f"predictions[{i}]/answers[{i}]", "a string and a non-empty list of strings",
                 f"{pred!r}, {gts!r}"[:80])
        p, best = _norm(pred), 0.0
        for g in map(_norm, gts):
            length = max(len(p), len(g))
            nl = levenshtein(p, g) / length if length else 0.0
            best = max(best, 1.0 - nl if nl < threshold else 0.0)
        total += best
    return total / len(predictions)
