"""jaxmm.data.trins: captions mention every text element, QA answers come from the ground truth, the folder
round-trips, bad records fail with the file / record / reason named, and the LLaVA export reads back through
jaxmm.data.llava_json."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from jaxmm.data import textrich as tr
from jaxmm.data import trins
from jaxmm.data.llava_json import BadRecordError, LlavaJsonSource


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("trins")
    return trins.write_trins(root, 6, seed=1)


def test_captions_are_long_and_mention_the_text():
    lengths = []
    for seed in range(36):
        page = tr.make_page(seed)
        cap = trins.caption_page(page)
        lengths.append(len(cap.split()))
        assert page.background in cap and tr.KINDS and cap.startswith("The image shows")
        lines = {}
        for w, ln in zip(page.words, page.lines):
            lines.setdefault(int(ln), []).append(w)
        if page.kind == "document":   # title, every field, the body's first words
            must = [lines[0]] + [ws for ws in lines.values() if ws[0].endswith(":")]
            for ws in must:
                assert " ".join(ws) in cap, (ws, cap)
        else:                          # every word of every line, in order within its line
            for ws in lines.values():
                assert all(w in cap for w in ws), (ws, cap)
        for shape in page.shapes:
            assert shape["color"] in cap
    assert 55 <= np.mean(lengths) <= 80, np.mean(lengths)    # TRINS: ~65 words per caption


def test_qa_answers_follow_from_page_and_caption():
    page = tr.make_page(2, "receipt")
    cap = trins.caption_page(page)
    qa = trins.trins_qa(page, cap, seed=0)
    assert {"question": "What kind of image is this?", "answer": "narrow shop receipt"} in qa
    for pair in qa:
        if pair["question"].startswith("What is the price of "):
            item = pair["question"][len("What is the price of "):-1]
            assert f"{item} for {pair['answer']}" in cap and page.fields[item] == pair["answer"]
    first = [w for w, ln in zip(page.words, page.lines) if ln == 0]
    assert {"question": "What does the first line of text say?", "answer": " ".join(first)} in qa


def test_folder_layout_and_round_trip(folder):
    caps = json.load(open(os.path.join(folder, "captions.json")))
    qa = json.load(open(os.path.join(folder, "qa.json")))
    ocr = json.load(open(os.path.join(folder, "ocr.json")))
    assert sorted(caps) == sorted(qa) == sorted(ocr) == [f"{i:06d}.png" for i in range(6)]
    # the files hold exactly what the generator produced for page i
    page = tr.make_page(1 * 1_000_003 + 3, tr.KINDS[3])
    assert caps["000003.png"] == trins.caption_page(page)
    assert ocr["000003.png"]["words"] == page.words
    np.testing.assert_allclose(ocr["000003.png"]["boxes"], page.boxes, atol=0.006)
    img = np.asarray(Image.open(os.path.join(folder, "images", "000003.png")))
    assert np.array_equal(img, page.image)

    vqa = trins.TrinsSource(folder, task="vqa", image_size=32)
    assert len(vqa) == sum(len(v) for v in qa.values())
    ex = vqa[0]
    assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
    assert ex["conversations"] == [("user", "<image>\n" + qa["000000.png"][0]["question"]),
                                   ("assistant", qa["000000.png"][0]["answer"])]
    assert ex["ocr_text"].split() == ocr["000000.png"]["words"]
    cap = trins.TrinsSource(folder, task="caption")
    assert len(cap) == 6 and cap[5]["answer"] == caps["000005.png"]


def test_llava_export_round_trip(folder, tmp_path):
    path = trins.export_llava(folder, tmp_path / "trins_llava.json")
    src = LlavaJsonSource(path, folder, image_size=32)
    qa = json.load(open(os.path.join(folder, "qa.json")))
    caps = json.load(open(os.path.join(folder, "captions.json")))
    assert len(src) == 6
    for k in range(6):
        name = f"{k:06d}.png"
        ex = src[k]
        want = [("user", "<image>\n" + trins.CAPTION_PROMPT), ("assistant", caps[name])]
        for pair in qa[name]:
            want += [("user", pair["question"]), ("assistant", pair["answer"])]
        assert ex["conversations"] == want
        np.testing.assert_array_equal(ex["image"], trins.TrinsSource(folder, task="caption", image_size=32)[k]["image"])


def _copy(folder, tmp_path, **files):
    root = tmp_path / "user"
    os.makedirs(root / "images")
    for name in os.listdir(os.path.join(folder, "images")):
        (root / "images" / name).write_bytes(open(os.path.join(folder, "images", name), "rb").read())
    for fname in ("captions.json", "qa.json"):
        data = json.load(open(os.path.join(folder, fname)))
        for key, value in files.get(fname.split(".")[0], {}).items():
            data[key] = value
        (root / fname).write_text(json.dumps(data))
    return root


@pytest.mark.parametrize("edit, kind, match", [
    ({"qa": {"000002.png": [{"question": "Q?"}]}}, "bad_qa", r"record 2 \(id '000002.png'\): QA pair 0"),
    ({"qa": {"000004.png": "just a string"}}, "bad_qa", "record 4"),
    ({"captions": {"000001.png": ""}}, "bad_caption", "record 1"),
    ({"qa": {"../etc.png": [{"question": "a", "answer": "b"}]}}, "bad_name", "image file name"),
])
def test_bad_records_are_named(folder, tmp_path, edit, kind, match):
    root = _copy(folder, tmp_path, **edit)
    task = "caption" if "captions" in edit else "vqa"
    with pytest.raises(BadRecordError, match=match) as err:
        trins.TrinsSource(root, task=task)
    assert err.value.kind == kind and str(root) in str(err.value)
    with pytest.warns(UserWarning, match="skipped 1"):
        src = trins.TrinsSource(root, task=task, skip_bad_records=True)
    assert src.skipped == {kind: 1} and src.num_skipped == 1


def test_missing_and_unreadable_files(folder, tmp_path):
    root = _copy(folder, tmp_path)
    os.remove(root / "images" / "000003.png")
    with pytest.raises(FileNotFoundError, match=r"record 3 .*image file not found"):
        trins.TrinsSource(root)
    (root / "images" / "000003.png").write_bytes(b"not a png")
    with pytest.raises(BadRecordError, match="cannot read image"):
        trins.TrinsSource(root)
    (root / "qa.json").write_text("{broken")
    with pytest.raises(ValueError, match="qa.json: malformed JSON"):
        trins.TrinsSource(root)
    (root / "qa.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="keyed by image file name"):
        trins.TrinsSource(root)
    with pytest.raises(FileNotFoundError, match="TRINS folder"):
        trins.TrinsSource(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="task"):
        trins.TrinsSource(root, task="ocr")


def test_registered_source(folder):
    from jaxmm.data import sources

    spec = sources.get("trins")
    args = dict(spec.defaults, train_root=folder, task="caption")
    train = spec.build(args, split="train", examples=0, seed=0, encoder_args={"image_size": 16})
    assert len(train) == 6 and train[0]["image"].shape == (16, 16, 3)
    assert spec.build(args, split="eval", examples=0, seed=0, encoder_args={}) is None   # no eval_root


def test_real_ocr_file(tmp_path):
    """ocr.json from PP-OCR (rapidocr) on two sign pages (big text): the words it reads are the page's words."""
    import rapidocr  # noqa: F401  (the ocr extra, installed by `make test`)
    root = trins.write_trins(tmp_path, 2, seed=3, kinds=("sign",), ocr_engine="rapidocr")
    ocr = json.load(open(os.path.join(root, "ocr.json")))
    for i in range(2):
        page = tr.make_page(3 * 1_000_003 + i, "sign")
        read = [w.lower() for w in ocr[f"{i:06d}.png"]["words"]]
        assert np.asarray(ocr[f"{i:06d}.png"]["boxes"]).shape == (len(read), 4, 2)
        big = [w.lower() for w, s in zip(page.words, page.sizes) if s >= 20]
        assert big and all(w in read for w in big), (big, read)
    src = trins.TrinsSource(root)
    assert src[0]["ocr_text"].split() == ocr["000000.png"]["words"]


