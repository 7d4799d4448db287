"""The shared statistics convention (theory.stats) and results writer (harness.results)."""

import json
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import results
from theory import stats, sign_curve


def test_mean_ci_is_the_student_t_interval():
    v = np.array([1.0, 2.0, 4.0, 7.0, 11.0])
    s = stats.mean_ci(v)
    sem = v.std(ddof=1) / math.sqrt(5)
    assert s["n"] == 5 and s["mean"] == pytest.approx(5.0) and s["sem"] == pytest.approx(sem)
    # t_{0.975, 4} = 2.7764451... (table value), wider than the normal 1.96
    assert s["ci95"][1] - s["mean"] == pytest.approx(2.7764451052 * sem, rel=1e-9)
    assert stats.half_width(v) == pytest.approx(2.7764451052 * sem, rel=1e-9)


def test_mean_ci_of_one_value_has_no_interval_and_empty_input_is_refused():
    s = stats.mean_ci([3.0])
    assert s["mean"] == 3.0 and all(math.isnan(x) for x in s["ci95"])
    with pytest.raises(ValueError):
        stats.mean_ci([])


def test_nested_ci_is_over_outer_means():
    v = np.array([[1.0, 3.0], [2.0, 2.0], [10.0, 12.0]])
    s = stats.nested_mean_ci(v)
    assert s["per_outer"] == [2.0, 2.0, 11.0] and s["n"] == 3 and s["inner_n"] == 2
    assert s == stats.mean_ci([2.0, 2.0, 11.0]) | {"per_outer": [2.0, 2.0, 11.0], "inner_n": 2}
    with pytest.raises(ValueError):
        stats.nested_mean_ci([1.0, 2.0])


def test_sign_curve_rises_with_n_for_a_positive_mean():
    rng = np.random.default_rng(0)
    v = rng.normal(0.2, 1.0, 2000)
    curve = sign_curve(v, [4, 64, 1024], 400, 0)
    assert curve[0] < curve[1] < curve[2] and curve[2] > 0.99
    assert sign_curve(v, [4, 64], 400, 0) == curve[:2]  # same seed, same draws


def test_write_json_is_atomic_and_leaves_no_temporary(tmp_path):
    out = tmp_path / "a" / "b.json"
    results.write_json(out, {"x": 1})
    assert json.loads(out.read_text()) == {"x": 1}
    assert sorted(p.name for p in out.parent.iterdir()) == ["b.json"]


def test_prepare_output_refuses_a_directory_and_an_unwritable_folder(tmp_path):
    with pytest.raises(results.OutputError, match="is a directory"):
        results.prepare_output(tmp_path)
    assert list(tmp_path.iterdir()) == []  # no stray temporary file
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(results.OutputError, match="cannot create"):
        results.prepare_output(blocker / "sub" / "x.json")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(results.OutputError, match="cannot write"):
            results.prepare_output(ro / "x.json")


