"""The checks the chat-template sandbox (:mod:`llm_bridge.loading.sandbox`) makes before each
operation that can grow a value past :data:`~llm_bridge.loading.sandbox_size.MAX_VALUE_SIZE`,
counted from its arguments before any of the result is built: printf-style ``%`` and ``format``
(:func:`percent_size`) and ``str.format`` (:class:`_BoundedFormatting`), each width, precision and
field; the str and bytes methods that grow their text (:func:`_str_method`); jinja's filters, each
wrapped by :func:`_bound_filter` (its arguments checked by :func:`_check_filter`, its result
measured), with ``sum`` a loop of checked additions; transformers' ``tojson``; and the globals
``lipsum`` and ``strftime_now``. Sizes are counted by :mod:`llm_bridge.loading.sandbox_size`, and
a value past a bound raises its :class:`~llm_bridge.loading.sandbox_size.Overrun`.
"""

from __future__ import annotations

import collections
import functools
import inspect
import json
import re
from collections.abc import Mapping
from datetime import datetime

import jinja2
from jinja2.filters import make_attrgetter
from jinja2.sandbox import SandboxedEscapeFormatter, SandboxedFormatter
from jinja2.utils import generate_lorem_ipsum

from llm_bridge.loading.sandbox_size import (
    MAX_INT_BITS,
    MAX_ROUND_DIGITS,
    MAX_VALUE_SIZE,
    Overrun,
    _refuse,
    _within,
    check_time,
    checked,
    size,
)

# ------------------------------------------------------------------------------- text formatting

def _number(fmt: str, k: int) -> tuple[int, int]:
    """The decimal number at ``fmt[k:]`` (0 where there is none) and the index after it."""
    start, n = k, len(fmt)
    while k < n and fmt[k] in "0123456789":
        k += 1
    return (int(fmt[start:k]) if k > start else 0), k


def _conversion(fmt: str, k: int, take) -> tuple:
    """The conversion specifier of ``fmt`` that starts at ``k`` (just after its ``%``), as
    ``(mapping key or None, width, precision, conversion character or "", index after it)``;
    a ``*`` width or precision is ``take()``, the next of the values (:func:`percent_size`)."""
    n, key = len(fmt), None
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
        width, k = _number(fmt, k)
    precision = 0
    if k < n and fmt[k] == ".":
        if k + 1 < n and fmt[k + 1] == "*":
            precision, k = take(), k + 2
        else:
            precision, k = _number(fmt, k + 1)
    while k < n and fmt[k] in "hlL":
        k += 1
    return key, width, precision, (fmt[k] if k < n else ""), k + 1


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

    while pos < n and total <= limit:
        j = fmt.find("%", pos)
        if j < 0:
            total += n - pos
            break
        total += j - pos
        key, width, precision, conversion, pos = _conversion(fmt, j + 1, take)
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

def _int(x, name: str) -> int:
    """An int argument (a bool counts as its int, as in Python); TypeError names it otherwise."""
    if isinstance(x, int):
        return int(x)
    raise TypeError(f"{name} must be an integer, not {type(x).__name__}")


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
