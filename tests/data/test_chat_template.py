"""Chat templates rendered as transformers' apply_chat_template renders them (references made by
tests/fixtures/make_hf_fixtures_chat.py with transformers 5.24), and ConversationFormatter on a template."""
import datetime
import json
import os

import jinja2
import numpy as np
import pytest

from jaxmm.data import ConversationFormatter, HFTokenizer
from jaxmm.data.chat_template import ChatTemplate

HF = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "hf")
REF = json.load(open(os.path.join(HF, "qwen2_chat", "chat_reference.json")))
CASES = [(folder, i) for folder, cases in REF.items() if isinstance(cases, list) for i, c in enumerate(cases)
         if "text" in c]


@pytest.mark.parametrize("folder,i", CASES)
def test_rendered_text_and_ids_equal_transformers(folder, i):
    case = REF[folder][i]
    tok = HFTokenizer(os.path.join(HF, folder))
    kw = dict(add_generation_prompt=case["add_generation_prompt"])
    assert tok.apply_chat_template(case["messages"], tokenize=False, **kw) == case["text"]
    if folder == "qwen2_chat" or "<image>" not in case["text"]:
        # (llama3_chat_tok lacks an <image> token: HFTokenizer adds it as a special token, HF splits the text)
        assert tok.apply_chat_template(case["messages"], **kw) == case["ids"]


def test_template_sources_inline_and_jinja_file():
    assert "chat_template.jinja" in os.listdir(os.path.join(HF, "llama3_chat_tok"))
    assert "chat_template" not in json.load(open(os.path.join(HF, "llama3_chat_tok", "tokenizer_config.json")))
    assert "chat_template" in json.load(open(os.path.join(HF, "qwen2_chat", "tokenizer_config.json")))
    t = ChatTemplate.from_folder(os.path.join(HF, "llama3_chat_tok"))
    assert t.special_tokens["bos_token"] == "<|begin_of_text|>" and t.special_tokens["eos_token"] == "<|eot_id|>"
    assert HFTokenizer(os.path.join(HF, "llama_mha")).chat_template is None  # no template: the Vicuna fallback


def test_whitespace_control_and_raise_exception_as_transformers():
    source = ChatTemplate.from_folder(os.path.join(HF, "llama3_chat_tok")).source
    messages = REF["llama3_chat_tok"][0]["messages"]
    plain = jinja2.Environment().from_string(source).render(messages=messages, bos_token="<|begin_of_text|>",
                                                           raise_exception=lambda m: None)
    assert plain != REF["llama3_chat_tok"][0]["text"]  # trim_blocks / lstrip_blocks matter for this template
    err = next(c for c in REF["llama3_chat_tok"] if "error" in c)
    with pytest.raises(jinja2.TemplateError, match=err["error"]):
        ChatTemplate(source).render(err["error_messages"])


def test_globals_filters_and_named_templates(tmp_path):
    t = ChatTemplate("{{ strftime_now('%Y-%m-%d') }}|{{ messages[0] | tojson }}|{{ extra }}|{{ bos_token }}",
                     {"bos_token": "<s>"})
    before = datetime.datetime.now().strftime("%Y-%m-%d")
    out = t.render([{"role": "user", "content": "<b>&\u00e9", "name": None}], extra=3)
    after = datetime.datetime.now().strftime("%Y-%m-%d")
    date, js, extra, bos = out.split("|")
    assert date in (before, after) and extra == "3" and bos == "<s>"
    assert json.loads(js) == {"role": "user", "content": "<b>&\u00e9"} and "\\u" not in js  # None keys dropped
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [
        {"name": "default", "template": "D{{ messages[0].content }}"},
        {"name": "tool_use", "template": "T{{ messages[0].content }}"}]}))
    msg = [{"role": "user", "content": "x"}]
    assert ChatTemplate.from_folder(tmp_path).render(msg) == "Dx"
    assert ChatTemplate.from_folder(tmp_path, name="tool_use").render(msg) == "Tx"
    with pytest.raises(ValueError, match="name"):
        ChatTemplate.from_folder(tmp_path, name="nope")
    (tmp_path / "chat_template.jinja").write_text("J{{ messages[0].content }}")
    assert ChatTemplate.from_folder(tmp_path).render(msg) == "Jx"  # the .jinja file wins, as in transformers 5
    with pytest.raises(ValueError, match="messages"):
        ChatTemplate("x").render([])


def test_formatter_uses_the_template_and_masks_assistant_turns():
    tok = HFTokenizer(os.path.join(HF, "qwen2_chat"))
    conv = [("user", "<image>\ndescribe the image"), ("assistant", "a brown fox"), ("user", "what ?"),
            ("assistant", "the answer is 42 .")]
    ex = {"conversations": conv, "image": np.zeros((4, 4, 3), np.uint8)}
    out = ConversationFormatter(tok, max_len=200, eval=True, max_prompt_len=160)(ex)
    messages = [{"role": r, "content": t} for r, t in conv]
    want = tok.apply_chat_template(messages)  # = transformers' ids (test above)
    n = int(out["attention_mask"].sum())
    assert list(out["input_ids"][:n]) == want and out["input_ids"][0] != tok.bos_id
    answer = [i for i, m in zip(out["input_ids"], out["loss_mask"]) if m]
    assert tok.decode(answer, skip_special=False) == "a brown fox<|im_end|>\nthe answer is 42 .<|im_end|>\n"
    prompt = [int(i) for i, m in zip(out["prompt_ids"], out["prompt_mask"]) if m]
    assert prompt == tok.apply_chat_template(messages[:3], add_generation_prompt=True)
    assert tok.decode(out["answer_ids"][out["answer_ids"] != tok.pad_id]) == "the answer is 42 ."
    assert tok.image_id in out["input_ids"] and out["loss_mask"][list(out["input_ids"]).index(tok.image_id)] == 0
    # chat_template=False: the Vicuna fallback
    vic = ConversationFormatter(tok, max_len=200, chat_template=False)(ex)
    assert tok.decode(vic["input_ids"][vic["attention_mask"] > 0]).startswith("USER: ")


def test_a_template_that_rewrites_earlier_turns_is_refused(tmp_path):
    src = os.path.join(HF, "qwen2_chat")
    for f in ("tokenizer.json",):
        (tmp_path / f).write_bytes(open(os.path.join(src, f), "rb").read())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({  # shows only the last assistant turn
        "eos_token": "<|im_end|>", "chat_template": "{% for m in messages %}{% if m.role != 'assistant' or loop.last "
        "%}{{ m.role }}: {{ m.content }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"}))
    tok = HFTokenizer(tmp_path)
    conv = [("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")]
    with pytest.raises(ValueError, match="chat_template"):
        ConversationFormatter(tok, max_len=100)({"conversations": conv})
