"""The chat setup's tables: each student's record, the symmetric contrasts, Holm-adjusted p-values, each
teacher's own lift, the effect relative to it, and the power the design has.

The factor table (``factor_table`` in the results) has one row per arm, teacher kind (fine-tuned,
prompted), decoding and context: ``delta_owl`` (owl-teacher minus dog-teacher students on the owl
margin), ``delta_dog`` (the mirror) and their mean ``delta`` (the trait-specific effect, free of
anything owl and dog numbers share), with a 95% t-CI over the outer unit and its p-value; the p-values
of the primary rows (fine-tuned teachers, the first decoding, the chat context: one per arm) are
Holm-adjusted across arms. The comparisons (``comparisons``) are paired differences of Δ between cells
over the same outer units (:func:`comparisons`): what each published claim is read from
(:func:`llm_bridge.experiment.render.smollm2_claims`).
"""

from __future__ import annotations

import numpy as np

from llm_bridge.experiment import engine
from llm_bridge.experiment.names import FINE_TUNED, PROMPTED, finetuned, prompted, source
from llm_bridge.experiment.probe import column_means, margins, trait_summary
from llm_bridge.experiment.text import CONTEXTS
from theory.stats import detectable_effect, holm, mean_ci, p_value


def student_record(got: dict, animals: list[str]) -> dict:
    """A cached student's per-question probabilities as the engine's record: margins and P per context."""
    lp = {c: np.log(np.maximum(np.asarray(p), 1e-300)) for c, p in got["probs"].items()}
    out = {"margins": {c: margins(v, np).tolist() for c, v in lp.items()},
           "p": {c: column_means(np.asarray(p)).tolist() for c, p in got["probs"].items()},
           "loss": got["loss"], "seconds": got["seconds"]}
    if "named" in got:
        out["named"] = got["named"]
    return out


def _kinds(cfg) -> list[tuple[str, object]]:
    return [(FINE_TUNED, finetuned)] + ([(PROMPTED, prompted)] if cfg.prompted_teachers else [])


def contrasts(cfg) -> dict:
    """Per teacher kind and decoding, ``delta_owl`` and the mirror ``delta_dog`` (engine contrasts)."""
    a, b = cfg.teacher_animals
    out = {}
    for how, name in _kinds(cfg):
        for d in cfg.decodings:
            out[f"{a} - {b} ({how}) [{d}]"] = (source(name(a), d), source(name(b), d), a)
            out[f"{b} - {a} ({how}) [{d}]"] = (source(name(b), d), source(name(a), d), b)
    return out


def _outer(values: np.ndarray) -> np.ndarray:
    """The units a CI is over: the outer-unit means when there are two or more outer units, else the seeds."""
    return values.mean(axis=1) if values.shape[0] >= 2 else values[0]


def _units(out: dict) -> list:
    return [engine.Unit(s["base"], setup_arm(s["arm"]), s["teacher"], s["seed"]) for s in out["students"]]


def _deltas(cfg, units, students, arm: str, name, decoding: str, context: str) -> tuple[np.ndarray, ...]:
    """``(delta_owl, delta_dog, their mean)``, each ``[bases, seeds]``, of the arm's students on the teachers
    ``name(animal)`` (fine-tuned or prompted) at ``decoding`` in ``context``."""
    a, b = cfg.teacher_animals
    ta, tb = source(name(a), decoding), source(name(b), decoding)
    da = engine.contrast(units, students, arm, ta, tb, context, cfg.animals.index(a))
    db = engine.contrast(units, students, arm, tb, ta, context, cfg.animals.index(b))
    return da, db, (da + db) / 2


def _cells(cfg, units) -> list[tuple[str, str, object, str]]:
    """The ``(arm, teacher kind, name, decoding)`` cells the run has students for."""
    a = cfg.teacher_animals[0]
    return [(arm, how, name, d) for arm in cfg.arms for how, name in _kinds(cfg) for d in cfg.decodings
            if any(u.arm.name == arm and u.teacher == source(name(a), d) for u in units)]


def factor_rows(setup, out: dict) -> list[dict]:
    """Every row of the factor table (see the module docstring), p-values unadjusted."""
    cfg, (a, b) = setup.cfg, setup.cfg.teacher_animals
    units = _units(out)
    rows = []
    for arm, how, name, d in _cells(cfg, units):
        for c in CONTEXTS:
            da, db, both = _deltas(cfg, units, out["students"], arm, name, d, c)
            rows.append({"arm": arm, "teachers": how, "decoding": d, "context": c,
                         f"delta_{a}": engine.summary_over_outer(da), f"delta_{b}": engine.summary_over_outer(db),
                         "delta": engine.summary_over_outer(both), "p": p_value(_outer(both)),
                         "outer_units": int(both.shape[0]), "students_per_unit": int(both.shape[1]),
                         "sd_of_units": float(np.std(_outer(both), ddof=1)),
                         "detectable_80": detectable_effect(float(np.std(_outer(both), ddof=1)), _outer(both).size)})
    return rows


REFERENCE_ARM = "full"  # full fine-tuning with Adam: what every other arm is compared with


