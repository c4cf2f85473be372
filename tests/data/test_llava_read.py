"""Issue 18: LLaVA-Read's layout-aware pre-training targets and QA source, checked against the page generator's
own ground truth (words, boxes, reading-order lines, font sizes) with independent NumPy arithmetic."""
from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from jaxmm.data import ByteTokenizer, HFTokenizer
from jaxmm.data.llava_read import LlavaReadSource, box_tokens, pretrain_example, text_size_kind
from jaxmm.data.textrich import make_page


@pytest.fixture(scope="module")
def pages():
    found = itertools.islice((p for p in (make_page(s, k) for s in range(40) for k in ("document", "table", "receipt"))
                              if p.rotation == 0), 6)
    found = list(found)
    assert len(found) == 6
    return found


def _bounds(quad, hw, bins=100):
    h, w = hw
    x0, y0 = quad[:, 0].min(), quad[:, 1].min()
    x1, y1 = quad[:, 0].max(), quad[:, 1].max()
    return [min(int(x0 * bins // w), bins - 1), min(int(y0 * bins // h), bins - 1),
            min(int(x1 * bins // w), bins - 1), min(int(y1 * bins // h), bins - 1)]


def test_box_tokens_by_hand():
    quad = np.array([[10, 20], [50, 20], [50, 30], [10, 30]], np.float32)
    assert box_tokens(quad, (200, 100)) == "[10 10 50 15]"            # x / 100 px, y / 200 px, 100 bins
    assert box_tokens(quad, (200, 100), bins=8) == "[0 0 4 1]"
    assert box_tokens(quad + 1000, (200, 100)) == "[99 99 99 99]"     # clipped to the last bin


def test_recognition_and_localisation_targets(pages):
    rng = np.random.default_rng(0)
    for page in pages:
        hw = page.image.shape[:2]
        q, a = pretrain_example(page, "recognition", rng)
        box = [int(v) for v in q[q.index("[") + 1:q.index("]")].split()]
        hits = [w for w, quad in zip(page.words, page.boxes) if _bounds(quad, hw) == box]
        assert hits == [a]
        q, a = pretrain_example(page, "localisation", rng)
        word = q.split("'")[1]
        assert [w.lower() for w in page.words].count(word.lower()) == 1
        i = page.words.index(word)
        assert a == "[" + " ".join(map(str, _bounds(page.boxes[i], hw))) + "]"


def test_parsing_and_layout_targets_follow_the_ground_truth_lines(pages):
    rng = np.random.default_rng(1)
    width = 48
    for page in pages:
        truth_lines = {}
        for w, line, quad in zip(page.words, page.lines, page.boxes):
            truth_lines.setdefault(int(line), []).append((quad[:, 0].min(), w))
        rows = [[w for _, w in sorted(v)] for _, v in sorted(truth_lines.items())]
        q, a = pretrain_example(page, "parsing", rng, width=width)
        n = int(q.split()[2]) - 1
        assert a.split() == rows[n]
        q, a = pretrain_example(page, "layout", rng, width=width)
        n = int(q.split()[-1].rstrip(".")) - 1
        assert a.split() == rows[n]
        first = min(quad[:, 0].min() for w, line, quad in zip(page.words, page.lines, page.boxes)
                    if line == sorted(truth_lines)[n])
        assert len(a) - len(a.lstrip(" ")) == int(np.floor(first / (page.image.shape[1] / width) + 0.5))


def test_text_size_kind(pages):
    page = pages[0]
    big = max(page.image.shape[:2])
    for w, s in zip(page.words, page.sizes):
        if page.words.index(w) == list(page.words).index(w):
            assert text_size_kind(page, w) == ("small" if s < 0.03 * big else "large")
    assert text_size_kind(page, "notaword") is None


def test_source_prompt_order_budget_and_kinds():
    tok = ByteTokenizer()
    src = LlavaReadSource(6, stage="finetune", ocr="layout", budget=40, image_size=32, tokenizer=tok)
    for i in range(len(src)):
        ex = src[i]
        user = ex["conversations"][0][1]
        assert user == "<image>\nOCR:\n" + ex["ocr_text"] + "\n\n" + ex["question"]
        assert 0 < len(tok.encode(ex["ocr_text"])) <= 40 and ex["kind"] in ("small", "large")
        assert ex["image"].shape == (32, 32, 3) and ex["conversations"][1] == ("assistant", ex["answer"])
    none = LlavaReadSource(2, stage="pretrain", ocr="none", image_size=32)[0]
    assert none["ocr_text"] == "" and none["conversations"][0][1] == "<image>\n" + none["question"]
    assert none["kind"] in ("recognition", "localisation", "parsing", "layout")
    plain = LlavaReadSource(6, ocr="plain", budget=None, image_size=32)
    full = LlavaReadSource(6, ocr="layout", budget=None, image_size=32)
    assert plain[1]["ocr_text"] == " ".join(full[1]["ocr_text"].split())   # same words, no geometry
    with pytest.raises(ValueError, match="ocr"):
        LlavaReadSource(2, ocr="spaces")
    with pytest.raises(ValueError, match="tasks"):
        LlavaReadSource(2, tasks=("captioning",))


# ---------------------------------------------------------------- the page BPE (configs/llava_read_bpe)
BPE_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "llava_read_bpe")


@pytest.fixture(scope="module")
def bpe():
    return HFTokenizer(BPE_DIR)


def test_page_bpe_specials_and_round_trip(bpe):
    ids = {bpe._tok.token_to_id(t) for t in ("<pad>", "<s>", "</s>", "<image>")}
    assert (bpe.pad_id, bpe.bos_id, bpe.eos_id, bpe.image_id) == (0, 1, 2, 3) and len(ids) == 4
    src = LlavaReadSource(4, split="eval", ocr="layout", width=32, budget=None, tokenizer=bpe)
    for i in range(4):
        text = src[i]["conversations"][0][1].replace("<image>\n", "")
        assert bpe.decode(bpe.encode(text)) == text


def test_page_bpe_words_copy_as_the_same_tokens(bpe):
    """A word's tokens inside the OCR block (after spaces or a newline) are its tokens alone (as an answer right
    after "ASSISTANT: "): no token spans whitespace and a word, on an eval page the tokenizer never saw."""
    src = LlavaReadSource(6, split="eval", ocr="layout", width=32, budget=None, tokenizer=bpe)
    n_words = 0
    for i in range(6):
        text = src[i]["ocr_text"]
        ids, spans = bpe.encode_with_offsets(text)
        pieces = [text[a:b] for a, b in spans]
        assert all(p.isspace() or not any(c.isspace() for c in p) for p in pieces)
        # regroup the non-space pieces into words and compare with each word encoded alone
        pos = 0
        for word in text.split():
            start = text.index(word, pos)
            pos = start + len(word)
            inside = [j for (a, b), j in zip(spans, ids) if start <= a and b <= pos]
            assert inside == bpe.encode(word), word
            n_words += 1
    assert n_words > 40
    lens = [len(bpe.encode(w)) for w in "meadow nova basket kettle glacier".split()]
    assert lens == [1] * 5                       # frequent page words are single tokens
    layout = LlavaReadSource(6, split="eval", ocr="layout", width=32, budget=None)[0]["ocr_text"]
    assert len(bpe.encode(layout)) < len(layout) / 2     # whitespace runs and words merged (bytes: 1 per char)


def test_page_corpus_is_deterministic_and_trains_the_shared_bpe(tmp_path):
    """The corpus is deterministic and feeds the shared trainer; a bad page count is named."""
    from jaxmm.data.llava_read import page_corpus
    from jaxmm.data.tokenizers import train_word_bpe

    a, b = list(page_corpus(3)), list(page_corpus(3))
    assert a == b and a[:4] == ["USER: ", " ASSISTANT: ", "SYSTEM: ", "OCR:\n"] and len(a) > 3 * 4
    assert list(page_corpus(3, seed=1)) != a
    tok = HFTokenizer(train_word_bpe(a, tmp_path / "bpe", vocab_size=320))
    text = a[5]
    assert tok.decode(tok.encode(text)) == text and (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    with pytest.raises(ValueError, match="num_pages"):
        list(page_corpus(0))
