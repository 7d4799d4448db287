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
"""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import json
import math
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping, MappingView
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.compiler
import markupsafe
from jinja2.filters import make_attrgetter
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from jinja2.utils import Namespace, generate_lorem_ipsum
from markupsafe import Markup

MAX_OUTPUT_CHARS = 1_000_000  # rendered text; a chat prompt is a few thousand characters
MAX_VALUE_SIZE = 1_000_000  # units of size(): characters, elements, digits
MAX_INT_BITS = 100_000  # about 30,000 decimal digits
MAX_ROUND_DIGITS = 1_000  # |precision| of the round filter (10**precision is computed)
MAX_SECONDS = 2.0  # per render and per compile; rendering a real template takes about a millisecond
MAX_TEMPLATE_CHARS = 1_000_000  # template source; real ones are a few kilobytes
MAX_NESTING = 100  # brackets and blocks; real templates nest a few deep

# Block tags that open a level closed by "end<tag>" (set blocks are not counted: "set" also
# starts one-line assignments, which have no end tag).
_BLOCKS = frozenset({"for", "if", "macro", "call", "filter", "block", "with", "autoescape", "generation"})


class Overrun(BaseException):
    """A template exceeded a bound (size, output, number, time or nesting); the message says which.

    A ``BaseException``, like ``KeyboardInterrupt``: it must end the render, and jinja and its
    filters catch ``Exception`` in places (e.g. ``int``'s filter returns its default on errors).
    """


# ------------------------------------------------------------------------------------------ time

_state = threading.local()  # the running deadline of this thread (renders are per thread)
# Code whose frames may be interrupted: the compiled template, jinja, markupsafe and this module. A
# deadline is never raised inside other code (a gc callback, a weakref callback, a library's
# ``except Exception``), which could swallow it, and Python removes a trace function that raised.
_OWNED = ("<template>", str(Path(jinja2.__file__).parent), str(Path(markupsafe.__file__).parent), __file__)


def check_time() -> None:
    """Raise :class:`Overrun` when this thread's template deadline has passed (no-op outside one).

    Called at each of the sandbox's own checks too (every call, filter, operator and captured
    piece of text), which also put the deadline's trace function back if something removed it.
    """
    deadline = getattr(_state, "deadline", None)
    if deadline is None:
        return
    if sys.gettrace() is not _state.tracer:
        sys.settrace(_state.tracer)
    if time.monotonic() > deadline:
        raise Overrun(f"ran longer than {_state.seconds} s")


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


# ------------------------------------------------------------------------------------------ size

_SCALAR_TYPES = frozenset({str, bytes, bytearray, int, float, bool, type(None), Markup})


def _scalar(v) -> int:
    if isinstance(v, (str, bytes, bytearray)):
        return len(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return v.bit_length() // 3 + 1
    if isinstance(v, range):
        return len(v) + 1
    return 1


def _elements(v) -> list | tuple | None:
    """The elements of a container (a dict's keys and values, a namespace's attributes), None for a scalar."""
    if isinstance(v, Namespace):
        v = v._Namespace__attrs  # noqa: SLF001 -- what the namespace's repr prints
    if isinstance(v, (list, tuple)):
        return v
    if isinstance(v, dict):
        return [x for pair in v.items() for x in pair]
    if isinstance(v, (set, frozenset, MappingView)):
        return list(v)
    return None


def size(value, limit: int | None = None, *, per_item: int = 0, per_level: int = 0) -> int:
    """The size of ``value`` in the units of :data:`MAX_VALUE_SIZE`, or a number above ``limit``
    (default :data:`MAX_VALUE_SIZE`) as soon as the count passes it.

    A string counts its characters, bytes their length, an int its decimal digits (bits / 3), a
    range its length, other scalars 1; a list, tuple, set, dict (keys and values), dict view or
    jinja ``namespace`` counts 1, plus 1 per element, plus each element's size, each time it is
    referenced: the size of its text, however its parts are shared. Shared parts are counted once
    and multiplied (a memo per call), so the count costs one step per distinct container and
    element; a cycle (only a namespace can make one) counts as unbounded. ``per_item`` and
    ``per_level`` add to each element the separator and the indentation per nesting level that a
    JSON or pretty-printed text puts around it.
    """
    limit = MAX_VALUE_SIZE if limit is None else limit
    top = _elements(value)
    if top is None:
        return _scalar(value)
    memo: dict[tuple[int, int], int] = {}  # (id, depth) -> size of a container counted in this call
    open_: set[tuple[int, int]] = set()  # containers being counted: meeting one again is a cycle
    alive = [top]  # element lists made here (a dict's pairs ...): their ids must not be reused in this call
    stack = [(value, top, 0, False)]
    steps = 0
    while stack:
        v, items, depth, expanded = stack.pop()
        key = (id(v), depth if per_level else 0)
        if not expanded:
            if key in memo:
                continue
            if key in open_:
                return limit + 1
            open_.add(key)
            stack.append((v, items, depth, True))
            if not set(map(type, items)) <= _SCALAR_TYPES:
                for x in items:
                    inner = _elements(x)
                    if inner is not None and (id(x), depth + 1 if per_level else 0) not in memo:
                        alive.append(inner)
                        stack.append((x, inner, depth + 1, False))
            continue
        open_.discard(key)
        total = 1 + len(items) * (1 + per_item + per_level * (depth + 1))
        kinds = set(map(type, items))
        if kinds <= {str, Markup}:
            total += sum(map(len, items))
        elif kinds <= {float, bool, type(None)}:
            total += len(items)
        elif kinds <= {int, bool}:  # at least the sum of each int's digits (bits / 3 + 1)
            total += sum(map(int.bit_length, items)) // 3 + len(items)
        elif kinds <= _SCALAR_TYPES:
            total += sum(map(_scalar, items))
        else:
            for x in items:
                inner = memo.get((id(x), depth + 1 if per_level else 0)) if _elements(x) is not None else None
                total += inner if inner is not None else (_scalar(x) if _elements(x) is None else limit + 1)
                if total > limit:
                    return total
        memo[key] = total
        if total > limit:
            return total
        steps += 1
        if steps % 4096 == 0:
            check_time()
    return memo[(id(value), 0)]


def _refuse(what: str) -> Overrun:
    return Overrun(f"builds a value larger than {MAX_VALUE_SIZE:,} units ({what})")


def checked(value, what: str = "a value"):
    """``value`` when its :func:`size` is within :data:`MAX_VALUE_SIZE`; :class:`Overrun` otherwise."""
    check_time()
    if not isinstance(value, Iterator) and size(value) > MAX_VALUE_SIZE:
        raise _refuse(what)
    return value


def _within(what: str, *parts, extra: int = 0) -> None:
    """Refuse when the sizes of ``parts`` plus ``extra`` pass :data:`MAX_VALUE_SIZE`."""
    total = extra
    for p in parts:
        if total > MAX_VALUE_SIZE:
            break
        total += size(p, MAX_VALUE_SIZE - total)
    if total > MAX_VALUE_SIZE:
        raise _refuse(what)


def _int(x, name: str) -> int:
    """An int argument (a bool counts as its int, as in Python); TypeError names it otherwise."""
    if isinstance(x, int):
        return int(x)
    raise TypeError(f"{name} must be an integer, not {type(x).__name__}")


def join_bounded(pieces) -> str:
    """The concatenated text of ``pieces``, stopping as soon as it passes :data:`MAX_OUTPUT_CHARS`."""
    out, n = [], 0
    for piece in pieces:
        n += len(piece)
        if n > MAX_OUTPUT_CHARS:
            raise Overrun(f"output exceeds {MAX_OUTPUT_CHARS:,} characters")
        out.append(piece)
    return "".join(out)


# ------------------------------------------------------------------------------- text formatting

def percent_size(fmt: str, values) -> int:
    """An upper bound of ``len(fmt % values)`` (printf-style), counted until it passes
    :data:`MAX_VALUE_SIZE`: literal text, plus for each conversion the larger of its width and its
    value's size (numbers: digits + 320, room for ``%f`` of 1e308) plus its precision. ``*`` widths
    and precisions are taken from ``values`` as Python does. Malformed input gives a small count:
    the real operation then raises its own error."""
    limit = MAX_VALUE_SIZE
    if isinstance(values, tuple):
        args, mapping = values, None
    else:
        args, mapping = (values,), values if isinstance(values, Mapping) else None
    total, pos, n, used = 0, 0, len(fmt), 0

    def take():
        nonlocal used
        used += 1
        return args[used - 1] if used <= len(args) else None

    def number(k):
        start = k
        while k < n and fmt[k] in "0123456789":
            k += 1
        return (int(fmt[start:k]) if k > start else 0), k

    while pos < n and total <= limit:
        j = fmt.find("%", pos)
        if j < 0:
            total += n - pos
            break
        total += j - pos
        k, key = j + 1, None
        if k < n and fmt[k] == "(":
            depth, start = 1, k + 1
            k += 1
            while k < n and depth:
                depth += {"(": 1, ")": -1}.get(fmt[k], 0)
                k += 1
            key = fmt[start:k - 1]
        while k < n and fmt[k] in "-+ #0":
            k += 1
        if k < n and fmt[k] == "*":
            width, k = take(), k + 1
        else:
            width, k = number(k)
        precision = 0
        if k < n and fmt[k] == ".":
            if k + 1 < n and fmt[k + 1] == "*":
                precision, k = take(), k + 2
            else:
                precision, k = number(k + 1)
        while k < n and fmt[k] in "hlL":
            k += 1
        conversion = fmt[k] if k < n else ""
        pos = k + 1
        if conversion == "%":
            total += 1
            continue
        if not isinstance(width, int) or not isinstance(precision, int):
            return total
        if key is not None:
            value = mapping.get(key) if mapping is not None else None
        else:
            value = take()
        text = size(value, limit) + (0 if conversion in "sra" else 320)
        total += max(abs(width), text + abs(precision))
    return total


def _check_percent(fmt, values, what: str) -> None:
    if percent_size(str(fmt), values) > MAX_VALUE_SIZE:
        raise _refuse(what)


def _check_spec(spec: str, what: str) -> None:
    """Refuse a ``str.format`` spec whose width or precision (any number in it) passes the limit."""
    for digits in re.findall(r"\d+", spec):
        if len(digits) > 7 or int(digits) > MAX_VALUE_SIZE:
            raise _refuse(f"{what} with width or precision {digits}")


class _BoundedFormatting:
    """``str.format``: each field's width and precision checked before it is formatted, each field's
    value measured, and the running total of the output checked after each field."""

    def vformat(self, format_string, args, kwargs):
        self._chars = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def format_field(self, value, format_spec):
        _check_spec(format_spec, "str.format")
        if size(value) > MAX_VALUE_SIZE:
            raise _refuse("str.format field")
        text = super().format_field(value, format_spec)
        self._chars += len(text)
        if self._chars > MAX_VALUE_SIZE:
            raise _refuse("str.format")
        return text


class _Formatter(_BoundedFormatting, SandboxedFormatter):
    pass


class _EscapeFormatter(_BoundedFormatting, SandboxedEscapeFormatter):
    pass


# ------------------------------------------------------------------------------ str methods

def _str_method(obj, name: str, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Refuse a call of the str or bytes method ``obj.name`` whose result would pass the size
    limit; ``join`` gets its iterable as a list (measured once, then joined)."""
    s = obj.__self__
    what = f"str.{name}"
    if name in ("center", "ljust", "rjust", "zfill"):
        width = args[0] if args else kwargs.get("width", 0)
        if isinstance(width, int) and width > MAX_VALUE_SIZE:
            raise _refuse(f"{what}({width})")
    elif name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tab, int) and len(s) + s.count("\t" if isinstance(s, str) else b"\t") * max(tab, 0) > MAX_VALUE_SIZE:
            raise _refuse(f"{what}({tab})")
    elif name == "replace" and len(args) >= 2:
        old, new = args[0], args[1]
        count = args[2] if len(args) > 2 else kwargs.get("count", -1)
        if isinstance(old, type(s)) and isinstance(new, type(s)) and isinstance(count, int):
            hits = s.count(old) if old else len(s) + 1
            hits = hits if count < 0 else min(hits, count)
            if len(s) + hits * max(0, len(new) - len(old)) > MAX_VALUE_SIZE:
                raise _refuse(what)
    elif name == "join" and args:
        items = list(args[0])
        _within(what, *items, extra=len(s) * max(0, len(items) - 1))
        args = (items, *args[1:])
    elif name == "translate" and args and isinstance(args[0], Mapping) and isinstance(s, str):
        counts = collections.Counter(s)
        total = 0
        for char, k in counts.items():
            mapped = args[0].get(ord(char), char)
            total += k * (len(mapped) if isinstance(mapped, str) else 1)
            if total > MAX_VALUE_SIZE:
                raise _refuse(what)
    return args, kwargs


