"""LaRA (issue 19): the OCR token path into the prompt, the TRINS-VQA / TRINS-Cap evaluation loops against
hand-computed scores, and the `:tiny` run end to end with rapidocr (frozen encoder checked)."""
from __future__ import annotations

import numpy as np
import pytest

from jaxmm.data import ByteTokenizer, ConversationFormatter
from jaxmm.data import lara
from jaxmm.data.textrich import make_page
from jaxmm.data.trins import CAPTION_PROMPT, caption_page
from train.tasks.lara import generated_texts, vqa_scores


def _user(example) -> str:
    return example["conversations"][0][1]


# ------------------------------------------------------------------------------------------------ OCR token path
def test_oracle_ocr_words_reach_the_tokens_in_reading_order_under_the_budget():
    tok = ByteTokenizer()
    src = lara.LaraData(6, split="eval", pages=3, ocr="oracle", task="vqa", page_kinds=("sign",), ocr_budget=None)
    ex = src[0]
    page_words = ex["ocr_text"].split(" ")
    question = ex["question"]
    # independent reference: the user turn is [image] "OCR:" [the page's words in reading order] [question]
    rng = np.random.default_rng([0, 1, 0, 7])
    page = make_page(int(rng.integers(2**31)), "sign")
    assert page_words == page.words
    assert _user(ex) == "<image>\nOCR:\n" + " ".join(page.words) + "\n\n" + question
    ids = ConversationFormatter(tok, max_len=256)(ex)["input_ids"]
    assert (" ".join(page.words) + "\n\n" + question).encode() in bytes(int(i) for i in ids if i < 256)
    # the budget: byte tokens, the head of the page kept
    short = lara.LaraData(6, split="eval", pages=3, ocr="oracle", task="vqa", page_kinds=("sign",), ocr_budget=7)[0]
    assert short["ocr_text"] == " ".join(page.words)[:7]
    assert _user(short).startswith("<image>\nOCR:\n" + " ".join(page.words)[:7] + "\n\n")
    # no OCR: no OCR block at all; layout: one canvas row per text line
    none = lara.LaraData(6, split="eval", pages=3, ocr="none", task="vqa", page_kinds=("sign",))[0]
    assert _user(none) == "<image>\n" + question
    laid = lara.LaraData(6, split="eval", pages=3, ocr="oracle", layout=True, ocr_budget=None, task="vqa",
                         page_kinds=("sign",))[0]["ocr_text"]
    assert laid.count("\n") == len(set(page.lines.tolist())) - 1
    assert laid.split() == page.words


def test_tasks_give_the_right_kinds_and_captions():
    cap = lara.LaraData(4, split="eval", pages=2, task="caption", page_kinds=("chart",))
    rng = np.random.default_rng([0, 1, 1, 7])
    assert cap[1]["answer"] == caption_page(make_page(int(rng.integers(2**31)), "chart"))
    assert cap[1]["question"] == CAPTION_PROMPT and cap[1]["kind"] == "caption"
    vqa = lara.LaraData(40, split="eval", pages=4, task="vqa")
    vis = lara.LaraData(40, split="eval", pages=4, task="visual")
    assert {vqa[i]["kind"] for i in range(40)} <= set(lara.VQA_KINDS)
    assert {vis[i]["kind"] for i in range(40)} <= set(lara.VISUAL_KINDS)
    mix = lara.LaraData(200, split="train", pages=8, task="mix", caption_fraction=0.3)
    share = np.mean([mix[i]["kind"] == "caption" for i in range(200)])
    assert 0.2 < share < 0.4
    with pytest.raises(ValueError, match="ocr"):
        lara.LaraData(4, ocr="easyocr")


def test_rapidocr_reads_a_sign():
    page = make_page(3, "sign")
    text = lara.page_ocr_text(page, "rapidocr", cache=False)
    truth = {w.lower() for w in page.words}
    read = {w.lower() for w in text.split()}
    assert len(truth & read) >= 0.75 * len(truth), (page.words, text)


