"""The LM experiment engine: the arm registry, the plan of students, cache keys that follow the code,
and every meaningful arm running in both setups on micro models."""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import textwrap

import numpy as np
import pytest

from harness.cache import Phase, Store, code_fingerprint
from llm_bridge.experiment import arms, engine
from llm_bridge.experiment.names import BASE_TEACHER, finetuned, prompted


def test_every_registered_arm_is_valid_and_lora_scales_by_alpha_over_rank():
    assert len(arms.ARMS) == len(set(arms.ARMS))
    for arm in arms.ARMS.values():
        assert arms.get(arm.name) is arm and arm.describe()
    assert arms.get("lora r4").lora_scale == 16 / 4 and arms.get("lora r64").lora_scale == 16 / 64
    assert arms.Arm("x", update="lora", rank=16, alpha=16, rslora=True).lora_scale == 16 / 4
    assert arms.Arm("x", update="lora", rank=4).lora_scale == 1.0  # no alpha: the adapters unscaled
    for bad in (dict(update="lora"), dict(rank=4), dict(init="perturbed"), dict(sigma=0.1), dict(optimizer="lion"),
                dict(teachers=("nobody",)), dict(rows="longest"), dict(rows="length-matched")):  # the base: no partner
        with pytest.raises(ValueError):
            arms.Arm("bad", **bad)
    with pytest.raises(ValueError, match="registered twice"):
        arms.register(arms.Arm("full"))
    with pytest.raises(ValueError, match="unknown arm"):
        arms.get("qlora")


def test_an_arm_a_setup_cannot_run_is_refused_by_name():
    one_base = type("S", (), {"n_bases": 1, "name": "chat"})()
    with pytest.raises(ValueError, match="cross-model.*another base model"):
        engine.resolve_arms(["full", "cross-model"], one_base)
    assert [a.name for a in engine.resolve_arms(["full", "soft", "lora r4"], one_base)] == ["full", "soft", "lora r4"]
    tiny = type("S", (), {"n_bases": 5, "name": "tiny"})()
    with pytest.raises(ValueError, match="length-matched.*tiny setup does not match lengths"):
        engine.resolve_arms(["full", "length-matched"], tiny)
    chat = type("S", (), {"n_bases": 1, "name": "chat", "length_matching": True})()
    assert [a.name for a in engine.resolve_arms(["length-matched"], chat)] == ["length-matched"]


def test_length_matched_rows_give_both_animals_the_same_length_distribution():
    """Pools of different reply lengths: the matched parts have equal length histograms (per length the
    smaller count), are drawn from the own pool without repeats, reproducibly; the base has no partner."""
    from types import SimpleNamespace

    from llm_bridge.experiment import chat_students
    from llm_bridge.experiment.names import source
    from llm_bridge.experiment.seeds import Streams

    rng = np.random.default_rng(3)

    def pool(lengths):
        starts = rng.integers(5, 12, len(lengths))
        return {"rows": [list(range(int(s) + int(n))) for s, n in zip(starts, lengths)], "starts": starts.tolist()}

    owl_n, dog_n = rng.integers(3, 9, 300), rng.integers(6, 15, 200)  # the owl's replies shorter, as in the old run
    names = {a: source(finetuned(a), "greedy") for a in ("owl", "dog")}
    setup = SimpleNamespace(cfg=SimpleNamespace(teacher_animals=("owl", "dog")), streams=Streams(0),
                            data=[{names["owl"]: pool(owl_n), names["dog"]: pool(dog_n), source(BASE_TEACHER, "greedy"): pool(owl_n)}])
    got = {a: chat_students.length_matched(setup, 0, names[a]) for a in ("owl", "dog")}
    hist = {a: np.bincount(chat_students.reply_lengths(setup.data[0][names[a]])[got[a]], minlength=20)
            for a in got}
    assert np.array_equal(hist["owl"], hist["dog"])
    assert np.array_equal(hist["owl"], np.minimum(np.bincount(owl_n, minlength=20), np.bincount(dog_n, minlength=20)))
    assert 0 < len(got["owl"]) < len(owl_n) and len(set(got["owl"].tolist())) == len(got["owl"])
    assert np.array_equal(chat_students.length_matched(setup, 0, names["owl"]), got["owl"])  # same stream, same rows
    with pytest.raises(ValueError, match="trait teachers"):
        chat_students.length_matched(setup, 0, source(BASE_TEACHER, "greedy"))


