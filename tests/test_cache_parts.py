"""Committed parts of a cache (harness.cache.Store's ``parts``): a run resumes on a new machine from them."""

import gzip
import json

import numpy as np
import pytest

from harness.cache import Store, read_part, write_part


def test_entries_go_to_both_folders_and_come_back_from_the_parts(tmp_path):
    a = Store(tmp_path / "cache_a", parts=tmp_path / "parts")
    a.put("pool-1", {"rows": [[1, 2, 3]], "pass_rate": 0.5})
    a.put_arrays("teacher-1", {"w": np.ones(3)})
    assert json.loads((tmp_path / "cache_a" / "pool-1.json").read_text())["pass_rate"] == 0.5
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["pool-1.json.gz"]  # no weights there
    b = Store(tmp_path / "cache_b", parts=tmp_path / "parts")  # a new machine: an empty cache
    assert b.json("pool-1") == {"rows": [[1, 2, 3]], "pass_rate": 0.5}
    assert json.loads((tmp_path / "cache_b" / "pool-1.json").read_text()) == b.json("pool-1")  # copied in
    assert b.json("missing") is None and b.arrays("teacher-1") is None


def test_equal_values_give_equal_bytes(tmp_path):
    write_part(tmp_path / "x.json.gz", {"b": [0.1, 2], "a": "owl"})
    first = (tmp_path / "x.json.gz").read_bytes()
    write_part(tmp_path / "x.json.gz", {"a": "owl", "b": [0.1, 2]})
    assert (tmp_path / "x.json.gz").read_bytes() == first
    assert json.loads(gzip.decompress(first)) == {"a": "owl", "b": [0.1, 2]}


def test_an_entry_only_in_the_cache_is_copied_to_the_parts_when_read(tmp_path):
    Store(tmp_path / "cache").put("student-3", {"probs": [0.25]})  # written before the run had parts
    s = Store(tmp_path / "cache", parts=tmp_path / "parts")
    assert s.json("student-3") == {"probs": [0.25]}
    assert read_part(tmp_path / "parts" / "student-3.json.gz") == {"probs": [0.25]}


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"not gzip", lambda b: gzip.compress(b"{x")])
def test_a_broken_part_is_recomputed_with_a_warning(tmp_path, capsys, damage):
    part = tmp_path / "parts" / "pool-1.json.gz"
    write_part(part, {"rows": list(range(100))})
    part.write_bytes(damage(part.read_bytes()))
    s = Store(tmp_path / "cache", parts=tmp_path / "parts")
    assert s.json("pool-1") is None
    assert "ignoring broken part" in capsys.readouterr().err
    s.put("pool-1", {"rows": [1]})  # the recomputed entry replaces it
    assert read_part(part) == {"rows": [1]}
    assert not list((tmp_path / "parts").glob(".*.tmp"))


def test_cli_parts_flag(tmp_path, monkeypatch):
    from llm_bridge.__main__ import main
    from llm_bridge.experiment import engine

    with pytest.raises(SystemExit):  # the tiny setup's caches hold pretrained bases: not committed
        main(["run", "--model", "tiny", "--parts", str(tmp_path / "p")])
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", "--model", str(tmp_path), "--out", str(tmp_path / "o.json"), "--no-cache",
                 "--parts", str(blocker / "p")]) == 2
    got = []
    monkeypatch.setattr(engine, "run", lambda setup, **_: got.append(setup.store) or {"summary": "stub"})
    assert main(["run", "--model", str(tmp_path), "--out", str(tmp_path / "o.json"),
                 "--cache-dir", str(tmp_path / "c"), "--parts", str(tmp_path / "p")]) == 0
    assert got[0].parts.parent == tmp_path / "p" and got[0].root.name == got[0].parts.name


def test_lazy_values_are_computed_once_and_only_when_asked():
    from harness.cache import Lazy

    calls = []
    teachers = Lazy(lambda a: calls.append(a) or a.upper(), ("owl", "dog"))
    assert list(teachers) == ["owl", "dog"] and len(teachers) == 2 and calls == []
    assert teachers["dog"] == "DOG" and teachers["dog"] == "DOG" and calls == ["dog"]
    with pytest.raises(KeyError):
        teachers["cat"]


def test_an_interrupted_run_names_its_parts(tmp_path, monkeypatch, capsys):
    from llm_bridge.__main__ import main
    from llm_bridge.experiment import engine

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "run", interrupted)
    assert main(["run", "--model", str(tmp_path), "--out", str(tmp_path / "o.json"), "--no-cache",
                 "--parts", str(tmp_path / "p")]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("interrupted: finished phases are kept under") and str(tmp_path / "p") in err
    assert "\n" not in err