# ------------------------------------------------------------------------------------------------ evaluation loops
def test_vqa_scores_by_hand():
    preds = ["Blue", "the cat", "7", "a red apple"]
    answers = ["blue", "cat", "8", "apple"]
    out = vqa_scores(preds, answers, ["c", "r", "n", "r"])
    # normalised: blue=blue, cat=cat (article dropped), 7!=8, "red apple" != "apple" but contains it
    assert out == {"exact": 0.5, "contains": 0.75, "exact/c": 1.0, "exact/n": 0.0, "exact/r": 0.5}


def test_generation_loop_decodes_valid_rows_and_scores_captions_by_hand():
    from jaxmm.metrics import caption_scores

    tok = ByteTokenizer()
    refs = ["the cat sat down", "a b c d", "ignored filler row"]
    preds = ["the cat sat down", "a b x d", "anything"]

    def ids(texts, n=24):
        out = np.full((len(texts), n), tok.pad_id, np.int32)
        for i, t in enumerate(texts):
            out[i, :len(t)] = list(t.encode())
        return out

    batch = {"answer_ids": ids(refs), "kind_id": np.array([0, 1, 2], np.int32)}
    got_preds, got_refs, kinds = generated_texts([(batch, np.array([1, 1, 0]))], lambda b: ids(preds), tok)
    assert got_preds == preds[:2] and got_refs == refs[:2] and kinds == [0, 1]
    s = caption_scores(dict(enumerate(got_preds)), {i: [r] for i, r in enumerate(got_refs)},
                       metrics=("bleu", "rouge"), tokenizer="whitespace")
    # corpus BLEU-4: 1..4-gram precisions 7/8, 4/6, 2/4, 1/2, brevity penalty 1
    assert s["BLEU-4"] == pytest.approx((7 / 8 * 4 / 6 * 2 / 4 * 1 / 2) ** 0.25, abs=1e-6)
    # ROUGE-L: LCS 3 of 4 both ways -> F_beta = 0.75 for the second caption, 1 for the first
    assert s["ROUGE-L"] == pytest.approx((1.0 + 0.75) / 2, abs=1e-9)


# ------------------------------------------------------------------------------------------------ the tiny run
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from configs.lara import get_config
    from train import loop

    config = get_config("tiny")
    config.data.lara.ocr_cache = str(tmp_path_factory.mktemp("ocr"))
    workdir = str(tmp_path_factory.mktemp("lara_tiny"))
    summary, state = loop.train(config, workdir, "lara", return_state=True)
    return config, summary, state, workdir


def test_tiny_run_with_rapidocr_end_to_end(tiny_run):
    import glob
    import os

    config, summary, state, _ = tiny_run
    assert config.data.lara.ocr == "rapidocr"
    # rapidocr really read the pages: one cache entry per distinct page (2 train + 2 eval, +1 caption/visual
    # sets share the eval pages) and the scores count whole questions of the 4-question TRINS-VQA set
    cached = glob.glob(os.path.join(config.data.lara.ocr_cache, "**", "*.npz"), recursive=True)
    assert 2 <= len(cached) <= 4, cached
    for key in ("eval_trins_vqa_exact", "eval_trins_vqa_contains"):
        assert summary[key] * config.data.eval_examples == pytest.approx(round(summary[key] * 4), abs=1e-6)
    for key in ("eval_loss", "eval_trins_vqa_exact", "eval_trins_vqa_contains", "eval_visual_exact",
                "eval_trins_cap_BLEU-4", "eval_trins_cap_ROUGE-L", "eval_trins_cap_CIDEr"):
        assert np.isfinite(summary[key]), key
        assert key == "eval_loss" or 0.0 <= summary[key] <= 10.0
    assert summary["metric"] == "eval_trins_vqa_contains"


