"""Conversation formatting: loss mask exactly on answer tokens, one placeholder, padding, eval prompts."""
import numpy as np
import pytest

from jaxmm.data.conversation import ConversationFormatter
from jaxmm.data.tokenizers import ByteTokenizer

TOK = ByteTokenizer()
IMAGE = np.zeros((8, 8, 3), np.uint8)


def _example(turns, **extra):
    return {"conversations": turns, **extra}


def test_loss_mask_covers_exactly_the_answer_tokens_and_eos():
    ex = _example([("user", "<image>\nWhich word is red?"), ("assistant", "cat")], image=IMAGE)
    out = ConversationFormatter(TOK, max_len=48)(ex)
    ids, mask, att = out["input_ids"], out["loss_mask"], out["attention_mask"]
    assert ids.shape == mask.shape == att.shape == (48,) and ids.dtype == np.int32
    # Independent layout: bos, user, image, "\nWhich word is red?", assistant, "cat", eos, pads.
    expect = [TOK.bos_id, TOK.role_prefix("user")[0], TOK.image_id, *b"\nWhich word is red?",
              TOK.role_prefix("assistant")[0], *b"cat", TOK.eos_id]
    n = len(expect)
    np.testing.assert_array_equal(ids[:n], expect)
    np.testing.assert_array_equal(ids[n:], TOK.pad_id)
    np.testing.assert_array_equal(np.nonzero(mask)[0], np.arange(n - 4, n))
    np.testing.assert_array_equal(att, np.arange(48) < n)
    assert (ids == TOK.image_id).sum() == 1
    assert out["image"] is IMAGE


def test_placeholder_inserted_once_and_multi_turn_masks():
    ex = _example([("system", "be brief"), ("user", "colour?"), ("assistant", "red"), ("user", "and?"),
                   ("assistant", "blue")], image=IMAGE)
    out = ConversationFormatter(TOK, max_len=64)(ex)
    ids, mask = out["input_ids"], out["loss_mask"]
    assert (ids == TOK.image_id).sum() == 1
    first_user = np.nonzero(ids == TOK.role_prefix("user")[0])[0][0]
    assert ids[first_user + 1] == TOK.image_id  # prepended to the first user turn
    assert TOK.decode(ids[mask == 1], skip_special=False) == "red<eos>blue<eos>"
    audio = _example([("user", "how many tones?"), ("assistant", "3")], audio=np.zeros((10, 4), np.float32))
    out = ConversationFormatter(TOK, max_len=32)(audio)
    assert (out["input_ids"] == TOK.audio_id).sum() == 1 and (out["input_ids"] == TOK.image_id).sum() == 0
    # a text-only example in an image batch: zero filler image, has_image=0, no placeholder
    text_only = _example([("user", "hi"), ("assistant", "yo")], image=IMAGE, has_image=np.int32(0))
    out = ConversationFormatter(TOK, max_len=16)(text_only)
    assert (out["input_ids"] == TOK.image_id).sum() == 0 and out["has_image"] == 0 and out["image"] is IMAGE


def test_eval_prompt_is_left_padded_and_answer_kept():
    ex = _example([("user", "<image>\nRead the word."), ("assistant", "owl")], image=IMAGE)
    out = ConversationFormatter(TOK, max_len=40, eval=True, max_prompt_len=36, max_answer_len=6)(ex)
    n_real = int(out["attention_mask"].sum())
    prompt = out["prompt_ids"][out["prompt_mask"] == 1]
    assert out["prompt_mask"][-1] == 1 and out["prompt_mask"][0] == 0  # left padding
    np.testing.assert_array_equal(np.concatenate([prompt, [*b"owl", TOK.eos_id]]), out["input_ids"][:n_real])
    assert prompt[-1] == TOK.role_prefix("assistant")[0]
    np.testing.assert_array_equal(out["answer_ids"], [*b"owl", TOK.pad_id, TOK.pad_id, TOK.pad_id])
    assert str(out["answer"]) == "owl"


def test_errors_and_truncation():
    fmt = ConversationFormatter(TOK, max_len=16, truncate=False)
    with pytest.raises(ValueError, match="max_len"):
        fmt(_example([("user", "a long question here"), ("assistant", "x")]))
    with pytest.raises(ValueError, match="placeholder"):
        fmt(_example([("user", "<image><image>"), ("assistant", "x")], image=IMAGE))
    with pytest.raises(ValueError, match="without 'image'"):
        fmt(_example([("user", "<image>"), ("assistant", "x")]))
    with pytest.raises(ValueError, match="assistant"):
        fmt(_example([("user", "hi")]))
    with pytest.raises(ValueError, match="keep"):
        ConversationFormatter(TOK, max_len=16, keep=("boxes",))(_example([("user", "q"), ("assistant", "a")]))
    # truncate=True keeps what fits, as long as an answer token survives
    out = ConversationFormatter(TOK, max_len=8)(_example([("user", "q"), ("assistant", "abcdefgh")]))
    assert out["attention_mask"].sum() == 8 and out["loss_mask"].sum() == 4
    with pytest.raises(ValueError, match="max_len"):
        ConversationFormatter(TOK, max_len=4)(_example([("user", "question"), ("assistant", "a")]))


def test_placeholder_in_an_assistant_turn_is_not_a_target():
    # the docs: loss_mask is 0 on placeholders; an <image> written inside the answer must not be trained on
    ex = _example([("user", "draw it"), ("assistant", "<image>ok")], image=IMAGE)
    out = ConversationFormatter(TOK, max_len=32)(ex)
    ids, mask = out["input_ids"], out["loss_mask"]
    assert (ids == TOK.image_id).sum() == 1 and mask[ids == TOK.image_id].sum() == 0
    assert TOK.decode(ids[mask == 1], skip_special=False) == "ok<eos>"


def test_length_problem_names_the_prompt_length_without_formatting():
    ex = _example([("user", "<image>" + "q" * 20), ("assistant", "a")], image=IMAGE)
    # bos, user, image, 20 bytes, assistant = 24 prompt tokens before the first answer token
    assert ConversationFormatter(TOK, max_len=24).length_problem(ex) == \
        "prompt of 24 tokens + 1 answer token exceeds max_len 24"
    assert ConversationFormatter(TOK, max_len=25).length_problem(ex) is None
    assert ConversationFormatter(TOK, max_len=25, truncate=False).length_problem(ex) == \
        "conversation of 26 tokens exceeds max_len 25 (truncate=False)"
    late = _example([("user", "q" * 20), ("assistant", "a"), ("user", "<image>"), ("assistant", "b")], image=IMAGE)
    assert ConversationFormatter(TOK, max_len=26).length_problem(late) == \
        "<image> placeholder at token 26 is cut by max_len 26"
    fmt = ConversationFormatter(TOK, max_len=64, eval=True, max_prompt_len=10)
    assert fmt.length_problem(ex) == "prompt of 24 tokens exceeds max_prompt_len 10"
    with pytest.raises(ValueError, match="max_prompt_len: .*prompt of 24 tokens"):
        fmt(ex)
