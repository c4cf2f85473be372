"""Caption metrics through pycocoevalcap, the MS-COCO caption evaluation code the field reports with.

BLEU-1..4 (corpus BLEU, `closest` reference length), METEOR 1.5 (Java), ROUGE-L (LCS F-measure, beta 1.2) and
CIDEr-D (sigma 6, clipped n-gram counts, x10; document frequencies from the references of the evaluated set, so
the score depends on the whole set: evaluate all images in one call). SPICE is left out: its first use downloads
Stanford CoreNLP models, which these machines cannot.

Tokenisation: `tokenizer="ptb"` is the COCO protocol (Stanford PTBTokenizer, lower-cased, punctuation removed;
runs Java); `tokenizer="whitespace"` lower-cases and drops punctuation with a regular expression, keeping
in-word hyphens and apostrophes (an approximation of PTB: "don't" stays one token, PTB splits it), and needs no Java (BLEU, ROUGE-L and CIDEr then run without it; METEOR still needs Java).
"""
from __future__ import annotations

import contextlib
import io
import re
import shutil
from typing import Mapping, Sequence

from jaxmm.checks import fail

METRICS = ("bleu", "meteor", "rouge", "cider")
_NEEDS_JAVA = {"meteor"}
_PUNCT = re.compile(r"[\"`;:!?()\[\]{}]+|(?<!\d)[.,]|[.,](?!\d)|(?<!\w)['-]+|['-]+(?!\w)")


def java_available() -> bool:
    """True when a `java` executable is on PATH (METEOR and the PTB tokenizer run `java -jar ...`)."""
    return shutil.which("java") is not None


def _require_java(what: str) -> None:
    if not java_available():
        raise RuntimeError(f"{what} runs Java, but no `java` executable is on PATH; install a Java runtime "
                           "(Debian: apt-get install default-jre-headless) or use tokenizer='whitespace' and "
                           "metrics without 'meteor'")


def _import_pycocoevalcap():
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError as e:
        raise ImportError("caption metrics need pycocoevalcap: pip install 'jaxmm[test]' "
                          "(or pip install pycocoevalcap)") from e


def _check_inputs(predictions, references):
    if not isinstance(predictions, Mapping) or not isinstance(references, Mapping):
        fail("predictions/references", "dicts keyed by image id ({id: caption} and {id: [captions]})",
             f"{type(predictions).__name__} and {type(references).__name__}")
    if not predictions:
        fail("predictions", "at least one caption", "an empty dict")
    if set(predictions) != set(references):
        missing = sorted(map(str, set(predictions) ^ set(references)))[:5]
        fail("references", "the same image ids as predictions", f"ids in only one of them: {missing}")
    for key, caption in predictions.items():
        if not isinstance(caption, str):
            fail(f"predictions[{key!r}]", "one caption string", type(caption).__name__)
        refs = references[key]
        if isinstance(refs, str) or not isinstance(refs, Sequence) or not refs \
                or not all(isinstance(r, str) for r in refs):
            fail(f"references[{key!r}]", "a non-empty list of caption strings", repr(refs)[:80])


def _tokenize(captions: Mapping[object, Sequence[str]], tokenizer: str) -> dict:
    if tokenizer == "whitespace":
        return {k: [" ".join(_PUNCT.sub(" ", c.lower()).split()) for c in v] for k, v in captions.items()}
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})


def caption_scores(predictions: Mapping[object, str], references: Mapping[object, Sequence[str]], *,
                   metrics: Sequence[str] = METRICS, tokenizer: str = "ptb", per_image: bool = False) -> dict:
    """Corpus caption scores of one generated caption per image against its reference captions.

    predictions: {image_id: caption}; references: {image_id: [caption, ...]} with the same ids.
    Returns {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"} (those asked for) as floats;
    with per_image=True also "per_image": {image_id: {metric: score}}.
    """
    _check_inputs(predictions, references)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        fail("metrics", f"a non-empty subset of {METRICS}", list(metrics))
    if tokenizer not in ("ptb", "whitespace"):
        fail("tokenizer", "'ptb' or 'whitespace'", repr(tokenizer))
    _import_pycocoevalcap()
    if tokenizer == "ptb":
        _require_java("the PTB tokenizer (tokenizer='ptb')")
    if _NEEDS_JAVA & set(metrics):
        _require_java("METEOR")
    keys = list(predictions)
    res = _tokenize({k: [predictions[k]] for k in keys}, tokenizer)
    gts = _tokenize({k: list(references[k]) for k in keys}, tokenizer)
    out, per = {}, {k: {} for k in keys}

    def record(name, score, scores):
        out[name] = float(score)
        for k, s in zip(keys, scores):
            per[k][name] = float(s)

    for metric in metrics:
        if metric == "bleu":
            from pycocoevalcap.bleu.bleu import Bleu
            with contextlib.redirect_stdout(io.StringIO()):   # the scorer prints its n-gram statistics
                score, scores = Bleu(4).compute_score(gts, res, verbose=0)
            for n in range(4):
                record(f"BLEU-{n + 1}", score[n], scores[n])
        elif metric == "meteor":
            from pycocoevalcap.meteor.meteor import Meteor
            scorer = Meteor()
            try:
                score, scores = scorer.compute_score(gts, res)
            finally:
                del scorer                                   # stops the Java process
            record("METEOR", score, scores)
        elif metric == "rouge":
            from pycocoevalcap.rouge.rouge import Rouge
            score, scores = Rouge().compute_score(gts, res)
            record("ROUGE-L", score, scores)
        else:
            from pycocoevalcap.cider.cider import Cider
            score, scores = Cider().compute_score(gts, res)
            record("CIDEr", score, scores)
    if per_image:
        out["per_image"] = per
    return out