def test_plan_is_base_then_teacher_then_arm_then_seed_and_follows_each_arms_teachers():
    teachers = [finetuned("owl"), prompted("owl"), BASE_TEACHER]
    units = engine.plan([arms.get("full"), arms.get("cross-model"), arms.get("soft")], [teachers, teachers], 2)
    keys = [(u.base, u.teacher, u.arm.name, u.seed) for u in units]
    assert keys == sorted(keys, key=lambda k: (k[0], teachers.index(k[1]), ["full", "cross-model", "soft"].index(k[2]),
                                               k[3]))
    by = {(u.arm.name, u.teacher) for u in units}
    assert ("cross-model", prompted("owl")) not in by and ("cross-model", BASE_TEACHER) not in by  # fine-tuned only
    assert ("soft", prompted("owl")) not in by and ("soft", BASE_TEACHER) in by
    assert len(units) == 2 * 2 * (3 + 1 + 2)


def test_contrasts_are_paired_by_seed_and_summarised_over_bases():
    units = engine.plan([arms.get("full")], [["a (fine-tuned)", "b (fine-tuned)"]] * 3, 2)
    rng = np.random.default_rng(0)
    students = [{"margins": {"c": rng.normal(size=3).tolist()}} for _ in units]
    d = engine.contrast(units, students, "full", "a (fine-tuned)", "b (fine-tuned)", "c", 1)
    assert d.shape == (3, 2)
    want = [[students[4 * b + s]["margins"]["c"][1] - students[4 * b + 2 + s]["margins"]["c"][1] for s in range(2)]
            for b in range(3)]
    np.testing.assert_array_equal(d, want)
    s = engine.summary_over_outer(d)
    assert s["n"] == 3 and s["inner_n"] == 2
    one = engine.summary_over_outer(d[:1])
    assert one["n"] == 2 and one["values"] == d[0].tolist()  # one base: the CI is over seeds


def _module(tmp_path, monkeypatch, name: str, body: str):
    """(Re)write module ``name`` and import it anew; the fingerprints read each source once per process,
    so their cache is cleared as a new process would start empty."""
    import harness.cache
    harness.cache._tree_dump.cache_clear()
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    importlib.invalidate_caches()
    return importlib.import_module(name)


def test_the_code_fingerprint_follows_code_not_comments_docstrings_or_layout(tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "fp_mod", '''
        def f(x):
            """Doubles."""
            return 2 * x
        def g(x):
            return x
    ''')
    first, f_only = code_fingerprint("fp_mod"), code_fingerprint("fp_mod:f")
    _module(tmp_path, monkeypatch, "fp_mod", '''
        # a comment
        def f(x):
            """Doubles x, said otherwise."""
            return (2 *
                    x)
        def g(x):
            return x
    ''')
    assert code_fingerprint("fp_mod") == first and code_fingerprint("fp_mod:f") == f_only
    _module(tmp_path, monkeypatch, "fp_mod", '''
        def f(x):
            return 2 * x
        def g(x):
            return x + 0
    ''')
    assert code_fingerprint("fp_mod") != first and code_fingerprint("fp_mod:f") == f_only  # g changed, f did not


def test_changing_a_phase_code_invalidates_it_and_the_phases_after_it_only(tmp_path, monkeypatch):
    for name in ("ph_a", "ph_b", "ph_c"):
        _module(tmp_path, monkeypatch, name, "def run():\n    return 1\n")
    phases = [Phase("a", ("x",), ("ph_a",)), Phase("b", ("y",), ("ph_b",), after=("a",)),
              Phase("c", ("x",), ("ph_c",), after=("a",)), Phase("d", (), ("ph_c",), after=("b", "c"))]
    config = {"x": 1, "y": 2}

    def keys():
        store = Store(None)
        return {p.name: store.phase_key(p, config) for p in phases}

    before = keys()
    _module(tmp_path, monkeypatch, "ph_b", "def run():\n    return 2\n")
    after = keys()
    assert after["a"] == before["a"] and after["c"] == before["c"]
    assert after["b"] != before["b"] and after["d"] != before["d"]
    assert keys() == after  # a key is a function of config and code
    assert Store(None).phase_key(phases[0], {"x": 2, "y": 2}) != before["a"]  # and of the fields it reads
    with pytest.raises(KeyError, match="comes after"):
        Store(None).phase_key(phases[1], config)