_GROWING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join", "translate"})


# ------------------------------------------------------------------------------------ filters

def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """transformers' ``tojson`` (no HTML escaping), its output size checked before ``json.dumps``."""
    item_sep, key_sep = separators if separators is not None else (", ", ": ")
    level = 0 if indent is None else (indent if isinstance(indent, int) else len(str(indent))) + 1
    extra = max(len(str(item_sep)), len(str(key_sep))) + 2
    if size(x, per_item=extra, per_level=max(level, 0)) > MAX_VALUE_SIZE:
        raise _refuse("tojson")
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _check_filter(name: str, a: dict) -> None:
    """Refuse the filter call ``name`` with bound arguments ``a`` when its result would pass the limit;
    ``join``, ``sum`` and ``slice`` get their iterable as a list (``a`` is changed in place)."""
    if name == "center":
        width = a["width"]
        if isinstance(width, int) and width > MAX_VALUE_SIZE:
            raise _refuse(f"center({width})")
    elif name == "indent":
        s, width = str(a["s"]), a["width"]
        w = width if isinstance(width, int) else len(str(width))
        if len(s) + (s.count("\n") + 1) * max(w, 0) > MAX_VALUE_SIZE:
            raise _refuse(f"indent({width!r})")
    elif name == "wordwrap":
        s, width, wrap = str(a["s"]), a["width"], a["wrapstring"]
        if isinstance(width, int) and width > 0:
            lines = len(s) // width + s.count("\n") + 1
            if len(s) + lines * len(str(wrap if wrap is not None else "\n")) > MAX_VALUE_SIZE:
                raise _refuse("wordwrap")
    elif name == "format":
        _check_percent(a["value"], a["kwargs"] or a["args"], "format")
    elif name == "join":
        items = list(a["value"])
        if a["attribute"] is not None:
            get = make_attrgetter(a["eval_ctx"].environment, a["attribute"])
            items = [get(x) for x in items]
            a["attribute"] = None
        _within("join", *items, extra=len(str(a["d"])) * max(0, len(items) - 1))
        a["value"] = items
    elif name == "replace":
        s, old, new, count = str(a["s"]), str(a["old"]), str(a["new"]), a["count"]
        hits = s.count(old) if old else len(s) + 1
        hits = hits if not isinstance(count, int) or count < 0 else min(hits, count)
        if len(s) + hits * max(0, len(new) - len(old)) > MAX_VALUE_SIZE:
            raise _refuse("replace")
    elif name == "batch":
        n = _int(a["linecount"], "batch's linecount")
        if n > MAX_VALUE_SIZE or (a["fill_with"] is not None and size(a["fill_with"]) * max(n, 0) > MAX_VALUE_SIZE):
            raise _refuse(f"batch({n})")
    elif name == "slice":
        n = _int(a["slices"], "slice's count")
        if n > MAX_VALUE_SIZE or (a["fill_with"] is not None and size(a["fill_with"]) * max(n, 0) > MAX_VALUE_SIZE):
            raise _refuse(f"slice({n})")
    elif name == "pprint":
        if size(a["value"], per_item=2, per_level=1) * 2 > MAX_VALUE_SIZE:
            raise _refuse("pprint")
    elif name == "urlize":
        s = str(a["value"])
        extra = 64 + sum(len(str(a[k] or "")) for k in ("target", "rel")) + len(str(a.get("extra_schemes") or ""))
        if 2 * len(s) + (len(s.split()) + 1) * extra > MAX_VALUE_SIZE:
            raise _refuse("urlize")
    elif name == "round":
        if isinstance(a["precision"], int) and abs(a["precision"]) > MAX_ROUND_DIGITS:
            raise Overrun(f"rounds to {a['precision']} digits; at most {MAX_ROUND_DIGITS}")


