"""A jinja2 sandbox in which every template operation is bounded in size and time.

Chat templates come from model files, so they are untrusted code. jinja2's
``ImmutableSandboxedEnvironment`` (what transformers renders them in) keeps a template away from
Python's internals and from mutating lists and dicts, but it bounds neither memory nor time:
``{{ 'a'|center(10**10) }}`` allocates 10 GB and ``{{ lipsum(10**6) }}`` runs for minutes.
:class:`BoundedSandbox` adds the bounds, each checked BEFORE the work it bounds, so a hostile
template fails in milliseconds with one line (:class:`Overrun`) instead of exhausting the machine:

=========  ===================================================================================
size       Every value a template builds has a size of at most :data:`MAX_VALUE_SIZE` units
           (:func:`size`: one per character of a string, per element of a container plus the
           elements' own sizes, counted once per reference, so ``[x, x]`` counts ``x`` twice and
           a structure built by doubling references cannot hide a huge text; a decimal digit of
           an int). Its text (``str``, ``repr``, JSON) is then at most a small constant factor
           larger. Checked before allocating wherever a value can grow: the operators ``*``,
           ``+``, ``%`` and ``~``; list, tuple and dict literals; ``%``-formatting, ``str.format``
           and the ``format`` filter (each width and precision, and the running total); the str
           methods ``center ljust rjust zfill expandtabs replace join translate``; the filters
           ``center indent wordwrap join replace batch slice tojson pprint sum urlize round``;
           the globals ``lipsum`` and ``strftime_now``. Every other call and filter result is
           measured after the call (those cannot outgrow their inputs by more than a constant).
output     The rendered text is at most :data:`MAX_OUTPUT_CHARS` characters, and so is each
           text a macro, ``{% set %}`` block, filter block or call block captures.
numbers    Integers at most :data:`MAX_INT_BITS` bits: ``*`` and ``**`` are checked before
           computing; ``round`` takes at most :data:`MAX_ROUND_DIGITS` digits.
time       :data:`MAX_SECONDS` per render and per compile, checked at every Python function
           call and at every line of compiled template code. No builtin step can run long
           between two checks, because no step can touch more than a bounded amount of data
           (the size bounds above): a single huge allocation, which a line tracer never sees
           the end of, is refused before it starts.
nesting    Template source at most :data:`MAX_TEMPLATE_CHARS` characters, with brackets and
           blocks nested at most :data:`MAX_NESTING` deep, counted on the lexer's tokens before
           jinja's recursive parser runs (100k nested parentheses is one line, not a
           RecursionError traceback); a RecursionError or a Python SyntaxError while compiling
           is one line too.
=========  ===================================================================================

The bounds hold wherever a template runs: :class:`BoundedTemplate` (the sandbox's template
class) renders under them in ``render``, ``generate`` and ``stream``, and :func:`compile_template`
compiles under them. A bound that is hit raises :class:`Overrun`, a ``BaseException`` so that no
``except Exception`` inside jinja or a filter can swallow it and continue unbounded; callers
(:mod:`llm_bridge.loading.chat`) turn it into one ``ValueError`` line naming the file.

The bounds are far above what real chat templates use: a chat prompt is a few thousand
characters, a template a few kilobytes with brackets nested a few deep, and a render takes
about a millisecond.

The size accounting, :class:`Overrun` and the limits it counts in are
:mod:`llm_bridge.loading.sandbox_size`; the checks made before each operation that can grow a value
(formatting, str methods, filters, globals) are :mod:`llm_bridge.loading.sandbox_checks`. This
module assembles them into the environment, its templates and the deadline.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import jinja2
import jinja2.compiler
import markupsafe
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from llm_bridge.loading import sandbox_checks, sandbox_size
from llm_bridge.loading.sandbox_checks import (
    _GROWING_METHODS,
    _bound_filter,
    _check_percent,
    _EscapeFormatter,
    _Formatter,
    _lipsum,
    _str_method,
    _sum,
    percent_size,
    strftime_now,
    tojson,
)
from llm_bridge.loading.sandbox_size import (
    MAX_INT_BITS,
    MAX_ROUND_DIGITS,
    MAX_VALUE_SIZE,
    Overrun,
    _refuse,
    _state,
    _within,
    check_time,
    checked,
    size,
)

MAX_OUTPUT_CHARS = 1_000_000  # rendered text; a chat prompt is a few thousand characters
MAX_SECONDS = 2.0  # per render and per compile; rendering a real template takes about a millisecond
MAX_TEMPLATE_CHARS = 1_000_000  # template source; real ones are a few kilobytes
MAX_NESTING = 100  # brackets and blocks; real templates nest a few deep

# Block tags that open a level closed by "end<tag>" (set blocks are not counted: "set" also
# starts one-line assignments, which have no end tag).
_BLOCKS = frozenset({"for", "if", "macro", "call", "filter", "block", "with", "autoescape", "generation"})


# ------------------------------------------------------------------------------------------ time

# Code whose frames may be interrupted: the compiled template, jinja, markupsafe and the sandbox's
# modules (this one, sandbox_size and sandbox_checks). A deadline is never raised inside other code
# (a gc callback, a weakref callback, a library's ``except Exception``), which could swallow it, and
# Python removes a trace function that raised.
_OWNED = ("<template>", str(Path(jinja2.__file__).parent), str(Path(markupsafe.__file__).parent), __file__,
          sandbox_size.__file__, sandbox_checks.__file__)


@contextlib.contextmanager
def deadline(seconds: float | None = None):
    """Run the block under a deadline of ``seconds`` (default :data:`MAX_SECONDS`).

    The check runs at every Python function call (``sys.settrace``'s call events: jinja's filters,
    the template's macros, and through them textwrap, json, lipsum) and at every line of compiled
    template code (file name ``<template>``; other frames get no line tracing, so they run at nearly
    full speed); past the deadline, the next call into template, jinja or sandbox code raises
    :class:`Overrun`. Nested blocks keep the outer deadline. The previous trace function is restored.
    """
    if getattr(_state, "deadline", None) is not None:
        yield
        return
    seconds = MAX_SECONDS if seconds is None else seconds
    limit = time.monotonic() + seconds

    def on_line(frame, event, arg):
        if time.monotonic() > limit:
            raise Overrun(f"ran longer than {seconds} s")
        return on_line

    def on_call(frame, event, arg):
        filename = frame.f_code.co_filename
        if time.monotonic() > limit and filename.startswith(_OWNED):
            raise Overrun(f"ran longer than {seconds} s")
        return on_line if filename == "<template>" else None

    previous = sys.gettrace()
    _state.seconds, _state.deadline, _state.tracer = seconds, limit, on_call
    sys.settrace(on_call)
    try:
        yield
    finally:
        sys.settrace(previous)
        _state.deadline = _state.tracer = None


# ---------------------------------------------------------------------------------------- output

def join_bounded(pieces) -> str:
    """The concatenated text of ``pieces``, stopping as soon as it passes :data:`MAX_OUTPUT_CHARS`."""
    out, n = [], 0
    for piece in pieces:
        n += len(piece)
        if n > MAX_OUTPUT_CHARS:
            raise Overrun(f"output exceeds {MAX_OUTPUT_CHARS:,} characters")
        out.append(piece)
    return "".join(out)


# ------------------------------------------------------------------------------------ compiler

class TextBuffer(list):
    """The text a macro or a set, filter or call block captures: its length is checked on each
    append, so a loop cannot pile up more than :data:`MAX_OUTPUT_CHARS` before the block ends."""

    __slots__ = ("chars",)

    def __init__(self):
        super().__init__()
        self.chars = 0

    def append(self, piece):
        check_time()
        self.chars += len(piece)
        if self.chars > MAX_OUTPUT_CHARS:
            raise Overrun(f"output exceeds {MAX_OUTPUT_CHARS:,} characters (in a macro or block)")
        super().append(piece)


class _CodeGenerator(jinja2.compiler.CodeGenerator):
    """jinja's code generator with what a template builds without a call routed through checks:
    ``~`` (its parts measured before they are joined), list, tuple and dict literals, and the text
    buffers of macros and blocks (:class:`TextBuffer`)."""

    def buffer(self, frame):
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.text_buffer()")

    @jinja2.compiler.optimizeconst
    def visit_Concat(self, node, frame):
        if frame.eval_ctx.volatile:
            func_name = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            func_name = "markup_join"
        else:
            func_name = "str_join"
        self.write(f"{func_name}(environment.sized_parts((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(")))")

    def visit_List(self, node, frame):
        self.write("environment.sized(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Dict(self, node, frame):
        self.write("environment.sized(")
        super().visit_Dict(node, frame)
        self.write(")")

    def visit_Tuple(self, node, frame):
        if node.ctx != "load":  # an assignment or loop target
            return super().visit_Tuple(node, frame)
        self.write("environment.sized(")
        super().visit_Tuple(node, frame)
        self.write(")")
        return None


def _finalize(value):
    """Every ``{{ value }}`` is measured before jinja turns it into text."""
    return value if isinstance(value, str) else checked(value, "the text of an output expression")


class BoundedTemplate(jinja2.Template):
    """A template that renders under the bounds wherever it is run: ``render``, ``generate`` and
    ``stream`` all go through :meth:`render` (a deadline and the output limit)."""

    def render(self, *args, **kwargs) -> str:
        with deadline():
            return join_bounded(jinja2.Template.generate(self, *args, **kwargs))

    def generate(self, *args, **kwargs):
        yield self.render(*args, **kwargs)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox with every operation bounded (the module docstring lists how).

    ``filters`` and ``globals`` add to jinja's own (e.g. transformers' ``tojson`` and
    ``raise_exception``); every filter, jinja's and these, is wrapped by the size checks.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _CodeGenerator
    template_class = BoundedTemplate
    concat = staticmethod(join_bounded)  # what macros, {% set %} / filter / call blocks join their text with

    def __init__(self, *, filters: Mapping | None = None, globals: Mapping | None = None,  # noqa: A002
                 **options):
        options.setdefault("finalize", _finalize)
        super().__init__(**options)
        self.filters.update(filters or {})
        self.filters["sum"] = _sum
        self.filters = {name: _bound_filter(name, f) for name, f in self.filters.items()}
        self.globals.update(globals or {})
        self.globals["lipsum"] = _lipsum

    # called from the code of _CodeGenerator
    text_buffer = TextBuffer

    @staticmethod
    def sized_parts(parts: tuple) -> tuple:
        _within("~", *parts)
        return parts

    @staticmethod
    def sized(value):
        return checked(value, "a literal")

    def call_binop(self, context, operator, left, right):
        check_time()
        if operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0 \
                    and right * math.log2(abs(left)) > MAX_INT_BITS:
                raise Overrun(f"computes a number too large (over {MAX_INT_BITS:,} bits: {left} ** {right})")
            return left ** right
        if operator == "*":
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    raise Overrun(f"computes a number too large (over {MAX_INT_BITS:,} bits: *)")
            else:
                for seq, n in ((left, right), (right, left)):
                    if isinstance(n, int) and not isinstance(seq, int) and n > 0 and len(seq) > 0:
                        if n > MAX_VALUE_SIZE or size(seq, MAX_VALUE_SIZE // n + 1) * n > MAX_VALUE_SIZE:
                            raise _refuse(f"{type(seq).__name__} * {n}")
            return left * right
        if operator == "+":
            if not (isinstance(left, (int, float)) and isinstance(right, (int, float))):
                _within("+", left, right)
            return left + right
        if operator == "%":
            if isinstance(left, str):
                _check_percent(left, right, "%")
            return left % right
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value):
        """``str.format`` / ``format_map`` of a template string, with :class:`_BoundedFormatting`."""
        if not callable(value) or getattr(value, "__name__", None) not in ("format", "format_map") \
                or not isinstance(getattr(value, "__self__", None), str):
            return None
        s = value.__self__
        formatter = _EscapeFormatter(self, escape=s.escape) if isinstance(s, Markup) else _Formatter(self)
        is_map = value.__name__ == "format_map"

        def wrapper(*args, **kwargs):
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument and no keywords")
                args, kwargs = (), args[0]
            return type(s)(formatter.vformat(s, args, kwargs))

        return functools.update_wrapper(wrapper, value)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 -- jinja's signature
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, (str, bytes)) and getattr(__obj, "__name__", None) in _GROWING_METHODS:
            args, kwargs = _str_method(__obj, __obj.__name__, args, kwargs)
        return checked(super().call(__context, __obj, *args, **kwargs), f"the result of {_name(__obj)}")


def _name(obj) -> str:
    return getattr(obj, "__name__", type(obj).__name__)


# ------------------------------------------------------------------------------------ compiling

def _check_nesting(env: jinja2.Environment, text: str) -> None:
    """Refuse ``text`` whose brackets and blocks nest deeper than :data:`MAX_NESTING`, counted on the
    lexer's tokens (the lexer is iterative; jinja's parser and Python's compiler recurse)."""
    depth, deepest, after_block = 0, 0, False
    for _, token, value in env.lexer.tokeniter(text, None):
        if token == "whitespace":
            continue
        if token == "operator" and value in "([{":
            depth += 1
        elif token == "operator" and value in ")]}":
            depth = max(0, depth - 1)
        elif token == "name" and after_block:
            if value in _BLOCKS:
                depth += 1
            elif value.startswith("end") and value[3:] in _BLOCKS:
                depth = max(0, depth - 1)
        after_block = token == "block_begin"
        if depth > deepest:
            deepest = depth
            if deepest > MAX_NESTING:
                raise Overrun(f"nests brackets or blocks more than {MAX_NESTING} deep")


def compile_template(env: BoundedSandbox, text: str) -> BoundedTemplate:
    """``env.from_string(text)`` within the bounds: at most :data:`MAX_TEMPLATE_CHARS` characters,
    nested at most :data:`MAX_NESTING` deep, compiled within :data:`MAX_SECONDS`.

    :class:`Overrun` for a bound; ``jinja2.TemplateSyntaxError`` for a template jinja cannot parse;
    a RecursionError or a Python SyntaxError from compiling the generated code become
    :class:`Overrun` too (one line, no traceback).
    """
    if len(text) > MAX_TEMPLATE_CHARS:
        raise Overrun(f"is {len(text):,} characters long; at most {MAX_TEMPLATE_CHARS:,} are accepted")
    try:
        with deadline():
            _check_nesting(env, text)
            return env.from_string(text)
    except RecursionError:
        raise Overrun("nests too deeply to compile (recursion limit)") from None
    except MemoryError:
        raise Overrun("ran out of memory while compiling") from None
    except SyntaxError as err:  # Python's compiler on the generated code (jinja's own errors are not SyntaxErrors)
        raise Overrun(f"compiles to code Python refuses: {err.msg}") from None


__all__ = ["MAX_INT_BITS", "MAX_NESTING", "MAX_OUTPUT_CHARS", "MAX_ROUND_DIGITS", "MAX_SECONDS",
           "MAX_TEMPLATE_CHARS", "MAX_VALUE_SIZE", "BoundedSandbox", "BoundedTemplate", "Overrun", "check_time",
           "checked", "compile_template", "deadline", "join_bounded", "percent_size", "size", "strftime_now", "tojson"]
