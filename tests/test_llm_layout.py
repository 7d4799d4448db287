"""The code's layout, measured on its syntax trees: no import circle, and small modules in llm_bridge's two rooms.

Imports are read with ``ast`` wherever they stand (module level and inside functions, where a
lazy import used to hide a circle). An edge goes from a module to the module it names: ``from
pkg import name`` names ``pkg.name`` when that is a module of ours, else ``pkg``. A package's
``__init__`` is not an implicit target of its submodules' imports (Python runs it first, but
that order is fixed and is not a circle of ours).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGES = ("llm_bridge", "harness", "theory", "mnist_aux")
ROOMS = ("llm_bridge", "harness", "theory", "mnist_aux")  # each with its sub-packages (llm_bridge/models/, ...)
# Circles that predate this test, each closed by a function-level import; the test fails on any other.
KNOWN: set[tuple[str, ...]] = set()  # the last one (mnist_aux.figures <-> dissect_figures) closed by one registry
MAX_MODULE_LINES = 400  # not counting data tables (a top-level name bound to a literal tuple / list / dict / set)
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of :data:`PACKAGES`, by dotted name."""
    return {module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that module ``name`` (file ``path``) imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # ``import a.b.c`` of a name inside a.b: a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported(name, path, set(found)) for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle ``[a, b, ..., a]``, or None (depth-first search, white / grey / black)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_circle_and_only_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_function_level_and_from_imports():
    graph = import_graph()
    assert "llm_bridge.loading.hf" in graph["llm_bridge.loading"]  # from llm_bridge.loading import ..., hf
    assert "llm_bridge.models" in graph["llm_bridge.loading.weights"]  # from llm_bridge.models import ...
    assert "llm_bridge.models.layers" in graph["llm_bridge.models.llama"]  # from llm_bridge.models import layers
    assert "mnist_aux.dissect_figures" in graph["mnist_aux.figures"]  # inside a function


@pytest.mark.parametrize("scope", [("llm_bridge.models", "llm_bridge.loading"), PACKAGES], ids=["rooms", "all"])
def test_no_import_circle(scope):
    graph = {a: {b for b in targets if b.startswith(scope) and (a, b) not in KNOWN}
             for a, targets in import_graph().items() if a.startswith(scope)}
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_known_circles_are_still_there():
    """An entry of :data:`KNOWN` that no longer exists is deleted, so the list only shrinks."""
    graph = import_graph()
    assert all(b in graph[a] for a, b in KNOWN), [(a, b) for a, b in KNOWN if b not in graph[a]]


def test_models_never_import_loading():
    graph = import_graph()
    bad = sorted((a, b) for a, targets in graph.items() if a.startswith("llm_bridge.models")
                 for b in targets if b.startswith("llm_bridge.loading"))
    assert not bad, bad


def _data_table_lines(tree: ast.Module) -> int:
    """Lines of top-level assignments of a literal container (key tables, rule tables)."""
    literal = (ast.Tuple, ast.List, ast.Dict, ast.Set)
    return sum(node.end_lineno - node.lineno + 1 for node in tree.body
               if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, literal))


@pytest.mark.parametrize("room", ROOMS)
def test_modules_and_functions_are_small(room):
    files = sorted((REPO / room).rglob("*.py"))
    assert files, room
    too_long = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        lines = len(text.splitlines()) - _data_table_lines(tree)
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(REPO)}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, too_long
