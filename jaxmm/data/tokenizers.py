"""Tokenizers with one interface: a byte-level tokenizer for the embedded models and a wrapper around a
Hugging Face `tokenizer.json` (the `tokenizers` package).

Both expose:
  `encode(text) -> list[int]`   (the strings "<image>" and "<audio>" in `text` become the placeholder ids;
                                 no BOS/EOS is added: `jaxmm.data.conversation` adds them)
  `decode(ids) -> str`          (special ids are dropped unless `skip_special=False`)
  `vocab_size`, `pad_id`, `bos_id`, `eos_id`, `image_id`, `audio_id`
  `role_prefix(role) -> list[int]` the tokens that open a turn of `role` in {"system", "user", "assistant"}.

`ByteTokenizer` ids: 0..255 are the UTF-8 bytes, then
  256 <pad>, 257 <bos>, 258 <eos>, 259 <image>, 260 <audio>, 261 <system>, 262 <user>, 263 <assistant>;
vocab_size = 264. Role markers are single tokens, so a turn costs one token of overhead.
`HFTokenizer` uses the file's own BOS/EOS/PAD tokens (found by common names, or given) and adds
"<image>"/"<audio>" as special tokens when the vocabulary lacks them; role prefixes are the text
"USER: " / " ASSISTANT: " / "SYSTEM: " (the Vicuna / LLaVA-1.5 template: "USER: <q> ASSISTANT: <a></s>").
An `HFTokenizer` whose folder has a chat template (`chat_template.jinja` or tokenizer_config.json's
`chat_template`) also has `chat_template` (a `jaxmm.data.chat_template.ChatTemplate`, else None) and
`apply_chat_template(messages, add_generation_prompt=...)`; `ConversationFormatter` then formats with the
template, the Vicuna role prefixes being the fallback.
"""
from __future__ import annotations

import os
import re
from typing import Iterable, Sequence

from jaxmm.checks import fail

ROLES = ("system", "user", "assistant")
IMAGE_TOKEN = "<image>"
AUDIO_TOKEN = "<audio>"
_PLACEHOLDER_RE = re.compile(r"(<image>|<audio>)")


def _check_role(role: str) -> None:
    if role not in ROLES:
        fail("role", f"one of {ROLES}", repr(role))


class ByteTokenizer:
    """UTF-8 bytes plus eight special tokens (see the module docstring for the ids)."""

    SPECIALS = ("<pad>", "<bos>", "<eos>", IMAGE_TOKEN, AUDIO_TOKEN, "<system>", "<user>", "<assistant>")

    def __init__(self):
        self.special_ids = {name: 256 + i for i, name in enumerate(self.SPECIALS)}
        self.pad_id = self.special_ids["<pad>"]
        self.bos_id = self.special_ids["<bos>"]
        self.eos_id = self.special_ids["<eos>"]
        self.image_id = self.special_ids[IMAGE_TOKEN]
        self.audio_id = self.special_ids[AUDIO_TOKEN]
        self.vocab_size = 256 + len(self.SPECIALS)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            fail("text", "a str", type(text).__name__)
        ids: list[int] = []
        for piece in _PLACEHOLDER_RE.split(text):
            if piece in (IMAGE_TOKEN, AUDIO_TOKEN):
                ids.append(self.special_ids[piece])
            elif piece:
                ids.extend(piece.encode("utf-8"))
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        out, buf = [], bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < 256:
                buf.append(i)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf = bytearray()
            if not 256 <= i < self.vocab_size:
                fail("ids", f"token ids in [0, {self.vocab_size})", i)
            if not skip_special:
                out.append(self.SPECIALS[i - 256])
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def role_prefix(self, role: str) -> list[int]:
        _check_role(role)
        return [self.special_ids[f"<{role}>"]]


_BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "[CLS]")
_EOS_NAMES = ("</s>", "<|end_of_text|>", "<|endoftext|>", "<|im_end|>", "<eos>", "[SEP]")
_PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]", "<unk>")


def _config_specials(path: str) -> dict:
    """bos/eos/pad token strings from a Hugging Face `tokenizer_config.json` beside the tokenizer, if any."""
    if not os.path.isfile(path):
        return {}
    import json

    with open(path) as f:
        cfg = json.load(f)
    out = {}
    for what in ("bos", "eos", "pad"):
        tok = cfg.get(f"{what}_token")
        tok = tok.get("content") if isinstance(tok, dict) else tok
        if isinstance(tok, str):
            out[what] = tok
    return out


