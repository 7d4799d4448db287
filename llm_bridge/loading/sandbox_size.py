"""What every bound of the chat-template sandbox (:mod:`llm_bridge.loading.sandbox`) is counted in
and raises: :func:`size`, the units of :data:`MAX_VALUE_SIZE` a value's text takes (one per
character, per element plus each element's own size, per decimal digit), counted without building
that text and stopped as soon as the count passes the limit; :func:`checked`, which refuses a value
past it; :class:`Overrun`, the one exception every bound raises; and :func:`check_time`, the
deadline check each bounded step makes (the deadline itself is set by
:func:`llm_bridge.loading.sandbox.deadline`). The checks before each operation that grows a value
are :mod:`llm_bridge.loading.sandbox_checks`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, MappingView

from jinja2.utils import Namespace
from markupsafe import Markup

MAX_VALUE_SIZE = 1_000_000  # units of size(): characters, elements, digits
MAX_INT_BITS = 100_000  # about 30,000 decimal digits
MAX_ROUND_DIGITS = 1_000  # |precision| of the round filter (10**precision is computed)


class Overrun(BaseException):
    """A template exceeded a bound (size, output, number, time or nesting); the message says which.

    A ``BaseException``, like ``KeyboardInterrupt``: it must end the render, and jinja and its
    filters catch ``Exception`` in places (e.g. ``int``'s filter returns its default on errors).
    """


# ------------------------------------------------------------------------------------------ time

_state = threading.local()  # the running deadline of this thread (renders are per thread)


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


def _container_size(items, depth: int, memo: dict, limit: int, per_item: int, per_level: int) -> int:
    """The size of a container at nesting ``depth`` whose elements are ``items``, each a scalar or a
    container already in ``memo`` (one step of :func:`size`), or a number above ``limit`` as soon as
    the count passes it."""
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
    return total


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
        total = _container_size(items, depth, memo, limit, per_item, per_level)
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