def comparisons(setup, out: dict) -> list[dict]:
    """Paired differences between cells of the factor table, each of Δ (the mean of Δ_owl and Δ_dog) over the
    same outer units (teacher replicates, or student seeds with one replicate), so that what two cells share
    cancels: every arm minus full-Adam (same teachers, decoding and context: LoRA rank, SGD, ...), greedy
    minus temperature-1 numbers and prompted minus fine-tuned teachers (same arm, chat context), and the
    chat context minus each other context (same students). Unadjusted p (the Holm family is the factor
    table's primary rows)."""
    cfg, units, students = setup.cfg, _units(out), out["students"]
    cells = _cells(cfg, units)
    have = {(arm, how, d) for arm, how, _, d in cells}
    name_of = dict(_kinds(cfg))
    first, kind = cfg.decodings[0], FINE_TUNED
    pairs = []  # (factor, cell A, cell B, context A, context B)
    for arm in cfg.arms:
        if arm != REFERENCE_ARM:
            pairs.append(("arm", (arm, kind, first), (REFERENCE_ARM, kind, first), "chat", "chat"))
        for d in cfg.decodings[1:]:
            pairs.append(("decoding", (arm, kind, d), (arm, kind, first), "chat", "chat"))
        if PROMPTED in name_of:
            pairs.append(("teachers", (arm, PROMPTED, first), (arm, kind, first), "chat", "chat"))
        for c in CONTEXTS[1:]:
            pairs.append(("context", (arm, kind, first), (arm, kind, first), CONTEXTS[0], c))
    rows = []
    for factor, x, y, cx, cy in pairs:
        if x not in have or y not in have:
            continue
        dx = _deltas(cfg, units, students, x[0], name_of[x[1]], x[2], cx)[2]
        dy = _deltas(cfg, units, students, y[0], name_of[y[1]], y[2], cy)[2]
        diff = dx - dy
        rows.append({"factor": factor, "a": {"arm": x[0], "teachers": x[1], "decoding": x[2], "context": cx},
                     "b": {"arm": y[0], "teachers": y[1], "decoding": y[2], "context": cy},
                     "difference": engine.summary_over_outer(diff), "p": p_value(_outer(diff)),
                     "outer_units": int(diff.shape[0]), "students_per_unit": int(diff.shape[1]),
                     "detectable_80": detectable_effect(float(np.std(_outer(diff), ddof=1)), _outer(diff).size)})
    return rows


def setup_arm(name: str):
    from llm_bridge.experiment.arms import get

    return get(name)


def lifts(setup) -> dict:
    """Each teacher's own lift: its margin for its animal minus the base's, per context (mean over replicates)."""
    cfg, animals = setup.cfg, list(setup.cfg.animals)
    base = {c: trait_summary(np.asarray(setup.evals["base"]["probs"][c]), animals, cfg.teacher_animals[0]) for c in CONTEXTS}
    out = {}
    for how, name in _kinds(cfg):
        for animal in cfg.teacher_animals:
            keys = [k for k in setup.evals if k == name(animal) or k.startswith(f"{name(animal)} #")]
            if not keys:
                continue
            out[f"{name(animal)}"] = {c: float(np.mean([
                trait_summary(np.asarray(setup.evals[k]["probs"][c]), animals, animal)[f"margin_{animal}"]
                - trait_summary(np.asarray(setup.evals["base"]["probs"][c]), animals, animal)[f"margin_{animal}"]
                for k in keys])) for c in CONTEXTS}
    return {"base_margin": {c: base[c][f"margin_{cfg.teacher_animals[0]}"] for c in CONTEXTS}, "lift": out}


def tables(setup, out: dict) -> dict:
    """The factor table with Holm-adjusted primary p-values, the teachers' lifts and the effect relative to
    them, each teacher's trait, the sampled answers, and the numbers' pools."""
    cfg = setup.cfg
    rows = factor_rows(setup, out)
    lift = lifts(setup)
    for r in rows:
        teacher_lift = np.mean([lift["lift"][f"{(finetuned if r['teachers'] == FINE_TUNED else prompted)(x)}"][r["context"]]
                                for x in cfg.teacher_animals])
        r["teacher_lift"] = float(teacher_lift)
        r["relative_to_lift"] = float(r["delta"]["mean"] / teacher_lift) if teacher_lift else None
    primary = [r for r in rows if r["teachers"] == FINE_TUNED and r["decoding"] == cfg.decodings[0] and r["context"] == "chat"]
    for r, p in zip(primary, holm([r["p"] for r in primary]) if primary else []):
        r["p_holm"] = p
    animals = list(cfg.animals)
    trait = {name: {c: trait_summary(np.asarray(ev["probs"][c]), animals, cfg.teacher_animals[0]) for c in CONTEXTS}
             for name, ev in setup.evals.items()}
    named = {name: ev["named"] for name, ev in setup.evals.items() if "named" in ev}
    return {"factor_table": rows, "comparisons": comparisons(setup, out),
            "holm_family": "the primary rows: fine-tuned teachers, decoding "
                                                 f"{cfg.decodings[0]!r}, the chat context, one per arm",
            "teacher_lift": lift, "trait": trait, "sampled_answers": named, "numbers": setup.numbers_info,
            "teachers": setup.teacher_info}


def summary(cfg, out: dict) -> str:
    primary = [r for r in out["factor_table"] if "p_holm" in r]
    parts = [f"{r['arm']} {r['delta']['mean']:+.3f} [{r['delta']['ci95'][0]:+.3f}, {r['delta']['ci95'][1]:+.3f}] "
             f"(Holm p {r['p_holm']:.2g})" for r in primary]
    return ("trait transfer delta (owl and dog, mean; fine-tuned teachers, " + cfg.decodings[0] + " numbers, chat): "
            + "; ".join(parts))
