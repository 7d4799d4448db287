"""The order in which the two xdist workers receive test files (tests/conftest.py): longest first."""

from __future__ import annotations

import ast
from types import SimpleNamespace

import conftest


def test_files_queue_longest_first_and_keep_their_tests_in_order():
    ids = ["tests/test_a.py::x", "tests/test_llm_chat_smoke.py::s", "tests/test_a.py::y", "tests/test_b.py::z",
           "tests/test_llm_tiny.py::t1", "tests/test_b.py::w", "tests/test_b.py::v", "tests/test_llm_tiny.py::t2"]
    items = [SimpleNamespace(nodeid=i) for i in ids]
    conftest.pytest_collection_modifyitems(None, items)
    assert [i.nodeid for i in items] == [
        "tests/test_llm_chat_smoke.py::s", "tests/test_llm_tiny.py::t1", "tests/test_llm_tiny.py::t2",  # known costs
        "tests/test_b.py::z", "tests/test_b.py::w", "tests/test_b.py::v",  # then by number of tests
        "tests/test_a.py::x", "tests/test_a.py::y"]


def test_every_costed_file_exists():
    assert all((conftest.REPO / f).is_file() for f in conftest.FILE_SECONDS)


def test_the_longest_file_keeps_its_worker_to_itself():
    """xdist's loadfile scheduler gives a worker another file once two or fewer of its tests are pending: the
    longest file needs at least three tests, or the next long file waits behind it on the same worker."""
    longest = max(conftest.FILE_SECONDS, key=conftest.FILE_SECONDS.get)
    tree = ast.parse((conftest.REPO / longest).read_text())
    tests = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    assert len(tests) >= 3, longest
