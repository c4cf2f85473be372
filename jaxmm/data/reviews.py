"""Procedural one-sentence reviews with a sentiment label (the PEFT comparison's text task, configs/peft.py):
a clause is positive iff its adjective is positive XOR it says "not"; with "but" the last clause decides."""
from __future__ import annotations

import numpy as np

from jaxmm.data.tokenizers import ByteTokenizer

SUBJECTS = ("the movie", "the food", "the hotel", "the book", "the game", "the song", "my day", "the trip")
VERBS = ("was", "is", "felt")
ADVERBS = ("", "very ", "so ")
POSITIVE = ("good", "great", "fun", "nice", "superb", "lovely")
NEGATIVE = ("bad", "awful", "dull", "boring", "poor", "sad")


def review_sentence(rng: np.random.Generator) -> tuple[str, int]:
    """A procedural review and its label (1 = positive): one clause, or two joined by "but" (30%), where the
    last clause decides; a clause is positive iff its adjective is positive XOR it says "not"."""
    def clause():
        pos = rng.random() < 0.5
        neg = rng.random() < 0.5
        adj = rng.choice(POSITIVE if pos else NEGATIVE)
        text = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {'not ' if neg else ''}{rng.choice(ADVERBS)}{adj}"
        return text, int(pos != neg)

    text, label = clause()
    if rng.random() < 0.3:
        second, label = clause()
        text = f"{text} but {second}"
    return text, label


def sentence_data(n: int, seed: int, max_len: int, split: str):
    """n byte-tokenised reviews ([bos] bytes [eos], right-padded to max_len): input_ids, attention_mask, label."""
    tok = ByteTokenizer()
    rng = np.random.default_rng([seed, {"train": 0, "eval": 1}[split]])
    out = []
    for _ in range(n):
        text, label = review_sentence(rng)
        ids = [tok.bos_id, *tok.encode(text), tok.eos_id][:max_len]
        pad = max_len - len(ids)
        out.append({"input_ids": np.array(ids + [tok.pad_id] * pad, np.int32),
                    "attention_mask": np.array([1] * len(ids) + [0] * pad, np.int32), "label": np.int32(label)})
    return out
