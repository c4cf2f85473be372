"""jaxmm.metrics against hand-computed values (the arithmetic is written beside each number) and, for CIDEr-D, a
float64 NumPy re-derivation of the formula. pycocoevalcap ships example/coco_eval_example.py but not the COCO
annotation files it reads, so it cannot be run here; the caption tests use tiny hand cases instead."""
import math
from collections import Counter

import numpy as np
import pytest

from jaxmm.metrics import anls, caption_scores, java_available, normalize_answer, ocr_word_metrics, vqa_accuracy
from jaxmm.metrics import vqa_score
from jaxmm.metrics.docvqa import levenshtein

import pycocoevalcap  # noqa: E402,F401  (the test extra installs it: a missing one fails here)


# ---------------------------------------------------------------- captions
def test_bleu_hand_computed():
    # hyp "a b c d" vs ref "a b c e": clipped n-gram precisions 3/4, 2/3, 1/2, 0/1; equal lengths so BP = 1.
    # pycocoevalcap smooths each precision as (correct + 1e-15) / (total + 1e-9).
    out = caption_scores({"x": "a b c d"}, {"x": ["a b c e"]}, metrics=["bleu"], tokenizer="whitespace")
    p = [(3 + 1e-15) / (4 + 1e-9), (2 + 1e-15) / (3 + 1e-9), (1 + 1e-15) / (2 + 1e-9), (0 + 1e-15) / (1 + 1e-9)]
    for n in range(1, 5):
        assert out[f"BLEU-{n}"] == pytest.approx(math.prod(p[:n]) ** (1 / n), rel=1e-9)
    assert out["BLEU-1"] == pytest.approx(0.75) and out["BLEU-2"] == pytest.approx(math.sqrt(0.5))


def test_bleu_brevity_penalty():
    # hyp "a b" vs ref "a b c d": precisions 1, 1; BP = exp(1 - 4/2) = e^-1.
    out = caption_scores({0: "a b"}, {0: ["a b c d"]}, metrics=["bleu"], tokenizer="whitespace")
    assert out["BLEU-1"] == pytest.approx(math.exp(-1), rel=1e-6)
    assert out["BLEU-2"] == pytest.approx(math.exp(-1), rel=1e-6)


def test_rouge_l_hand_computed():
    # hyp "a b c d", ref "a c d e f": LCS "a c d" = 3; P = 3/4, R = 3/5; beta = 1.2:
    # F = (1 + 1.44) P R / (R + 1.44 P) = 2.44 * 0.45 / (0.6 + 1.08) = 1.098 / 1.68
    out = caption_scores({0: "a b c d"}, {0: ["a c d e f"]}, metrics=["rouge"], tokenizer="whitespace")
    assert out["ROUGE-L"] == pytest.approx(1.098 / 1.68, rel=1e-9)


def _cider_d_reference(hyps, refs, sigma=6.0):
    """CIDEr-D in float64 from its definition (Vedantam et al. 2015, the -D variant of the COCO code)."""
    def grams(s):
        w = s.split()
        return Counter(tuple(w[i:i + n]) for n in range(1, 5) for i in range(len(w) - n + 1))
    df = Counter(g for rs in refs for g in set().union(*(grams(r) for r in rs)))
    log_n = np.log(len(hyps))

    def vec(s):
        c = grams(s)
        v = [{g: t * (log_n - np.log(max(1.0, df[g]))) for g, t in c.items() if len(g) == n} for n in range(1, 5)]
        return v, [np.sqrt(sum(x * x for x in d.values())) for d in v], len(s.split())

    scores = []
    for h, rs in zip(hyps, refs):
        vh, nh, lh = vec(h)
        total = np.zeros(4)
        for r in rs:
            vr, nr, lr = vec(r)
            for n in range(4):
                val = sum(min(x, vr[n].get(g, 0.0)) * vr[n].get(g, 0.0) for g, x in vh[n].items())
                if nh[n] and nr[n]:
                    val /= nh[n] * nr[n]
                total[n] += val * np.exp(-((lh - lr) ** 2) / (2 * sigma ** 2))
        scores.append(10 * total.mean() / len(rs))
    return float(np.mean(scores)), scores