def test_atomic_dir_publishes_complete_folders_only(tmp_path):
    final = tmp_path / "entry"
    with pytest.raises(RuntimeError):
        with results.atomic_dir(final) as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("killed while saving")
    assert list(tmp_path.iterdir()) == []
    final.mkdir()
    (final / "config.json").write_text("broken")  # a broken earlier entry is replaced
    with results.atomic_dir(final) as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "model.safetensors").write_text("w")
    assert sorted(p.name for p in final.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_read_json_treats_a_truncated_entry_as_missing(tmp_path, capsys):
    p = tmp_path / "x.json"
    p.write_text('{"a": [1, 2')
    assert results.read_json(p) is None and "broken cache entry" in capsys.readouterr().err
    assert results.read_json(tmp_path / "absent.json") is None


def test_shown_paths_are_relative_to_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert results.shown(tmp_path / "results" / "x.json") == os.path.join("results", "x.json")
    assert results.shown("~/data") == "~/data"
    assert results.shown("/elsewhere/data") == "/elsewhere/data"


def test_provenance_records_versions_and_machine():
    p = results.provenance("python -m x")
    assert p["command"] == "python -m x" and p["versions"]["jax"] and p["machine"]["cpu_count"] >= 1


def test_committed_results_name_no_machine_paths():
    """Every committed results file records paths relative to the working folder (the brief:
    never a machine's absolute path): no string in them names /work, /root, /home, /tmp, ..."""
    import re
    from pathlib import Path

    machine = re.compile(r"(^|[\s('\"=:])/(work|root|home|tmp|check|Users|mnt|opt|var|usr|srv)/")
    repo = Path(__file__).resolve().parents[1]
    files = sorted((repo / "results").glob("*.json")) + sorted((repo / "results" / "sweeps").glob("*.json")) \
        + sorted((repo / "results" / "benchmarks").glob("*.json"))
    assert len(files) > 20

    def strings(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for k, v in node.items():
                yield k
                yield from strings(v)
        elif isinstance(node, list):
            for v in node:
                yield from strings(v)

    bad = [(f.relative_to(repo).as_posix(), s) for f in files for s in strings(json.loads(f.read_text()))
           if machine.search(s)]
    assert not bad, bad[:5]


def test_guard_default_output_replaces_only_the_same_run(tmp_path):
    from harness.results import OutputError, guard_default_output
    path = tmp_path / "r.json"
    assert guard_default_output(path, {"seeds": [0, 1]}) == path  # nothing there yet
    results.write_json(path, {"seeds": [0, 1], "config": {"a": 1}, "other": 5})
    assert guard_default_output(path, {"seeds": [0, 1], "config": {"a": 1}}) == path  # the same run again
    with pytest.raises(OutputError, match="holds another run .seeds: 100 values 0..99; this run: .0, 1.*--out"):
        results.write_json(path, {"seeds": list(range(100))})
        guard_default_output(path, {"seeds": [0, 1]})
    path.write_text("{ truncated")
    with pytest.raises(OutputError, match="not a readable results file"):
        guard_default_output(path, {"seeds": [0, 1]})


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_results_and_cache_folders_follow_the_umask(tmp_path, mask):
    """A lab sharing results on one machine reads them: files 0666 & ~umask, folders 0777 & ~umask, as
    open() and mkdir() give, not the 0600 / 0700 of the temporary files they are written through."""
    old = os.umask(mask)
    try:
        f = results.write_json(tmp_path / "r.json", {"x": 1})
        with results.atomic_dir(tmp_path / "entry") as d:
            (d / "a").write_text("1")
        from harness.cache import Store
        Store(tmp_path / "run").put_arrays("arr", {"a": np.zeros(2)})
    finally:
        os.umask(old)
    assert f.stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "entry").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (tmp_path / "run" / "arr.npz").stat().st_mode & 0o777 == 0o666 & ~mask


def test_checking_an_output_leaves_no_folder_behind(tmp_path):
    """prepare_output creates nothing a failed run would leave: the probe and any folder it made are gone."""
    p = results.prepare_output(tmp_path / "a" / "b" / "r.json")
    assert p == tmp_path / "a" / "b" / "r.json" and list(tmp_path.iterdir()) == []
    results.write_json(p, {"x": 1})  # the writer makes the folders when it writes
    assert json.loads(p.read_text()) == {"x": 1}


@pytest.mark.property
@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=12))
def test_p_value_is_below_5_percent_exactly_when_the_ci_excludes_0(values):
    from theory.stats import mean_ci, p_value

    s, p = mean_ci(values), p_value(values)
    if s["sem"] > 1e-9 and abs(abs(s["mean"]) - (s["ci95"][1] - s["mean"])) > 1e-9 * (1 + abs(s["mean"])):
        assert (p < 0.05) == (s["ci95"][0] > 0 or s["ci95"][1] < 0)


def test_holm_step_down():
    from theory.stats import holm

    # sorted 0.005 0.01 0.03 0.04 -> x4, x3, x2, x1 = 0.02 0.03 0.06 0.04, then kept non-decreasing: 0.06
    assert np.allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0] and holm([0.02]) == [0.02]


def test_detectable_effect_has_its_power():
    """At the returned effect, the exact power of the two-sided 5% t-test (noncentral t) is close to 0.8."""
    from scipy import stats as sps
    from theory.stats import detectable_effect

    for n, sd in ((4, 1.0), (8, 0.3), (20, 2.0)):
        d = detectable_effect(sd, n)
        crit = sps.t.ppf(0.975, n - 1)
        nc = d * np.sqrt(n) / sd
        power = sps.nct.sf(crit, n - 1, nc) + sps.nct.cdf(-crit, n - 1, nc)
        assert 0.75 < power < 0.85, (n, power)
