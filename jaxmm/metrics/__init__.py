"""Evaluation metrics for captions, VQA, document QA and text rendering (plain Python / NumPy, no JAX).

    from jaxmm.metrics import caption_scores, vqa_accuracy, anls, ocr_word_metrics
    caption_scores({"img1": "a red sign"}, {"img1": ["a red stop sign", "stop sign"]})   # pycocoevalcap, Java
    vqa_accuracy(["two"], [["2", "2", "two", "3"]])            # official VQA normalisation + soft score
    anls(["invoice 12"], [["Invoice 12"]])                       # ANLS, threshold 0.5
    ocr_word_metrics([["open", "24"]], [["OPEN", "24", "HOURS"]])   # TextDiffuser / MARIO-Eval P, R, F, accuracy

`captions` wraps pycocoevalcap (BLEU-1..4, METEOR, ROUGE-L, CIDEr; SPICE left out: it downloads models at
first use); METEOR and the PTB tokenizer run Java. Everything else here is self-contained.
"""
from jaxmm.metrics.captions import caption_scores, java_available
from jaxmm.metrics.docvqa import anls
from jaxmm.metrics.text_rendering import ocr_word_metrics
from jaxmm.metrics.vqa import normalize_answer, vqa_accuracy, vqa_score

__all__ = ["caption_scores", "java_available", "anls", "ocr_word_metrics", "normalize_answer", "vqa_accuracy",
           "vqa_score"]
