"""VQA accuracy: answers normalised as the official VQA evaluation does, exact / contains / soft scores.

Normalisation (the VQA v2 evaluation script's `processPunctuation` + `processDigitArticle`, rewritten here):
newlines and tabs become spaces; the punctuation marks ; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? ! are deleted
when they touch a space or the text has a digit-comma-digit group, else replaced by a space; a period not
followed by a digit is deleted (also after a digit, as the official regular expression does); the text is lower-cased and split; number words zero..ten (and "none") become
digits; the articles a / an / the are dropped; contractions written without their apostrophe ("dont",
"youre", "wouldnt've") get it back.

Deviation, on purpose: the official script normalises the human answers only when they disagree (it assumes
agreeing answers were normalised at collection); here every answer is normalised, which is the same on VQA's own
data and correct on user data.

Scores per question (mean over questions is `vqa_accuracy`):
    exact      1 if the normalised prediction equals any normalised answer
    contains   1 if some normalised answer occurs in the normalised prediction as a whole-word span
               (TRINS/LaRA's "contains" accuracy; [reconstruction]: word boundaries are our choice)
    soft       the VQA score. With leave_one_out=True (official): mean over the k answers of
               min(1, #(other k-1 answers equal to the prediction) / 3); with False the paper's formula
               min(1, #(answers equal to the prediction) / 3). A single answer scores as exact match (the
               official leave-one-out formula would give 0 there).
"""
from __future__ import annotations

import re
from typing import Sequence

from jaxmm.checks import fail

_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_DIGITS = re.compile(r"(\d)(,)(\d)")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a lookahead (a typo for a lookbehind) that
# always passes, so a period is stripped whenever no digit follows it ("3." -> "3", "3.5" stays).
_PERIOD = re.compile(r"\.(?!\d)")
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# English contractions; each form with one or more apostrophes removed maps back to the full form.
_CONTRACTED = """ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't
haven't he'd he'd've he's how'd how'll how's i'd i'd've i'm i've isn't it'd it'd've it'll let's ma'am mightn't
mightn't've might've mustn't must've needn't not've o'clock oughtn't shan't she'd she'd've she'll
she's should've shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd someone'd've
someone'll someone's something'd something'd've something'll that's there'd there'd've there're there's
they'd they'd've they'll they're they've twas wasn't we'd we'd've we're we've weren't what'll what're what's
what've when's where'd where's where've who'd who'd've who'll who're who's who've why'll why're why's won't
would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've""".split()


def _apostrophe_variants(word: str) -> set[str]:
    parts = word.split("'")
    out = {parts[0]}
    for part in parts[1:]:
        out = {v + "'" + part for v in out} | {v + part for v in out}
    return out - {word}


_CONTRACTIONS = {v: w for w in _CONTRACTED for v in _apostrophe_variants(w) if v not in _NUMBERS}


def normalize_answer(text: str) -> str:
    """The official VQA answer normalisation (see the module docstring)."""
    if not isinstance(text, str):
        fail("answer", "a string", type(text).__name__)
    text = text.replace("\n", " ").replace("\t", " ").strip()
    keep_commas = _COMMA_DIGITS.search(text) is not None
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or keep_commas:
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    text = _PERIOD.sub("", text)
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def _answers(name: str, answers) -> list[str]:
    if isinstance(answers, str):
        return [answers]
    if not isinstance(answers, Sequence) or not answers or not all(isinstance(a, str) for a in answers):
        fail(name, "an answer string or a non-empty list of answer strings", repr(answers)[:80])
    return list(answers)


def vqa_score(prediction: str, answers, *, mode: str = "soft", leave_one_out: bool = True) -> float:
    """The score of one prediction against one question's answers (a string or a list of human answers)."""
    if mode not in ("exact", "contains", "soft"):
        fail("mode", "'exact', 'contains' or 'soft'", repr(mode))
    pred = normalize_answer(prediction)
    gts = [normalize_answer(a) for a in _answers("answers", answers)]
    if mode == "exact":
        return float(pred in gts)
    if mode == "contains":
        padded = f" {pred} "
        return float(any(g and f" {g} " in padded for g in gts))
    if not leave_one_out:
        return min(1.0, sum(g == pred for g in gts) / 3.0)
    if len(gts) == 1:
        return float(gts[0] == pred)
    matches = sum(g == pred for g in gts)
    return sum(min(1.0, (matches - (g == pred)) / 3.0) for g in gts) / len(gts)


def vqa_accuracy(predictions: Sequence[str], answers: Sequence, *, mode: str = "soft",
                 leave_one_out: bool = True) -> float:
    """Mean `vqa_score` over questions. predictions: [Q] strings; answers: [Q] strings or lists of strings."""
    if isinstance(predictions, str) or not isinstance(predictions, Sequence):
        fail("predictions", "a list of answer strings", type(predictions).__name__)
    if len(predictions) != len(answers):
        fail("answers", f"one entry per prediction ({len(predictions)})", f"{len(answers)} entries")
    if not predictions:
        fail("predictions", "at least one prediction", "an empty list")
    return sum(vqa_score(p, a, mode=mode, leave_one_out=leave_one_out)
               for p, a in zip(predictions, answers)) / len(predictions)