@jinja2.pass_environment
def _sum(environment, iterable, attribute=None, start=0):
    """jinja's ``sum`` filter as a loop of checked additions (``sum()`` of lists is one long builtin
    call, quadratic in time, that no deadline can interrupt)."""
    if attribute is not None:
        iterable = map(make_attrgetter(environment, attribute), iterable)
    total = start
    for x in iterable:
        if not (isinstance(total, (int, float)) and isinstance(x, (int, float))):
            _within("sum", total, x)
        elif isinstance(total, int) and isinstance(x, int) and max(total.bit_length(), x.bit_length()) > MAX_INT_BITS:
            raise Overrun(f"computes a number too large (over {MAX_INT_BITS:,} bits: sum)")
        total = total + x
        check_time()
    return total

_CHECKED_FILTERS = frozenset({"center", "indent", "wordwrap", "format", "join", "replace", "batch", "slice",
                              "pprint", "urlize", "round"})


def _bound_filter(name: str, f):
    """``f`` with its arguments checked first (:func:`_check_filter`) and its result measured after."""
    signature = inspect.signature(f) if name in _CHECKED_FILTERS else None
    # jinja's async-capable filters take an eval context their (wrapped) signature does not show
    hidden = int(signature is not None and getattr(f, "jinja_pass_arg", None) is not None
                 and next(iter(signature.parameters), None) not in ("context", "eval_ctx", "environment"))

    @functools.wraps(f)  # keeps jinja_pass_arg (pass_context / pass_environment / pass_eval_context)
    def bounded(*args, **kwargs):
        if signature is not None:
            bound = signature.bind(*args[hidden:], **kwargs)
            bound.apply_defaults()
            _check_filter(name, bound.arguments)
            args, kwargs = (*args[:hidden], *bound.args), bound.kwargs
        return checked(f(*args, **kwargs), f"the {name} filter")

    return bounded


# ------------------------------------------------------------------------------------ globals

def _lipsum(n=5, html=True, min=20, max=100):  # noqa: A002 -- jinja's parameter names
    """jinja's ``lipsum`` with its output size checked first (about 16 characters a word)."""
    if _int(n, "lipsum's n") * _int(max, "lipsum's max") * 16 > MAX_VALUE_SIZE:
        raise _refuse(f"lipsum({n}, max={max})")
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


def strftime_now(fmt) -> str:
    """The current local time formatted by ``fmt`` (transformers' ``strftime_now``); a directive
    expands to at most about 12 characters per character of ``fmt``."""
    if len(str(fmt)) * 12 > MAX_VALUE_SIZE:
        raise _refuse("strftime_now")
    return datetime.now().strftime(fmt)


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