def test_tiny_run_keeps_the_low_res_encoder_frozen_at_its_folder_weights(tiny_run):
    import jax

    from jaxmm.hf import init as hf_init
    from train import tasks
    from train.tasks.lara import LaraTask

    config, _, state, _ = tiny_run
    config = tasks.full_config(config)
    cfg = LaraTask(config).build_model(config).config
    loaded = hf_init.load_group(jax.tree.map(np.zeros_like, state.params), "encoder", config.model.init.encoder,
                                cfg.encoder_config)["encoder"]
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(state.params["encoder"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(np.abs(np.asarray(x)).sum() > 0 for x in jax.tree.leaves(loaded))


def test_llava_read_questions_score_a_lara_run_through_its_own_greedy_loop(tiny_run):
    """llava_read_scores: LLaVA-Read's eval questions (answers from LlavaReadSource built here independently),
    each prompt = the LaRA run's OCR rendering of that page, answered exactly as the run's own greedy decoder
    answers (params from the checkpoint == the trained state)."""
    from jaxmm.data import ConversationFormatter
    from jaxmm.data.llava_read import LlavaReadSource
    from train import tasks
    from train.tasks.lara import LaraTask, decode_rows, llava_read_scores

    config, _, state, workdir = tiny_run
    got = llava_read_scores(workdir, examples=2, engine="oracle", batch_size=1)
    ref = LlavaReadSource(2, seed=0, split="eval", image_size=16, ocr="plain", engine="oracle", budget=None)
    assert got["refs"] == [ref[i]["answer"] for i in range(2)]
    page, *_ = ref._question(0)
    assert ref[0]["ocr_text"] == lara.page_ocr_text(page, "oracle")    # LaRA's own oracle text of that page
    full = tasks.full_config(config)
    task = LaraTask(full)
    model = task.build_model(full)
    src = LlavaReadSource(2, seed=0, split="eval", image_size=16, ocr="plain", engine="oracle",
                          budget=config.data.lara.ocr_budget, tokenizer=task.tok)
    fmt = ConversationFormatter(task.tok, max_len=full.data.max_len, eval=True,
                                max_prompt_len=full.data.max_prompt_len, max_answer_len=full.data.max_answer_len)
    ex = fmt(src[1])
    batch = {k: np.asarray(ex[k])[None] for k in ("prompt_ids", "prompt_mask", "image")}
    new = task.greedy_answers(model, state.params, batch, full.data.max_answer_len + 1)
    assert got["preds"][1] == decode_rows(task.tok, new, np.array([True]))[0]
    assert got["strict"] == pytest.approx(sum(p == r for p, r in zip(got["preds"], got["refs"])) / 2)


def test_small_configs_read_the_committed_word_bpe():
    """Every `small_*` run reads configs/lara_bpe (committed, like configs/llava_read_bpe); nothing is built."""
    import os

    from configs import lara as lara_config

    for v in ("small_pretrain",) + lara_config.ABLATIONS:
        path = lara_config.get_config(v).data.tokenizer
        assert os.path.samefile(path, os.path.join(os.path.dirname(lara_config.__file__), "lara_bpe")), (v, path)
        assert os.path.isfile(os.path.join(path, "tokenizer.json"))
    assert "word_tokenizer" not in lara_config.get_config("small_oracle").task_args


@pytest.mark.slow
def test_committed_word_bpe_is_what_its_regeneration_command_writes(tmp_path):
    """configs/lara_bpe is `train_word_bpe(word_corpus(), vocab_size=2048)` byte for byte (~9 CPU-s)."""
    import filecmp
    import os

    from configs import lara as lara_config
    from jaxmm.data.tokenizers import train_word_bpe
    from jaxmm.data.trins import word_corpus

    train_word_bpe(word_corpus(), tmp_path, vocab_size=2048)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert filecmp.cmp(tmp_path / name, os.path.join(lara_config.BPE, name), shallow=False), name