class HFTokenizer:
    """A Hugging Face `tokenizer.json` behind the `ByteTokenizer` interface.

    `path` is the file or a folder holding `tokenizer.json`. BOS/EOS/PAD are, in order: the arguments, the
    `tokenizer_config.json` beside the file, common names; a missing EOS is an error, a missing PAD falls back to EOS, a missing BOS to None
    (then no BOS is emitted).
    """

    ROLE_TEXT = {"system": "SYSTEM: ", "user": "USER: ", "assistant": " ASSISTANT: "}

    def __init__(self, path: str | os.PathLike, *, bos: str | None = None, eos: str | None = None,
                 pad: str | None = None, chat_template: bool = True):
        from tokenizers import AddedToken, Tokenizer

        from jaxmm.data.chat_template import ChatTemplate

        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        named = _config_specials(os.path.join(os.path.dirname(path), "tokenizer_config.json"))
        bos, eos, pad = bos or named.get("bos"), eos or named.get("eos"), pad or named.get("pad")
        self.path = path
        self._tok = Tokenizer.from_file(path)
        missing = [t for t in (IMAGE_TOKEN, AUDIO_TOKEN) if self._tok.token_to_id(t) is None]
        if missing:
            self._tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        self.image_id = self._tok.token_to_id(IMAGE_TOKEN)
        self.audio_id = self._tok.token_to_id(AUDIO_TOKEN)
        self.bos_id = self._find("bos", bos, _BOS_NAMES, required=False)
        self.eos_id = self._find("eos", eos, _EOS_NAMES, required=True)
        pad_id = self._find("pad", pad, _PAD_NAMES, required=False)
        self.pad_id = self.eos_id if pad_id is None else pad_id
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self._role_ids = {r: self.encode(t) for r, t in self.ROLE_TEXT.items()}
        self.chat_template = ChatTemplate.from_folder(os.path.dirname(path)) if chat_template else None

    def _find(self, what, given, names, required):
        if given is not None:
            i = self._tok.token_to_id(given)
            if i is None:
                fail(what, f"a token of {self.path}", repr(given))
            return i
        for name in names:
            i = self._tok.token_to_id(name)
            if i is not None:
                return i
        if required:
            fail(what, f"one of {names} in {self.path} (or pass {what}=...)", "none of them")
        return None

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            fail("text", "a str", type(text).__name__)
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """(ids, [(start, end) character span of each token in `text`]); no special tokens added."""
        enc = self._tok.encode(text, add_special_tokens=False)
        return list(enc.ids), [tuple(o) for o in enc.offsets]

    def apply_chat_template(self, messages, *, add_generation_prompt: bool = False, tokenize: bool = True,
                            **kwargs):
        """transformers' `tokenizer.apply_chat_template(messages, add_generation_prompt=..., tokenize=...)`: the
        rendered text, or its ids (tokenised without added special tokens, as transformers does)."""
        if self.chat_template is None:
            fail("chat_template", f"a chat template in {os.path.dirname(self.path)} (chat_template.jinja or "
                 "tokenizer_config.json 'chat_template')", None)
        text = self.chat_template.render(messages, add_generation_prompt=add_generation_prompt, **kwargs)
        return self.encode(text) if tokenize else text

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def role_prefix(self, role: str) -> list[int]:
        _check_role(role)
        return list(self._role_ids[role])


WORD_BPE_SPECIALS = ("<pad>", "<s>", "</s>", "<image>", "<audio>")


def train_word_bpe(texts: Iterable[str], folder: str | os.PathLike, *, vocab_size: int = 1024) -> str:
    """Train a small byte-level BPE on `texts` and write it as `folder`/tokenizer.json plus a
    tokenizer_config.json naming <s>, </s>, <pad> (what `HFTokenizer(folder)` and `data.tokenizer=folder` read);
    returns the folder.

    For models trained from scratch on generated text (the reading tasks): whitespace runs and punctuation are
    split off before the byte-level BPE, so a word is the same token(s) wherever it stands (after a space, a
    newline, "ASSISTANT: " or at the start of a layout line) and copying a word out of an OCR block is copying
    its one or two tokens instead of its bytes; runs of spaces (layout canvases) merge to few tokens. Byte-level,
    so every string encodes (no <unk>) and `decode(encode(s)) == s`. `vocab_size` >= 300 (256 bytes, the
    specials, merges). Our CPU-scale choice: the papers use their LLM's own tokenizer."""
    import json

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 300:
        fail("vocab_size", "an integer >= 300", repr(vocab_size))
    if isinstance(texts, str):
        fail("texts", "an iterable of str (not one str)", "str")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s+"), behavior="isolated"),
        pre_tokenizers.Split(Regex(r"[^\sA-Za-z0-9]"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(WORD_BPE_SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(iter(texts), trainer)
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, "tokenizer.json.tmp")
    tok.save(tmp)
    os.replace(tmp, os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}, f, indent=1)
        f.write("\n")
    return folder
