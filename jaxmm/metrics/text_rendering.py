"""OCR metrics of generated text images, TextDiffuser's MARIO-Eval protocol (used by ARTIST, PAPERS.md §6).

Per image, with the OCR'd words `pred` and the words the prompt asked for `target`, both stripped and
lower-cased: matched = size of the multiset intersection; precision = matched / len(pred), recall =
matched / len(target) (0 when the list is empty); accuracy = 1 if the two sorted word lists are equal.
Over images: P and R are averaged, F = 2 P R / (P + R) from the averaged P and R (not a mean of per-image F),
accuracy is averaged. TextDiffuser's script compares the sorted lists joined without a separator, so
["ab", "c"] equals ["a", "bc"] there; here the lists are compared word by word (the intended exact-set match).
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

from jaxmm.checks import fail


def _words(name: str, words) -> list[str]:
    if isinstance(words, str) or not isinstance(words, Sequence) or not all(isinstance(w, str) for w in words):
        fail(name, "a list of word strings", repr(words)[:80])
    return [w.strip().lower() for w in words]


def ocr_word_metrics(predicted: Sequence[Sequence[str]], targets: Sequence[Sequence[str]]) -> dict:
    """{"precision", "recall", "f_measure", "accuracy", "per_image": [(p, r, acc), ...]} over images.

    predicted: per image, the words an OCR engine read; targets: per image, the words that should be there."""
    if isinstance(predicted, str) or not isinstance(predicted, Sequence) or not predicted:
        fail("predicted", "a non-empty list (one word list per image)", repr(predicted)[:80])
    if len(targets) != len(predicted):
        fail("targets", f"one word list per image ({len(predicted)})", f"{len(targets)} lists")
    per = []
    for i, (pred, tgt) in enumerate(zip(predicted, targets)):
        pred, tgt = _words(f"predicted[{i}]", pred), _words(f"targets[{i}]", tgt)
        matched = sum((Counter(pred) & Counter(tgt)).values())
        p = matched / len(pred) if pred else 0.0
        r = matched / len(tgt) if tgt else 0.0
        per.append((p, r, float(sorted(pred) == sorted(tgt))))
    n = len(per)
    p = sum(x[0] for x in per) / n
    r = sum(x[1] for x in per) / n
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {"precision": p, "recall": r, "f_measure": f, "accuracy": sum(x[2] for x in per) / n, "per_image": per}