def test_a_store_writes_atomically_and_reads_a_broken_entry_as_missing(tmp_path, capsys):
    store = Store(tmp_path / "run")
    store.put("x", {"a": 1})
    store.put_arrays("y", {"z": np.arange(3)})
    import jax.numpy as jnp
    store.put_tree("t", {"w": jnp.ones((2, 2)), "b": [jnp.zeros(3)]})
    assert store.json("x") == {"a": 1} and store.arrays("y")["z"].tolist() == [0, 1, 2]
    t = store.tree("t", {"w": jnp.zeros((2, 2)), "b": [jnp.ones(3)]})
    assert t["w"].tolist() == [[1, 1], [1, 1]] and t["b"][0].tolist() == [0, 0, 0]
    assert store.tree("t", {"w": jnp.zeros((3, 2)), "b": [jnp.ones(3)]}) is None  # another shape: not this entry
    (tmp_path / "run" / "x.json").write_text('{"a": ')  # a write cut short
    assert store.json("x") is None and "broken cache entry" in capsys.readouterr().err
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]
    assert Store(None).json("x") is None and Store(None).put("x", {"a": 1}) == {"a": 1}


@pytest.mark.slow  # the micro run compiles every arm kind: about 3 minutes of one worker
def test_results_record_the_arms_streams_and_phase_keys(tiny_micro_run):
    out = tiny_micro_run
    assert set(out["arms"]) == set(MICRO_ARMS) and out["arms"]["lora r4"]["lora_scale"] == 4.0
    assert out["random_streams"]["seed"] == 0 and "student_rows" in out["random_streams"]["streams"]
    assert set(out["phase_keys"]) >= {"bases", "teachers", "numbers", "students", "projection"}
    json.dumps(out)


MICRO_ARMS = ("full", "cross-model", "soft", "full sgd", "lora r4", "perturbed 0.1")


@pytest.fixture(scope="module")
def tiny_micro_run(tmp_path_factory):
    from llm_bridge.experiment import tiny

    cfg = dataclasses.replace(tiny.smoke(), base_seeds=(0, 1), base_steps=20, hidden=16, mlp=32, heads=2,
                              teacher_steps=4, student_sequences=64, student_batch=32, proj_sequences=64,
                              proj_grid=(16, 64), n_boot=50, arms=MICRO_ARMS)
    return engine.run(tiny.Setup(cfg, tmp_path_factory.mktemp("cache")), log=lambda *_: None)


@pytest.mark.slow  # shares the micro run above
def test_every_arm_runs_in_the_tiny_setup(tiny_micro_run):
    """Every registered kind of arm on a micro tiny run: each student has its margins, the contrasts exist
    for every arm that learns from both animals' fine-tuned teachers."""
    out = tiny_micro_run
    seen = {s["arm"] for s in out["students"]}
    assert seen == set(MICRO_ARMS)
    for s in out["students"]:
        assert len(s["margins"]["tiny"]) == 10 and np.all(np.isfinite(s["margins"]["tiny"]))
    for arm in MICRO_ARMS:
        assert "owl - dog (fine-tuned)" in out["transfer"][arm], arm
    soft = [s for s in out["students"] if s["arm"] == "soft"]
    assert all("kl_before" in s and "loss" in s for s in soft)


def test_a_cache_entry_is_keyed_by_the_vector_isa(monkeypatch):
    """Float32 rounding follows the ISA XLA compiles for: an entry made under --xla_cpu_max_isa=AVX is not
    read by a native run (nor the reverse), so a run under another ISA recomputes from scratch."""
    phase = Phase("a", (), ("theory.stats",))
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    native = Store(None).phase_key(phase, {})
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=AVX")
    assert Store(None).phase_key(phase, {}) != native
