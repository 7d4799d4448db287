"""The README rows of the theory results, rendered from their results files (:mod:`harness.render`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from harness.render import num

CMD_FIGURES = "`python paper_figs.py --only {} --recompute`"


def _load(results_dir: Path, stem: str) -> dict:
    return json.loads((Path(results_dir) / f"{stem}.json").read_text())


def convergence_slopes(results: dict, lo: float = 1e-6, hi: float = 1e-1) -> np.ndarray:
    """Per network, the least-squares slope of log relative error against log eps over ``[lo, hi]``."""
    eps = np.asarray(results["config"]["eps"])
    keep = (eps >= lo) & (eps <= hi)
    return np.asarray([np.polyfit(np.log(eps[keep]), np.log(np.asarray(r["rel_error"])[keep]), 1)[0]
                       for rows in results["families"].values() for r in rows])


def readme_rows(results_dir: Path) -> str:
    """The theory rows of the README's results table."""
    conv = _load(results_dir, "theorem1_convergence")
    slopes = convergence_slopes(conv)
    n_nets = conv["config"]["n_nets"]
    init = _load(results_dir, "theorem1_shared_vs_different_init")
    s, n = init["summary"], init["config"]["n_draws"]
    count = lambda c: round(s[c]["frac_positive"] * n)
    sigmas = [c for c in s if c.startswith("σ")]
    demo = _load(results_dir, "theorem1_demo")
    sh, df = demo["shared"], demo["different"]
    return "\n".join([
        f"| Lemma 1 is first order: slope of log \\|(dθ_S·dθ_T)/ε − A\\|/A against log ε, ε ∈ [1e-6, 1e-1] | "
        f"{num(slopes.min(), 3)} – {num(slopes.max(), 3)} on {len(slopes)} random smooth MLPs "
        f"({len(conv['families'])} loss families × {n_nets} nets) | {CMD_FIGURES.format('theorem1_convergence')} |",
        f"| shared init: cos(dθ_S, dθ_T) > 0 / independent init | {count('shared init')} / {n} random networks "
        f"(median cosine {num(s['shared init']['median'], 2)}) / {count('independent init')} / {n} (median "
        f"{num(s['independent init']['median'], 2)}) | {CMD_FIGURES.format('theorem1_shared_vs_different_init')} |",
        f"| init θ0 + σ·std·noise, teacher step ε = {init['config']['eps']:g}: fraction with cos > 0 | "
        + ", ".join(f"{c}: {100 * s[c]['frac_positive']:.0f} %" for c in sigmas) + " | same |",
        f"| two-parameter demo: dθ_S·dθ_T of the shared-init / different-init student | {num(sh['inner'], 2, True)} "
        f"(ε·A = {num(sh['eps_A'], 2)}, L_T {num(sh['L_T_init'], 3)} → {num(sh['L_T_after_small_step'], 3)}) / "
        f"{num(df['inner'], 2, True)} (L_T {num(df['L_T_init'], 4)} → {num(df['L_T_after_small_step'], 4)}) | "
        "`python -m theory.demo` |",
    ])
