"""Byte-level and tokenizer.json tokenizers: round trips, special ids, placeholders, path errors."""
import pytest

from jaxmm.data.tokenizers import ByteTokenizer, HFTokenizer


def test_byte_tokenizer_round_trip_and_specials():
    tok = ByteTokenizer()
    text = "Read the word: café ✓"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    specials = [tok.pad_id, tok.bos_id, tok.eos_id, tok.image_id, tok.audio_id]
    assert len(set(specials)) == 5 and all(256 <= s < tok.vocab_size for s in specials)
    assert tok.vocab_size == 264
    ids = tok.encode("<image>\nhi <audio>")
    assert ids == [tok.image_id, 10, 104, 105, 32, tok.audio_id]
    assert tok.decode(ids) == "\nhi "
    assert tok.decode(ids, skip_special=False) == "<image>\nhi <audio>"
    assert len(tok.role_prefix("user")) == 1 and tok.role_prefix("user") != tok.role_prefix("assistant")
    with pytest.raises(ValueError, match="role"):
        tok.role_prefix("gpt")
    with pytest.raises(ValueError, match="ids"):
        tok.decode([999])


def _write_tokenizer_json(path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["what word is written at the top", "the red word says cat dog"] * 20, trainer)
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    tok.save(str(path))


def test_hf_tokenizer_from_tokenizer_json(tmp_path):
    path = tmp_path / "tokenizer.json"
    _write_tokenizer_json(path)
    tok = HFTokenizer(tmp_path)  # a folder works too
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 3)
    text = "what word is red? cat"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    ids = tok.encode("<image>\nwhat")
    assert ids[0] == tok.image_id and tok.image_id >= 300 - 50  # added after the trained vocabulary
    assert tok.audio_id != tok.image_id and tok.vocab_size > max(tok.image_id, tok.audio_id)
    assert tok.decode(ids) == "\nwhat"
    assert tok.decode(tok.role_prefix("assistant")) == " ASSISTANT: "


def test_hf_tokenizer_missing_file_names_path(tmp_path):
    missing = tmp_path / "nowhere" / "tokenizer.json"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        HFTokenizer(missing)


def test_hf_tokenizer_matches_hf_ids_on_the_fixture():
    import os

    import numpy as np

    folder = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf", "llama_mha")
    ref = np.load(os.path.join(folder, "reference.npz"))
    tok = HFTokenizer(folder)  # specials from tokenizer_config.json: <s>=2, </s>=3, <pad>=0
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (2, 3, 0)
    for i, text in enumerate(ref["tokenizer_texts"]):
        hf_ids = ref[f"tokenizer_ids_{i}"].tolist()  # PreTrainedTokenizerFast: <s> then the text's ids
        assert [tok.bos_id] + tok.encode(str(text)) == hf_ids
        assert tok.decode(hf_ids) == str(text)


def test_train_word_bpe_words_are_the_same_tokens_everywhere(tmp_path):
    from jaxmm.data.tokenizers import HFTokenizer, train_word_bpe

    words = ["invoice", "total", "apple", "river", "4217", "Zebra"]
    corpus = [" ".join(words[i:] + words[:i]) + "\n" + "   ".join(words) for i in range(len(words))] * 20
    folder = train_word_bpe(corpus, tmp_path / "bpe", vocab_size=400)
    tok = HFTokenizer(folder)
    assert tok.decode([tok.bos_id, tok.eos_id, tok.pad_id], skip_special=False) == "<s></s><pad>"
    for w in ("invoice", "river", "Zebra"):
        alone = tok.encode(w)
        assert len(alone) == 1, (w, alone)       # a frequent word merges to one token
        for ctx in (f"x {w} y", f"a\n{w}\n", f"ASSISTANT: {w}", f"     {w}"):
            ids = tok.encode(ctx)
            assert any(ids[i:i + len(alone)] == alone for i in range(len(ids))), (ctx, ids)
    for s in ("unseen words ü 12.5%\n  x", "   ", "Total: $4217"):
        assert tok.decode(tok.encode(s)) == s   # byte-level: every string round-trips
    assert len(tok.encode(" " * 16)) < 16        # runs of spaces merge


def test_train_word_bpe_bad_input(tmp_path):
    from jaxmm.data.tokenizers import train_word_bpe

    with pytest.raises(ValueError, match="vocab_size"):
        train_word_bpe(["a b"], tmp_path, vocab_size=100)
    with pytest.raises((ValueError, TypeError), match="texts"):
        train_word_bpe("a b", tmp_path)