def test_cider_against_formula():
    hyps = ["a red stop sign on a pole", "a bus with an ad", "open late sign"]
    refs = [["a stop sign on a pole", "red stop sign"], ["a city bus with an advert", "bus"],
            ["a neon open late sign", "an open sign", "sign reading open late"]]
    out = caption_scores(dict(enumerate(hyps)), dict(enumerate(refs)), metrics=["cider"], tokenizer="whitespace",
                         per_image=True)
    mean, per = _cider_d_reference(hyps, refs)
    assert out["CIDEr"] == pytest.approx(mean, rel=1e-9)
    assert [out["per_image"][i]["CIDEr"] for i in range(3)] == pytest.approx(per, rel=1e-9)
    assert out["CIDEr"] > 0.5   # not a degenerate all-zero case


@pytest.mark.skipif(not java_available(), reason="no java on PATH (METEOR and the PTB tokenizer need it)")
def test_ptb_and_meteor_with_java():
    # METEOR of an exact match is 1 (one chunk, no fragmentation penalty), of a disjoint pair 0; PTB tokenisation
    # lower-cases and drops the punctuation, so "A man, rides a horse." scores as "a man rides a horse".
    preds = {"same": "A man, rides a horse.", "none": "blue sky"}
    refs = {"same": ["a man rides a horse"], "none": ["green grass"]}
    out = caption_scores(preds, refs, per_image=True)
    assert out["per_image"]["same"]["METEOR"] == pytest.approx(1.0)
    assert out["per_image"]["none"]["METEOR"] == pytest.approx(0.0)
    assert out["per_image"]["same"]["BLEU-4"] == pytest.approx(1.0, rel=1e-6)
    assert out["per_image"]["same"]["ROUGE-L"] == pytest.approx(1.0)
    assert set(out) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "per_image"}


