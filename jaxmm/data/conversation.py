"""Conversation formatting and tokenisation shared by every data source.

Source examples (what `TextVQA`, `AudioQA`, `LlavaJsonSource`, `tfds_source` return) are dicts with
  "conversations": list of (role, text) with role in {"system", "user", "assistant"};
  "image": uint8 [H, W, 3] and/or "audio": float32 [frames, n_mels] (optional);
  "has_image" / "has_audio": optional int flags; 0 marks a text-only example whose "image"/"audio" is
                 a zero filler kept only so batches stack (no placeholder is inserted for it);
  any other metadata (kept only when named in `keep`).

`ConversationFormatter(tokenizer, max_len=...)(example)` returns fixed-length numpy arrays:
  input_ids      int32 [max_len]  [bos] + per turn: role_prefix(role) + tokens(text) (+ [eos] after an
                                  assistant turn), right-padded with `pad_id` (padding on the right for training);
  loss_mask      int32 [max_len]  1 where input_ids[t] is a token of an assistant turn or the eos closing it,
                                  0 elsewhere (prompt, role prefixes, placeholders even inside an assistant
                                  turn, padding). The loss at t is
                                  the prediction of input_ids[t] from the logits at t-1, i.e.
                                  CE(logits[:, :-1], input_ids[:, 1:]) weighted by loss_mask[:, 1:];
  attention_mask int32 [max_len]  1 on real tokens, 0 on padding;
  plus "image" / "audio" (and the `keep` fields) passed through unchanged.

PLACEHOLDERS: exactly ONE `<image>` (tokenizer.image_id) / `<audio>` (tokenizer.audio_id) token per
modality present, at the position where the encoder's features go; the MLLM expands that single token into
the encoder's N feature vectors itself (the sequence length grows by N-1 inside the model). If the text
has no "<image>" / "<audio>" but the example has that modality, "<image>\\n" is prepended to the first user
turn (the LLaVA convention). More than one placeholder of a kind is an error.

CHAT TEMPLATES: when the tokenizer has one (`HFTokenizer.chat_template`, from the model folder) and
`chat_template=True` (the default), the conversation is rendered by the template as transformers'
`apply_chat_template` renders it and tokenised whole (so input_ids equal transformers' ids); the template's own
BOS and end-of-turn tokens replace [bos] / role prefixes / [eos]. loss_mask is 1 on the tokens that START inside
an assistant turn's span, the span of turn k being [len(render(turns[:k], add_generation_prompt=True)),
len(render(turns[:k+1]))) of the characters: the answer and the template's end-of-turn text after it. A
template whose rendering of a prefix of the conversation is not a prefix of the whole rendering (e.g. one that
drops earlier turns' reasoning) is refused naming the turn. The eval prompt is the tokens before the last
assistant turn's span (ending with the template's generation prompt). Without a template: the Vicuna / byte
format above.

With `eval=True` the output also holds the prompt for generation-based evaluation:
  prompt_ids     int32 [max_prompt_len]  everything before the LAST assistant turn's text, ending with its
                                         role prefix, LEFT-padded with pad_id (for batched `generate`);
  prompt_mask    int32 [max_prompt_len]  1 on real prompt tokens;
  answer_ids     int32 [max_answer_len]  the reference answer's tokens (no eos), right-padded with pad_id;
  answer         str                     the reference answer text.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from jaxmm.checks import check_positive, fail

MODALITIES = {"image": "<image>", "audio": "<audio>"}


def _normalise_turns(turns, modalities: Sequence[str]) -> list[tuple[str, str]]:
    if not isinstance(turns, (list, tuple)) or not turns:
        fail("conversations", "a non-empty list of (role, text)", repr(turns)[:80])
    out = []
    for t in turns:
        if isinstance(t, dict):
            t = (t.get("role"), t.get("text"))
        if len(t) != 2 or not isinstance(t[1], str):
            fail("conversations", "(role, text) pairs", repr(t)[:80])
        out.append((t[0], t[1]))
    if all(r != "assistant" for r, _ in out):
        fail("conversations", "at least one assistant turn", [r for r, _ in out])
    for m, tag in MODALITIES.items():
        count = sum(text.count(tag) for _, text in out)
        if m not in modalities:
            if count:
                fail("conversations", f"no {tag} placeholder in an example without {m!r}", f"{count}")
            continue
        if count > 1:
            fail("conversations", f"at most one {tag} placeholder", f"{count}")
        if count == 0:
            first_user = next((i for i, (r, _) in enumerate(out) if r == "user"), None)
            if first_user is None:
                fail("conversations", f"a user turn to hold {tag}", [r for r, _ in out])
            r, text = out[first_user]
            out[first_user] = (r, f"{tag}\n{text}")
    return out


def _present(example: dict) -> list[str]:
    """Modalities an example carries: the key is set and `has_<modality>` (when given) is not 0."""
    return [m for m in MODALITIES
            if example.get(m) is not None and int(example.get(f"has_{m}", 1)) != 0]


def _pad(ids: list[int], length: int, pad_id: int, left: bool = False) -> np.ndarray:
    arr = np.full((length,), pad_id, np.int32)
    if left:
        arr[length - len(ids):] = ids
    else:
        arr[:len(ids)] = ids
    return arr


class ConversationFormatter:
    """Turns a source example into fixed-length model inputs (see the module docstring).

    Args:
      tokenizer: a `ByteTokenizer` or `HFTokenizer` (anything with their interface).
      max_len: training sequence length (placeholders count as one token each).
      eval: also emit prompt_ids / prompt_mask / answer_ids / answer.
      max_prompt_len / max_answer_len: lengths of the eval fields (default max_len / 32).
      keep: extra example fields to pass through (numpy arrays of a fixed shape, e.g. "boxes").
      truncate: cut sequences longer than max_len on the right (keeping the placeholders and at least one
        answer token; otherwise an error). With truncate=False any overflow is an error.
      add_bos: emit tokenizer.bos_id first (when the tokenizer has one; not with a chat template, which
        writes its own).
      chat_template: format with the tokenizer's chat template when it has one (see the module docstring);
        False: always the Vicuna / byte format.
    """

    def __init__(self, tokenizer, *, max_len: int, eval: bool = False, max_prompt_len: int | None = None,
                 max_answer_len: int = 32, keep: Sequence[str] = (), truncate: bool = True,
                 add_bos: bool = True, chat_template: bool = True):
        check_positive("max_len", max_len)
        check_positive("max_answer_len", max_answer_len)
        self.tok = tokenizer
        self.max_len = int(max_len)
        self.eval = eval
        self.max_prompt_len = int(max_prompt_len or max_len)
        self.max_answer_len = int(max_answer_len)
        self.keep = tuple(keep)
        self.truncate = truncate
        self.add_bos = add_bos and getattr(tokenizer, "bos_id", None) is not None
        self.template = getattr(tokenizer, "chat_template", None) if chat_template else None

    def tokenize(self, example: dict) -> tuple[list[int], list[int], int, str]:
        """(ids, mask, start of the last assistant turn's tokens, its text) before padding."""
        modalities = _present(example)
        turns = _normalise_turns(example.get("conversations"), modalities)
        if self.template is not None:
            return self._tokenize_with_template(turns)
        ids = [self.tok.bos_id] if self.add_bos else []
        mask = [0] * len(ids)
        last_answer_start, last_answer = -1, ""
        for role, text in turns:
            prefix = self.tok.role_prefix(role)
            ids += prefix
            mask += [0] * len(prefix)
            body = self.tok.encode(text)
            if role == "assistant":
                last_answer_start, last_answer = len(ids), text
                body = body + [self.tok.eos_id]
                placeholders = {getattr(self.tok, f"{m}_id") for m in MODALITIES}
                mask += [0 if t in placeholders else 1 for t in body]  # features, not targets
            else:
                mask += [0] * len(body)
            ids += body
        return ids, mask, last_answer_start, last_answer

    def _tokenize_with_template(self, turns) -> tuple[list[int], list[int], int, str]:
        messages = [{"role": r, "content": t} for r, t in turns]
        render = self.template.render
        full = render(messages)
        spans = []
        for k, (role, _) in enumerate(turns):
            if role != "assistant":
                continue
            if k == 0:
                fail("conversations", "a user or system turn before the first assistant turn (chat template)",
                     [r for r, _ in turns])
            start, upto = render(messages[:k], add_generation_prompt=True), render(messages[:k + 1])
            if not (full.startswith(upto) and upto.startswith(start)):
                fail("chat_template", f"a template that renders the conversation up to turn {k} as a prefix of "
                     "the whole conversation (and the generation prompt as a prefix of that)",
                     f"{upto[-60:]!r} vs {full[:len(upto)][-60:]!r}")
            spans.append((len(start), len(upto)))
        ids, offsets = self.tok.encode_with_offsets(full)
        placeholders = {getattr(self.tok, f"{m}_id") for m in MODALITIES}
        mask = [int(any(s <= o[0] < e for s, e in spans) and t not in placeholders) for t, o in zip(ids, offsets)]
        last = next(i for i, o in enumerate(offsets) if o[0] >= spans[-1][0])
        return ids, mask, last, [t for r, t in turns if r == "assistant"][-1]

    def length_problem(self, example: dict) -> str | None:
        """Why `example` cannot be formatted at these lengths ("prompt of N tokens + 1 answer token exceeds
        max_len M", ...), or None. Reads only "conversations" and the modality flags (images are not
        decoded), so a source can check every record when it is built."""
        ids, mask, answer_start, _ = self.tokenize(example)
        problem = self._length_problem(ids, mask, answer_start, _present(example))
        return problem and problem[1]

    def _length_problem(self, ids, mask, answer_start, modalities) -> tuple[str, str] | None:
        """(the length argument at fault, the reason) or None."""
        n, cap = len(ids), self.max_len
        if n > cap:
            if not self.truncate:
                return "max_len", f"conversation of {n} tokens exceeds max_len {cap} (truncate=False)"
            first_answer = mask.index(1) if any(mask) else n
            if first_answer >= cap:
                return "max_len", f"prompt of {first_answer} tokens + 1 answer token exceeds max_len {cap}"
            for m in modalities:
                pos = ids.index(getattr(self.tok, f"{m}_id"))
                if pos >= cap:
                    return "max_len", f"{MODALITIES[m]} placeholder at token {pos} is cut by max_len {cap}"
        if self.eval and answer_start > self.max_prompt_len:
            return "max_prompt_len", f"prompt of {answer_start} tokens exceeds max_prompt_len {self.max_prompt_len}"
        return None

    def __call__(self, example: dict) -> dict[str, Any]:
        full_ids, full_mask, answer_start, answer_text = self.tokenize(example)
        problem = self._length_problem(full_ids, full_mask, answer_start, _present(example))
        if problem:
            fail(problem[0], "a length that holds the example", problem[1])
        ids, mask = full_ids[:self.max_len], full_mask[:self.max_len]
        out: dict[str, Any] = {
            "input_ids": _pad(ids, self.max_len, self.tok.pad_id),
            "loss_mask": _pad(mask, self.max_len, 0),
            "attention_mask": _pad([1] * len(ids), self.max_len, 0),
        }
        for key in (*MODALITIES, *(f"has_{m}" for m in MODALITIES), *self.keep):
            if key in example and example[key] is not None:
                out[key] = example[key]
            elif key in self.keep:
                fail("keep", f"fields present in the example (keys {sorted(example)})", repr(key))
        if self.eval:
            prompt = full_ids[:answer_start]
            answer = self.tok.encode(answer_text)
            answer = answer[:self.max_answer_len]
            out["prompt_ids"] = _pad(prompt, self.max_prompt_len, self.tok.pad_id, left=True)
            out["prompt_mask"] = _pad([1] * len(prompt), self.max_prompt_len, 0, left=True)
            out["answer_ids"] = _pad(answer, self.max_answer_len, self.tok.pad_id)
            out["answer"] = np.str_(answer_text)
        return out
