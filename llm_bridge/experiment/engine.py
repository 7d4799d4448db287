"""The one experiment engine: the same phases, arms and tables for every setup.

:func:`run` takes a setup (:mod:`llm_bridge.experiment.tiny`: bases pretrained here;
:mod:`llm_bridge.experiment.chat`: any Hugging Face folder or GGUF file, SmolLM2-135M-Instruct by
default) and runs

1. ``prepare``: the base model(s) (pretrained and cached, or loaded);
2. ``teachers``: per base, the teachers with a trait (fine-tuned, prompted) and the base itself;
3. ``numbers``: each teacher's number sequences (one sampler and one filter per text format);
4. ``students``: every unit of :func:`plan` (a registered arm x a teacher whose kind the arm
   lists x a student seed, on every base), trained and probed by the one trait metric
   (:func:`llm_bridge.experiment.probe.margins`);
5. ``projection``: Theorem 1's first-step projections;
6. the tables (:func:`transfer_table`) and the summary.

A setup caches each phase in its run folder (:class:`harness.cache.Store`), under a key of the
config fields the phase reads, a fingerprint of its code, its format version and the keys of the
phases before it: a killed run resumes at the first missing entry (per student where the setup
trains students one at a time). The results record the arms, the random streams
(:mod:`llm_bridge.experiment.seeds`), the phase keys, and each phase's time.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from harness.cache import code_fingerprint
from llm_bridge.experiment import arms as arm_registry
from llm_bridge.experiment.arms import Arm
from llm_bridge.experiment.names import teacher_kind
from theory.stats import mean_ci, nested_mean_ci


@dataclass(frozen=True)
class Unit:
    """One student: an arm, on the numbers of a teacher of base ``base``, with student seed ``seed``."""

    base: int
    arm: Arm
    teacher: str
    seed: int

    def record(self) -> dict:
        return {"base": self.base, "arm": self.arm.name, "teacher": self.teacher, "seed": self.seed}


def resolve_arms(names, setup) -> list[Arm]:
    """The registered arms ``names`` (in that order); a ``ValueError`` naming any the setup cannot run."""
    arms = [arm_registry.get(n) for n in names]
    for arm in arms:
        why = arm.unavailable(setup)
        if why:
            raise ValueError(why)
    return arms


def plan(arms: list[Arm], teachers: list[list[str]], seeds: int) -> list[Unit]:
    """Every student of a run: per base (``teachers[i]``: the names of base i's teachers that sampled
    numbers, in the setup's order), per teacher, per arm whose teacher kinds include the teacher's,
    per seed."""
    return [Unit(i, arm, t, s) for i, names in enumerate(teachers) for t in names for arm in arms
            if teacher_kind(t) in arm.teachers for s in range(seeds)]


def contrast(units: list[Unit], students: list[dict], arm: str, a: str, b: str, context: str, animal: int,
             value: str = "margins") -> np.ndarray:
    """``[bases, seeds]``: per base and seed, ``value`` of ``animal`` (an index) in ``context`` for the arm's
    student on teacher ``a``'s numbers minus the one on teacher ``b``'s (paired by seed)."""
    table = {(u.base, u.teacher, u.seed): s[value][context][animal]
             for u, s in zip(units, students) if u.arm.name == arm}
    bases = sorted({k[0] for k in table})
    seeds = sorted({k[2] for k in table})
    return np.asarray([[table[i, a, s] - table[i, b, s] for s in seeds] for i in bases])


def summary_over_outer(values: np.ndarray) -> dict:
    """The 95% t-CI of a mean over the outer unit of ``values [bases, seeds]`` (students nested within
    bases); over seeds when there is one base (its ``values`` kept)."""
    if values.shape[0] >= 2:
        return nested_mean_ci(values)
    return mean_ci(values[0], keep_values=True)


def transfer_table(units: list[Unit], students: list[dict], pairs: dict, contexts, animals, values) -> dict:
    """Per arm and contrast ``"A - B"`` (``pairs``: name -> (teacher A, teacher B, animal)) and context,
    the paired difference of each of ``values`` (``"margins"``, ``"p"``) of the animal, summarised over
    the outer unit (:func:`summary_over_outer`). Contrasts whose students the run lacks are left out."""
    have = {(u.arm.name, u.teacher) for u in units}
    out: dict = {}
    for arm in dict.fromkeys(u.arm.name for u in units):
        for name, (a, b, animal) in pairs.items():
            if (arm, a) not in have or (arm, b) not in have:
                continue
            i = list(animals).index(animal)
            out.setdefault(arm, {})[name] = {
                c: {f"delta_{v}_{animal}": summary_over_outer(contrast(units, students, arm, a, b, c, i, v))
                    for v in values if v in students[0] and c in students[0][v]}
                for c in contexts}
    return out


class Phases:
    """Times each phase of a run: ``with phases("teachers"): ...``; ``phases.seconds`` in order."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        phases = self

        class _Timer:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                phases.seconds[name] = phases.seconds.get(name, 0.0) + time.perf_counter() - self.t0

        return _Timer()


def run(setup, log=print) -> dict:
    """All phases of ``setup`` (see the module docstring); the JSON-ready results."""
    start = time.perf_counter()
    phases = Phases()
    arms = resolve_arms(setup.cfg.arms, setup)
    for phase in setup.PHASES:  # the code behind every cache key, read now (before any file can change)
        code_fingerprint(*phase.code)
    with phases("prepare"):
        setup.prepare(log)
    with phases("teachers"):
        setup.teachers(log)
    with phases("numbers"):
        sources = setup.numbers(log)
    units = plan(arms, sources, setup.cfg.student_seeds)
    with phases("students"):
        students = setup.students(units, log)
    with phases("projection"):
        projection = setup.projection(log)
    out = {"setup": setup.name, **setup.describe(), "config": asdict(setup.cfg),
           "arms": {a.name: {**asdict(a), "description": a.describe(), "lora_scale": a.lora_scale} for a in arms},
           "students": [u.record() | s for u, s in zip(units, students)],
           "projection": projection, "random_streams": setup.streams.record(), "phase_keys": dict(setup.store.keys)}
    out["transfer"] = transfer_table(units, students, setup.contrasts(), setup.contexts, setup.animals,
                                     setup.values)
    out.update(setup.tables(out))
    out["phase_seconds"] = phases.seconds
    out["wall_seconds"] = time.perf_counter() - start
    out["summary"] = setup.summary(out)
    return out