def test_missing_java_is_named(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(RuntimeError, match="java"):
        caption_scores({0: "a"}, {0: ["a"]}, metrics=["meteor"], tokenizer="whitespace")
    with pytest.raises(RuntimeError, match="PTB tokenizer"):
        caption_scores({0: "a"}, {0: ["a"]}, metrics=["bleu"])
    # whitespace tokenisation + pure-Python metrics need no Java
    assert caption_scores({0: "a b"}, {0: ["a b"]}, metrics=["rouge"], tokenizer="whitespace")["ROUGE-L"] == 1.0


def test_whitespace_tokenizer():
    from jaxmm.metrics.captions import _tokenize

    got = _tokenize({0: ['A state-of-the-art sign, reading "OPEN 24h" - for $3.50 (1,000 a day).']}, "whitespace")
    assert got == {0: ["a state-of-the-art sign reading open 24h for $3.50 1,000 a day"]}


def test_caption_bad_input():
    with pytest.raises(ValueError, match="references"):
        caption_scores({0: "a"}, {1: ["a"]}, tokenizer="whitespace", metrics=["bleu"])
    with pytest.raises(ValueError, match=r"references\[0\]"):
        caption_scores({0: "a"}, {0: "a"}, tokenizer="whitespace", metrics=["bleu"])
    with pytest.raises(ValueError, match="metrics"):
        caption_scores({0: "a"}, {0: ["a"]}, metrics=["spice"])


# ---------------------------------------------------------------- VQA
@pytest.mark.parametrize("raw, norm", [
    ("The Dog.", "dog"),                  # article dropped, period stripped, lower-cased
    ("two", "2"), ("None", "0"),          # number words
    ("dont", "don't"), ("wouldnt've", "wouldn't've"),   # contractions get their apostrophe
    ("yes!", "yes"), ("left-hand", "left hand"),          # ! deleted; - inside a word becomes a space
    ("1,000", "1000"),                    # digit,digit: punctuation deleted, not spaced
    ("3.5", "3.5"),                       # a period between digits stays
    ("3.", "3"),                          # the official regex strips a period after a digit too
    ("  an\tapple\n", "apple"),
])
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_vqa_soft_score_leave_one_out():
    # 10 answers: "2" x3 (after normalising "two"), "3" x7; prediction "2".
    # each "2" answer dropped: 2 others match -> 2/3; each "3" dropped: 3 match -> 1. (3 * 2/3 + 7 * 1) / 10 = 0.9
    answers = ["2", "two", "2"] + ["3"] * 7
    assert vqa_score("Two", answers) == pytest.approx(0.9)
    assert vqa_score("Two", answers, leave_one_out=False) == pytest.approx(1.0)    # min(3/3, 1)
    assert vqa_score("3", ["3", "4", "4"], leave_one_out=False) == pytest.approx(1 / 3)
    # leave-one-out with 1 match in 3: dropping it -> 0, dropping a "4" -> 1/3; (0 + 1/3 + 1/3) / 3 = 2/9
    assert vqa_score("3", ["3", "4", "4"]) == pytest.approx(2 / 9)
    assert vqa_score("five", "5") == 1.0 and vqa_score("6", "5") == 0.0


def test_vqa_exact_and_contains():
    preds = ["The answer is 12 dollars", "stop", "Open"]
    gts = [["12 dollars"], ["stop sign"], ["open"]]
    # exact: only "open" matches -> 1/3; contains: "12 dollars" in pred 0 and "open" in pred 2 -> 2/3
    assert vqa_accuracy(preds, gts, mode="exact") == pytest.approx(1 / 3)
    assert vqa_accuracy(preds, gts, mode="contains") == pytest.approx(2 / 3)
    # whole words only: "cat" is not contained in "concatenate"
    assert vqa_score("concatenate", "cat", mode="contains") == 0.0


def test_vqa_bad_input():
    with pytest.raises(ValueError, match="answers"):
        vqa_accuracy(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="mode"):
        vqa_score("a", "a", mode="fuzzy")
    with pytest.raises(ValueError, match="answers"):
        vqa_score("a", [])


# ---------------------------------------------------------------- ANLS
def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3 and levenshtein("ab", "ab") == 0


def test_anls_hand_computed():
    # q0: "invoce 12" vs "invoice 12": 1 edit / 10 chars -> 0.9
    # q1: "total" vs "totals" (1/6 -> 5/6) and vs "sum" (NL >= 0.5 -> 0): max 5/6
    # q2: "abc" vs "xyz": NL = 1 >= 0.5 -> 0;  q3: case and spaces normalised -> 1
    preds = ["invoce 12", "total", "abc", "  ACME  Corp "]
    gts = [["Invoice 12"], ["totals", "sum"], "xyz", ["acme corp"]]
    assert anls(preds, gts) == pytest.approx((0.9 + 5 / 6 + 0 + 1) / 4)
    # threshold: "abcd" vs "abxy": NL = 0.5, not < 0.5 -> 0
    assert anls(["abcd"], [["abxy"]]) == 0.0
    assert anls(["abcd"], [["abcy"]]) == pytest.approx(0.75)


# ---------------------------------------------------------------- TextDiffuser OCR metrics
def test_ocr_word_metrics_hand_computed():
    # image 0: pred [open, 24, 24, x], target [OPEN, 24, HOURS]: multiset match {open, 24} = 2 -> P 2/4, R 2/3
    # image 1: pred [cafe, Bar], target [bar, cafe]: P 1, R 1, exact set -> acc 1
    # image 2: pred [], target [sale]: P 0, R 0
    # P = (1/2 + 1 + 0)/3 = 1/2, R = (2/3 + 1 + 0)/3 = 5/9, F = 2 P R / (P + R) = (5/9) / (19/18) = 10/19
    out = ocr_word_metrics([["open", "24", "24", "x"], ["cafe", "Bar"], []],
                           [["OPEN", "24", "HOURS"], ["bar", "cafe"], ["sale"]])
    assert out["precision"] == pytest.approx(0.5)
    assert out["recall"] == pytest.approx(5 / 9)
    assert out["f_measure"] == pytest.approx(10 / 19)
    assert out["accuracy"] == pytest.approx(1 / 3)
    # word by word, unlike the joined-string comparison of TextDiffuser's script
    assert ocr_word_metrics([["ab", "c"]], [["a", "bc"]])["accuracy"] == 0.0
    with pytest.raises(ValueError, match="targets"):
        ocr_word_metrics([["a"]], [])
    with pytest.raises(ValueError, match=r"predicted\[0\]"):
        ocr_word_metrics(["open"], [["open"]])