# --------------------------------------------------------------------------- LaRA's word-level tokenizer
BPE_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "lara_bpe")   # committed, vocab 2048


@pytest.fixture(scope="module")
def word_tok():
    from jaxmm.data import HFTokenizer

    return HFTokenizer(BPE_DIR)


def test_word_tokenizer_round_trips_answers_and_makes_them_copyable(word_tok):
    from jaxmm.data import lara

    src = lara.LaraData(48, split="eval", task="vqa", ocr="oracle", ocr_budget=None, pages=16)
    copyable = 0
    for i in range(len(src)):
        ex = src[i]
        ids = word_tok.encode(ex["answer"])
        assert word_tok.decode(ids) == ex["answer"]          # exact text back, spaces included
        if ex["kind"] in ("first_line", "price", "key_value"):  # the answer stands in the OCR block word for word
            prompt = word_tok.encode(ex["conversations"][0][1])
            assert any(prompt[j:j + len(ids)] == ids for j in range(len(prompt))), ex
            copyable += 1
    assert copyable >= 10


def test_word_corpus_makes_the_generator_words_single_tokens(word_tok):
    per_word = np.mean([len(word_tok.encode(w)) for w in tr.WORDS])   # the generator's 96 words
    per_byte = np.mean([len(w.encode()) for w in tr.WORDS])
    assert per_word <= 1.2 and per_byte > 5, (per_word, per_byte)   # a byte tokenizer: one token per byte
    with pytest.raises(ValueError, match="pages"):
        next(trins.word_corpus(0))
