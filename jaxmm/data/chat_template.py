"""A Hugging Face tokenizer's chat template, rendered with jinja2 as transformers' `apply_chat_template` does.

    tmpl = ChatTemplate.from_folder("path/to/model")      # None when the folder has no template
    text = tmpl.render([{"role": "user", "content": "hi"}], add_generation_prompt=True)

Where the template comes from (transformers 5's order): `chat_template.jinja` beside the tokenizer (what
transformers >= 4.47 writes), else `tokenizer_config.json`'s `chat_template`: a string, or a list of
`{"name", "template"}` entries of which "default" is used (another one by `name=`).

Rendering follows transformers 5.24 (`transformers.utils.chat_template_utils`): a sandboxed
`ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` with the `loopcontrols` extension, the
globals `raise_exception(msg)` (raises `jinja2.TemplateError`), `strftime_now(fmt)` (local time), `namespace`
and the `tojson` filter without HTML escaping (`json.dumps(x, ensure_ascii=False, indent=..., ...)`); the
variables `messages`, `add_generation_prompt`, `tools` (None), `documents` (None) and the tokenizer's named
special tokens `bos_token`, `eos_token`, `unk_token`, `pad_token`, ... (strings from tokenizer_config.json),
plus any keyword argument. Message keys whose value is None are dropped first, as transformers does.
The `{% generation %}` block tag (assistant-token masks) is accepted and rendered as its body.
Not reproduced: tool schemas from Python functions, `continue_final_message`, control-token sanitising.
"""
from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any, Sequence

from jaxmm.checks import fail

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _token_string(value) -> str | None:
    if isinstance(value, dict):  # {"content": "<s>", "lstrip": ...}: an AddedToken as JSON
        value = value.get("content")
    return value if isinstance(value, str) else None


def _environment():
    try:
        import jinja2
        from jinja2.ext import Extension, loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:  # an extra: pip install jaxmm[hf]
        raise ImportError("chat templates need jinja2 >= 3.1.6 (pip install 'jaxmm[hf]' or jinja2)") from e

    class Generation(Extension):  # `{% generation %}...{% endgeneration %}`: rendered as its body
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


class ChatTemplate:
    """A compiled chat template and the special-token strings it may read. `render(messages, ...) -> str`."""

    def __init__(self, source: str, special_tokens: dict[str, str] | None = None):
        if not isinstance(source, str) or not source:
            fail("source", "a non-empty jinja template string", repr(source)[:60])
        self.source = source
        self.special_tokens = dict(special_tokens or {})
        self._template = None  # compiled on first use: jinja2 is needed only by those who render

    def __repr__(self):
        return f"ChatTemplate({self.source[:40]!r}...)"

    @classmethod
    def from_folder(cls, path, name: str | None = None) -> "ChatTemplate | None":
        """The template of the tokenizer in folder `path` (see the module docstring), or None if it has none."""
        folder = os.fspath(path)
        if os.path.isfile(folder):
            folder = os.path.dirname(folder)
        config = {}
        cfg_file = os.path.join(folder, "tokenizer_config.json")
        if os.path.isfile(cfg_file):
            with open(cfg_file, encoding="utf-8") as f:
                config = json.load(f)
        specials = {k: s for k in SPECIAL_TOKEN_NAMES if (s := _token_string(config.get(k))) is not None}
        jinja_file = os.path.join(folder, "chat_template.jinja")
        if name is None and os.path.isfile(jinja_file):
            with open(jinja_file, encoding="utf-8") as f:
                return cls(f.read(), specials)
        source = config.get("chat_template")
        if isinstance(source, list):  # [{"name": ..., "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            want = name or "default"
            if want not in named:
                fail("name", f"one of the templates {sorted(named)} in {cfg_file}", repr(want))
            source = named[want]
        elif name is not None:
            fail("name", f"a named template, but {cfg_file} has a single one", repr(name))
        return cls(source, specials) if source else None

    def render(self, messages: Sequence[dict], *, add_generation_prompt: bool = False, **kwargs: Any) -> str:
        """The conversation as text. messages: [{"role": ..., "content": ...}, ...]; kwargs are further
        template variables (they override the special tokens, as in transformers)."""
        if not isinstance(messages, (list, tuple)) or not messages:
            fail("messages", "a non-empty list of {'role', 'content'} dicts", repr(messages)[:80])
        clean = []
        for m in messages:
            if not isinstance(m, dict):
                fail("messages", "dicts with 'role' and 'content'", repr(m)[:80])
            clean.append({k: v for k, v in m.items() if v is not None})
        variables = {**self.special_tokens, **kwargs}
        if self._template is None:
            self._template = _environment().from_string(self.source)
        return self._template.render(messages=clean, add_generation_prompt=add_generation_prompt,
                                     tools=variables.pop("tools", None), documents=variables.pop("documents", None),
                                     **variables)
