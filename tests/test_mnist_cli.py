"""The mnist_aux command line: bad arguments and outputs are refused with one line (exit 2)
before any data is read or anything computed; results and caches go under the working folder;
a broken cache entry is recomputed with a warning. The engines are faked, so this file takes
seconds; tests/test_mnist_smoke.py runs the real CLIs end to end."""

import json

import numpy as np
import pytest

from mnist_aux import __main__ as cli
from mnist_aux import data, dissect, experiment, sweeps
from mnist_aux.data import Dataset
from theory.stats import mean_ci

BAD_ARGS = [
    (["sweep", "width", "--seeds", "1"], "--seeds must be >= 2"),
    (["run", "--seeds", "1"], "--seeds must be >= 2"),
    (["align", "--log-every", "0"], "--log-every must be >= 1"),
    (["align", "--liminal-weight", "-1"], "--liminal-weight must be"),
    (["align", "--liminal-weight", "nan"], "--liminal-weight must be"),
    (["run", "--first-seed", "-5"], "--first-seed must be >= 0"),
    (["sweep", "depth", "--first-seed", "-1"], "--first-seed must be >= 0"),
    (["run", "--seeds-per-chunk", "0"], "--seeds-per-chunk must be >= 1"),
    (["run", "--pairing-seed", "-2"], "--pairing-seed must be >= 0"),
    (["align", "--arms", "none", "trait", "--liminal-weight", "2"], "--arms leaves liminal out"),
]


@pytest.fixture
def no_work(monkeypatch):
    """Any attempt to read data or train fails the test: the CLI must stop before."""
    def refuse(*args, **kwargs):
        raise AssertionError("the CLI read data or computed before refusing its arguments")

    monkeypatch.setattr(data, "load", refuse)
    monkeypatch.setattr(experiment, "run", refuse)
    monkeypatch.setattr(dissect, "run", refuse)


@pytest.mark.parametrize("argv,words", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_arguments_fail_with_one_line(argv, words, no_work, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("command", [["run", "--preset", "smoke"], ["sweep", "heads"], ["align"]])
def test_out_is_checked_before_any_work(command, tmp_path, no_work, capsys):
    (tmp_path / "file").write_text("")
    for out, words in ((tmp_path, "is a directory"), (tmp_path / "file" / "r.json", "cannot create the folder")):
        assert cli.main(command + ["--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no stray temporary file


def _fake_data():
    x = np.zeros((10, 784), np.uint8)
    return Dataset(x, np.zeros(10, np.int32), x, np.zeros(10, np.int32),
                   {"dataset": "mnist", "dir": "mnist-folder", "files": {"f": {"sha256": "0"}}})


def _fake_point(calls):
    def run(cfg, spec, inits, seeds, dataset, **kwargs):
        calls.append(list(inits))
        acc = [0.5 + 0.01 * s for s in seeds]
        student = {"init": inits[0], "lr": spec.lr, "accuracy": acc, "accuracy_summary": mean_ci(acc),
                   "final_loss": [0.1] * len(seeds), "theory_cosine": acc, "theory_cosine_summary": mean_ci(acc)}
        return {"students": [dict(student, init=i) for i in inits], "teacher_cache": str(kwargs.get("teacher_cache"))}
    return run


def test_sweep_writes_under_the_working_folder_and_recomputes_a_broken_cache_entry(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "load", lambda *a, **k: _fake_data())
    calls = []
    monkeypatch.setattr(dissect, "run", _fake_point(calls))
    argv = ["sweep", "heads", "--preset", "smoke", "--seeds", "2", "--no-progress"]
    assert cli.main(argv) == 0
    out = tmp_path / "results" / "mnist_sweep_heads.json"
    results = json.loads(out.read_text())
    assert len(calls) == 3 and results["points_computed"] == 3
    assert results["cache"] == "results/sweeps" and results["data"]["dir"] == "mnist-folder"
    assert results["points"][0]["teacher_cache"] == "results/cache/teachers"
    assert "versions" in results and results["command"].startswith("python -m mnist_aux sweep heads")
    entries = sorted((tmp_path / "results" / "sweeps").glob("*.json"))
    assert len(entries) == 3 and all(json.loads(e.read_text())["point"]["format"] == sweeps.FORMAT for e in entries)
    broken = entries[0]
    broken.write_text(broken.read_text()[:200])  # a run killed mid-write by an older version, a full disk
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert len(calls) == 4 and json.loads(out.read_text())["points_computed"] == 1
    err = capsys.readouterr().err
    assert "broken cache entry" in err and broken.name in err
    assert json.loads(broken.read_text())["key"] == broken.stem  # rewritten whole


@pytest.mark.parametrize("argv,default,held", [
    (["run", "--preset", "tiny", "--seeds", "2"], "mnist_aux_tiny.json",
     {"seeds": [0, 1, 2], "config": None}),
    (["sweep", "heads", "--preset", "tiny", "--seeds", "2"], "mnist_sweep_heads.json", {"seeds": [0, 1, 2, 3], "preset": "tiny"}),
    (["align", "--preset", "tiny", "--seeds", "2"], "mnist_alignment.json",
     {"seeds": list(range(10)), "config": None, "arms": ["none"]}),
])
def test_a_default_output_holding_another_run_is_not_overwritten(argv, default, held, tmp_path, monkeypatch, no_work,
                                                                  capsys):
    """The committed 100-seed file is never replaced by a 10-seed run by default: one line naming --out,
    before any work, and the file is left as it was."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    from mnist_aux.configs import tiny
    held = {k: (tiny().to_dict() if v is None else v) for k, v in held.items()}
    (tmp_path / "results" / default).write_text(json.dumps(held))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "holds another run" in err and "--out" in err and "seeds" in err and len(err.strip().splitlines()) == 1
    assert json.loads((tmp_path / "results" / default).read_text()) == held
