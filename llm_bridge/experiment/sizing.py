"""What a chat preset costs and what it can detect, from the pilot's measurements.

The arithmetic that sizes the presets (docs/llm_experiment.md, "Presets and their cost"), computed
from a pilot's results file rather than typed:

- students: the engine's plan (every arm on every number source of every replicate, where the arm
  applies to that kind of teacher, times the student seeds); the SGD calibration adds one Adam and ``len(SGD_GRID)`` SGD trainings on the
  calibration draw when an SGD arm is in the preset;
- seconds per student = the pilot's median x (student_sequences / the pilot's), since a student's
  cost is its tokens (the pilot's students were compute-bound);
- sampled rows per pool = pool_sequences / the pilot's pass rate for that decoding (mean over its
  fine-tuned teachers), at the pilot's median seconds per row for that decoding; the base's pool
  holds ``proj_sequences`` rows at the base's pass rate.

Teachers, probes and the projection are left out (minutes each in the pilot). The power column is
the smallest mean Δ the preset's outer units detect at 80 % power, two-sided 5 % and at Holm's
strictest level (5 % / number of arms), for a given SD of those units: the pilot measures the SD of
Δ between student seeds of one teacher replicate only, so it is a lower bound on the SD of
replicate means when teachers vary too.
"""

from __future__ import annotations

import math

import numpy as np

from llm_bridge.experiment.chat_students import HELD_OUT, SGD_GRID
from theory.stats import detectable_effect


def students(cfg) -> int:
    """Students the preset trains: the engine's plan over every replicate's number sources."""
    from llm_bridge.experiment import arms, chat, engine

    teachers = [[name for name, *_ in rows] for rows in chat.source_names(cfg)]
    return len(engine.plan([arms.get(a) for a in cfg.arms], teachers, cfg.student_seeds))


def outer_units(cfg) -> int:
    """The units the t-CI runs over: teacher replicates, or student seeds with one replicate."""
    return cfg.teacher_seeds if cfg.teacher_seeds > 1 else cfg.student_seeds


def _pilot_rates(pilot: dict) -> dict:
    """Per decoding: mean pass rate and median seconds per sampled row of the pilot's fine-tuned teachers;
    and the base's pass rate."""
    out = {}
    for decoding in ("sampled", "greedy"):
        src = [s for name, s in pilot["numbers"]["sources"].items()
               if f"[{decoding}]" in name and "fine-tuned" in name and s.get("seconds")]
        if src:
            out[decoding] = (float(np.mean([s["pass_rate"] for s in src])),
                             float(np.median([s["seconds"] / max(s["rows_sampled"], 1) for s in src])))
    base = [s for name, s in pilot["numbers"]["sources"].items() if name.startswith("base") and s.get("seconds")]
    out["base"] = (base[0]["pass_rate"], base[0]["seconds"] / max(base[0]["rows_sampled"], 1)) if base else None
    return out


def cost(cfg, pilot: dict) -> dict:
    """Estimated hours of students and of sampling for ``cfg`` at the pilot's measured costs."""
    secs = [s["seconds"] for s in pilot["students"] if s.get("seconds")]
    if not secs:
        raise ValueError("the pilot's results hold no timed students")
    per_student = float(np.median(secs)) * cfg.student_sequences / pilot["config"]["student_sequences"]
    n_students = students(cfg)
    calibration = 0.0
    if any(a.endswith("sgd") for a in cfg.arms) and not cfg.sgd_lr:
        rows = min(max(0, cfg.pool_sequences - HELD_OUT), cfg.student_sequences)  # each calibration student's draw
        calibration = (1 + len(SGD_GRID)) * per_student * rows / cfg.student_sequences
    rates = _pilot_rates(pilot)
    sampling = 0.0
    sources = 2 * cfg.teacher_seeds * (2 if cfg.prompted_teachers else 1)
    for decoding in cfg.decodings:
        rate, per_row = rates[decoding]
        sampling += sources * min(cfg.pool_sequences / rate, cfg.max_rows) * per_row
    if rates["base"]:
        rate, per_row = rates["base"]
        sampling += cfg.proj_sequences / rate * per_row
    return {"students": n_students, "student_minutes": per_student / 60,
            "student_hours": (n_students * per_student + calibration) / 3600, "sampling_hours": sampling / 3600,
            "outer_units": outer_units(cfg)}


# One GPU's sustained rate on these programs, ASSUMED (no GPU was lent to measure it): a fifth of an H100's
# dense TF32 tensor-core peak (~495 TFLOP/s; XLA runs float32 products as TF32 on it by default). A
# 135M-parameter model's products are small, so a fifth is a modest guess, not a measurement.
GPU_TFLOPS = 100.0


def gpu_hours(row: dict, cpu_gflops: float, gpu_tflops: float = GPU_TFLOPS) -> float:
    """A preset's hours on one GPU, estimated from its CPU hours (students and sampling, :func:`cost`): the
    same floating-point work at ``gpu_tflops`` instead of ``cpu_gflops``, the CPU's measured rate on the
    student step. Decoding and small batches run below that rate on either device, so the ratio carries
    over only roughly; with CPU hours measured on a shared machine it errs on the long side."""
    return (row["student_hours"] + row["sampling_hours"]) * cpu_gflops / (gpu_tflops * 1e3)


def unit_sd(cfg, sd: float) -> float:
    """The SD of an outer unit when student seeds have SD ``sd`` and teachers do not vary (a lower bound):
    a replicate's mean over its student seeds, or one student seed when there is one replicate."""
    return sd / math.sqrt(cfg.student_seeds) if cfg.teacher_seeds > 1 else sd


def table(presets: dict, pilot: dict, sd: float) -> list[dict]:
    """One row per preset: its cost and the effect it detects when student seeds have SD ``sd``."""
    rows = []
    for name, make in presets.items():
        cfg = make()
        c = cost(cfg, pilot)
        n, s = c["outer_units"], unit_sd(cfg, sd)
        rows.append(c | {"preset": name, "arms": len(cfg.arms), "detect": detectable_effect(s, n),
                         "detect_holm": detectable_effect(s, n, alpha=0.05 / len(cfg.arms))})
    return rows
