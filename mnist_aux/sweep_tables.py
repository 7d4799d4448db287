"""A sweep's results as markdown: the CLI's summary table and the docs' paired tables.

Pure functions of an assembled sweep (what :func:`mnist_aux.sweeps.run_sweep` returns and
``results/mnist_sweep_<NAME>.json`` holds): :func:`table` is what ``python -m mnist_aux sweep``
prints, one row per (point, student) plus the reconcile sweep's paired factor effects;
:func:`paired_markdown` is a factor sweep's table in docs/mnist_dissect.md, the shared-init student
beside its cross-model control. Nothing here runs a point or reads a cache.
"""

from __future__ import annotations

import math

import numpy as np


def summary_rows(results: dict) -> list[dict]:
    """One row per (point, student): label, init, mean accuracy, 95% CI, theory cosine mean."""
    rows = []
    for p in results["points"]:
        for s in p["students"]:
            a, c = s["accuracy_summary"], s["theory_cosine_summary"]
            rows.append({"point": p["label"], "x": p["x"], "init": s["init"], "lr": s["lr"], "n": a["n"],
                         "mean": a["mean"], "ci95": a["ci95"], "cosine": c["mean"], "cosine_ci95": c["ci95"],
                         "final_loss": float(np.mean(s["final_loss"]))})
    return rows


def _student(point: dict, init: str) -> dict | None:
    return next((s for s in point["students"] if s["init"] == init), None)


def paired_markdown(results: dict) -> str:
    """The docs' table of a sweep whose points pair the shared-init student with its
    cross-model control (docs/mnist_dissect.md): accuracy mean [95% CI] in %, the teachers'
    mean accuracy, the shared student's mean step-0 cosine and each point's CPU minutes; a
    sweep still being computed ends with the points it lacks."""
    name, seeds = results["sweep"], len(results["seeds"])
    cpu = results.get("cpu_seconds_points")
    head = (f"**{results['title']}** (`python -m mnist_aux sweep {name}`, {seeds} seeds per point"
            + (f"; CPU {cpu / 60:.0f} min for its points)" if cpu is not None else ")"))
    lines = [head, "", "| point | shared init | cross-model init | teacher | step-0 cosine, shared | CPU min |",
             "| --- | --- | --- | --- | --- | --- |"]

    def acc(s):
        if s is None:
            return ""
        a = s["accuracy_summary"]
        return f"{100 * a['mean']:.1f} % [{100 * a['ci95'][0]:.1f}, {100 * a['ci95'][1]:.1f}]"

    for p in results["points"]:
        shared, cross = _student(p, "shared"), _student(p, "cross")
        cos = "" if shared is None else shared["theory_cosine_summary"]["mean"]
        if cos != "":  # a zero first update (KL on one logit: its softmax is constant) has no direction
            cos = "undefined (zero update)" if math.isnan(cos) else f"{cos:+.4f}"
        minutes = "" if p.get("cpu_seconds") is None else f"{p['cpu_seconds'] / 60:.1f}"
        lines.append(f"| {p['label']} | {acc(shared)} | {acc(cross)} | {100 * p['teacher_summary']['mean']:.1f} % | "
                     f"{cos} | {minutes} |")
    if results.get("missing_points"):
        lines += ["", f"not yet computed: {'; '.join(results['missing_points'])}"]
    return "\n".join(lines)


def table(results: dict) -> str:
    lines = [f"| point | student | accuracy (mean, {len(results['seeds'])} seeds) | 95% CI | step-0 cosine |",
             "| --- | --- | --- | --- | --- |"]
    for r in summary_rows(results):
        lines.append(f"| {r['point']} | {r['init']} | {r['mean']:.3f} | [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | "
                     f"{r['cosine']:+.4f} |")
    effects = results.get("factor_effects")
    if effects:
        lines += ["", "| factor (shared-init student) | paired accuracy difference, mean over settings | 95% CI | per setting |",
                  "| --- | --- | --- | --- |"]
        for name, e in effects.items():
            m = e["mean_over_settings"]
            per = ", ".join(f"{k} {v['mean']:+.3f}" for k, v in e["by_setting"].items())
            lines.append(f"| {name}: {e['contrast']} | {m['mean']:+.3f} | [{m['ci95'][0]:+.3f}, {m['ci95'][1]:+.3f}] | {per} |")
    return "\n".join(lines)
