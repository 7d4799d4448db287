"""Chat templates, rendered as transformers' ``apply_chat_template`` does, without transformers.

A checkpoint folder's template is read here (:func:`load_chat_template`); a GGUF file's
``tokenizer.chat_template`` by :mod:`llm_bridge.loading.gguf`, which compiles it here
(:func:`compile_template`).

Where the template lives (the order transformers reads them in): ``chat_template.jinja``
(what newer transformers versions write) wins over the ``"chat_template"`` entry of
``tokenizer_config.json``, which is a string or a list of ``{"name", "template"}`` dicts
(the one named ``"default"`` is used). The named special tokens (``bos_token``,
``eos_token``, ...) come from ``tokenizer_config.json``, then ``special_tokens_map.json``
for those it lacks; each is a string or an ``AddedToken`` dict with ``"content"``.

Rendering copies the environment of ``transformers.utils.chat_template_utils``: a jinja2
``ImmutableSandboxedEnvironment`` (templates from the hub are untrusted code) with
``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension, the globals
``raise_exception`` and ``strftime_now``, a ``tojson`` filter that does not escape HTML,
and ``{% generation %}`` blocks rendered as their body. The variables are ``messages``,
``add_generation_prompt=True``, ``tools=None``, ``documents=None`` and the special tokens,
so the text ends where the assistant's reply starts. It already holds BOS etc.: encode it
with ``add_special_tokens=False``.

Templates are untrusted code, so rendering is bounded beyond the sandbox: the output may
not exceed :data:`MAX_OUTPUT_CHARS`, ``*`` and ``**`` may not build a string, list or number
larger than that, and the render may not run longer than :data:`MAX_SECONDS` (checked on
every line the compiled template executes, so a nested loop that prints nothing stops too).
Any failure, a Python error inside the template included, is one ``ValueError`` line
naming the file.
"""

from __future__ import annotations

import json
import math
import operator
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_OUTPUT_CHARS = 1_000_000  # a chat prompt is a few thousand characters; this is far beyond any
MAX_SECONDS = 2.0  # rendering a real template takes about a millisecond

SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class TemplateRefusal(ValueError):
    """The template called ``raise_exception``: it does not accept this conversation (e.g. a system message)."""


class _Generation(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` marks assistant tokens for transformers; here its body renders."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)  # its own scope, like transformers' call block


@dataclass(frozen=True)
class ChatTemplate:
    """A compiled chat template and the special tokens it may use; ``source`` is the file it came from."""

    source: Path
    template: jinja2.Template
    special_tokens: dict[str, str]

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt text of ``messages`` (``[{"role", "content"}, ...]``) up to the assistant's reply.

        Raises :class:`TemplateRefusal` where the template raises, ``ValueError`` where it fails.
        """
        variables = dict(messages=messages, tools=None, documents=None, add_generation_prompt=True,
                         **self.special_tokens)
        try:
            return _bounded(lambda: _join(self.template.generate(**variables)))
        except TemplateRefusal:
            raise
        except _Overrun as err:
            raise ValueError(f"{self.source}: the chat template {err}") from None
        except RecursionError:
            raise ValueError(f"{self.source}: the chat template failed: recursion too deep") from None
        except Exception as err:  # noqa: BLE001 -- untrusted code: any error it raises is the template's failure
            message = " ".join(str(err).split())[:300]
            raise ValueError(f"{self.source}: the chat template failed: {type(err).__name__}: {message}") from None

    def accepts_system_role(self) -> bool:
        """Whether a conversation that starts with a system message renders (Gemma's templates refuse it)."""
        try:
            self.render([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
        except TemplateRefusal:
            return False
        return True


class _Overrun(Exception):
    """The template exceeded a bound (output size, value size or time)."""


def _join(pieces) -> str:
    """The rendered text, stopping as soon as it exceeds :data:`MAX_OUTPUT_CHARS`."""
    out, size = [], 0
    for piece in pieces:
        size += len(piece)
        if size > MAX_OUTPUT_CHARS:
            raise _Overrun(f"output exceeds {MAX_OUTPUT_CHARS:,} characters")
        out.append(piece)
    return "".join(out)


def _bounded(render):
    """``render()`` with a deadline of :data:`MAX_SECONDS`, checked on each line of compiled template code.

    Only frames of jinja's compiled code (file name ``<template>``) are traced line by line,
    so the rest of the program runs at full speed; the previous trace function is restored.
    """
    deadline = time.monotonic() + MAX_SECONDS

    def on_line(frame, event, arg):
        if time.monotonic() > deadline:
            raise _Overrun(f"ran longer than {MAX_SECONDS} s")
        return on_line

    def on_call(frame, event, arg):
        return on_line if frame.f_code.co_filename == "<template>" else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        return render()
    finally:
        sys.settrace(previous)


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox with ``*`` and ``**`` checked, so that ``'a' * 10**10`` fails before it allocates."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator_name, left, right):
        if operator_name == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right * math.log2(abs(left)) > 1e5:
                raise _Overrun(f"computes a number too large ({left} ** {right})")
            return operator.pow(left, right)
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_OUTPUT_CHARS:
                raise _Overrun(f"builds a value larger than {MAX_OUTPUT_CHARS:,} items")
        return operator.mul(left, right)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err


def _compile(text, source: Path) -> jinja2.Template:
    def raise_exception(message):
        raise TemplateRefusal(f"{source}: the chat template refuses the conversation: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    if not isinstance(text, str):
        raise ValueError(f"{source}: the chat template is a {type(text).__name__}, not a string")
    env = _BoundedSandbox(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(text)
    except jinja2.TemplateSyntaxError as err:
        raise ValueError(f"{source}: malformed chat template (line {err.lineno}): {err.message}") from err


def compile_template(text, source: Path, special_tokens: dict[str, str]) -> ChatTemplate:
    """A :class:`ChatTemplate` of template text read from ``source`` (a GGUF file's ``tokenizer.chat_template``)."""
    return ChatTemplate(Path(source), _compile(text, Path(source)), dict(special_tokens))


def load_chat_template(folder: str | Path) -> ChatTemplate | None:
    """The chat template of a checkpoint folder, or None where it has none (then prompts stay plain
    text); :func:`llm_bridge.loading.load_chat_template` also reads GGUF files.

    A template that does not parse, a list without a ``"default"`` entry or unreadable JSON
    raise ``ValueError`` naming the file.
    """
    folder = Path(folder).expanduser()
    config_path = folder / "tokenizer_config.json"
    config = _read_json(config_path)
    special = _read_json(folder / "special_tokens_map.json") | config
    special = {k: v["content"] if isinstance(v, dict) else v for k, v in special.items() if k in SPECIAL_TOKENS}
    special = {k: str(v) for k, v in special.items() if v is not None}
    jinja_path = folder / "chat_template.jinja"
    if jinja_path.is_file():
        return ChatTemplate(jinja_path, _compile(jinja_path.read_text(encoding="utf-8"), jinja_path), special)
    text = config.get("chat_template")
    if text is None:
        return None
    if isinstance(text, list):
        named = {t.get("name"): t.get("template") for t in text if isinstance(t, dict)}
        if "default" not in named:
            raise ValueError(f"{config_path}: chat_template is a list without a 'default' entry "
                             f"(names: {sorted(map(str, named))})")
        text = named["default"]
    return ChatTemplate(config_path, _compile(text, config_path), special)
