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

Templates are untrusted code, so they are compiled and rendered in
:class:`llm_bridge.loading.sandbox.BoundedSandbox`: the sandbox with every operation bounded in
size and time (values, output, numbers, nesting, a deadline per compile and per render; that
module lists the bounds and where each is checked). Any failure, a bound hit or a Python error
inside the template included, is one ``ValueError`` line naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.nodes

from llm_bridge.loading import sandbox
from llm_bridge.loading.hf import folder_file
from llm_bridge.loading.sandbox import MAX_OUTPUT_CHARS, MAX_SECONDS, BoundedSandbox, Overrun  # noqa: F401
from harness.results import json_object

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
            return self.template.render(**variables)  # a BoundedTemplate: under the sandbox's bounds
        except TemplateRefusal:
            raise
        except Overrun as err:
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


MAX_FILE_BYTES = 64 << 20  # tokenizer_config.json, special_tokens_map.json (real ones: up to a few MB)


def _read_text(path: Path, limit: int) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes; ValueError (one line) otherwise."""
    if path.stat().st_size > limit:
        raise ValueError(f"{path}: {path.stat().st_size:,} bytes; at most {limit:,} are read")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def _present(path: Path) -> bool:
    """Whether the folder has ``path``; one that is there is checked as a weights file is
    (:func:`llm_bridge.loading.hf.folder_file`: a regular file, links resolved to inside the folder
    or a Hugging Face cache's blobs/), so a FIFO cannot block and a link cannot read a foreign file."""
    if not path.exists() and not path.is_symlink():
        return False
    folder_file(path.parent, path.name)
    return True


def _read_json(path: Path) -> dict:
    """A JSON object file, or {} where there is none; ValueError (one line) for anything else."""
    if not _present(path):
        return {}
    return json_object(_read_text(path, MAX_FILE_BYTES), str(path))


def _compile(text, source: Path) -> jinja2.Template:
    def raise_exception(message):
        raise TemplateRefusal(f"{source}: the chat template refuses the conversation: {message}")

    if not isinstance(text, str):
        raise ValueError(f"{source}: the chat template is a {type(text).__name__}, not a string")
    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols],
                         filters={"tojson": sandbox.tojson},
                         globals={"raise_exception": raise_exception, "strftime_now": sandbox.strftime_now})
    try:
        return sandbox.compile_template(env, text)
    except jinja2.TemplateSyntaxError as err:
        message = " ".join(str(err.message).split())[:300]
        raise ValueError(f"{source}: malformed chat template (line {err.lineno}): {message}") from None
    except Overrun as err:
        raise ValueError(f"{source}: the chat template {err}") from None


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
    special = {k: v.get("content") if isinstance(v, dict) else v for k, v in special.items() if k in SPECIAL_TOKENS}
    special = {k: str(v) for k, v in special.items() if v is not None}
    jinja_path = folder / "chat_template.jinja"
    if _present(jinja_path):
        text = _read_text(jinja_path, 4 * sandbox.MAX_TEMPLATE_CHARS)  # UTF-8: at most 4 bytes a character
        return ChatTemplate(jinja_path, _compile(text, jinja_path), special)
    text = config.get("chat_template")
    if text is None:
        return None
    if isinstance(text, list):
        named = {t.get("name"): t.get("template") for t in text if isinstance(t, dict) and isinstance(t.get("name"), str)}
        if "default" not in named:
            raise ValueError(f"{config_path}: chat_template is a list without a 'default' entry "
                             f"(names: {sorted(map(str, named))})")
        text = named["default"]
    return ChatTemplate(config_path, _compile(text, config_path), special)
