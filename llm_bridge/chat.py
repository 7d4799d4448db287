"""A checkpoint folder's chat template, rendered as transformers' ``apply_chat_template`` does, without transformers.

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
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

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
        try:
            return self.template.render(messages=messages, tools=None, documents=None, add_generation_prompt=True,
                                        **self.special_tokens)
        except jinja2.TemplateError as err:
            raise ValueError(f"{self.source}: the chat template failed: {err}") from err

    def accepts_system_role(self) -> bool:
        """Whether a conversation that starts with a system message renders (Gemma's templates refuse it)."""
        try:
            self.render([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
        except TemplateRefusal:
            return False
        return True


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
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(text)
    except jinja2.TemplateSyntaxError as err:
        raise ValueError(f"{source}: malformed chat template (line {err.lineno}): {err.message}") from err


def load_chat_template(folder: str | Path) -> ChatTemplate | None:
    """The chat template of a checkpoint folder, or None where it has none (then prompts stay plain text).

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
