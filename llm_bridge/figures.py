"""LM experiment figures, registered with paper_figs.py.

``llm_projection_vs_samples``
    bootstrap probability that the hard-label student's step has a positive projection on
    the owl teacher's ``dtheta_T``, against the number of teacher sequences: shared init,
    cross-model and the base-number control (Theorem 1 on a transformer LM).
``llm_trait_transfer``
    owl margin of the students (95% CIs over student seeds) trained on owl-teacher and
    dog-teacher numbers, for shared init (fine-tuned and prompted teachers), cross-model,
    the soft-label students (number tokens, shared init; where the results have them), and
    the controls.

Both come from one run of :func:`llm_bridge.experiment.run` (the tiny default; the smoke
preset with ``--quick``), computed once per process.
"""

from __future__ import annotations

import functools

import numpy as np

from llm_bridge import experiment
from theory.figures import Figure  # one registry record for every package's figures


@functools.cache
def _run(quick: bool) -> dict:
    return experiment.run(experiment.smoke() if quick else experiment.paper(), experiment.cache_dir_from_env())


def compute(quick: bool) -> dict:
    return _run(quick)


def plot_projection_vs_samples(results: dict, ax) -> None:
    owl = f"{results['config']['animals'][0]} (fine-tuned)"
    rows = results["projection"][owl]
    for label, style in (("shared", "o-"), ("cross-model", "s--"), ("control (base numbers)", "^:")):
        r = rows[label]
        ax.semilogx(r["grid"], r["p_positive"], style, label=f"{label} (z = {r['z']:.1f} at n = {r['n']})")
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("number of teacher sequences n")
    ax.set_ylabel("P(mean projection on dθ_T > 0)  (bootstrap)")
    ax.set_title(f"Hard-label student's step vs {owl} teacher's step (tiny LM)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, which="major", alpha=0.3)


def plot_trait_transfer(results: dict, ax) -> None:
    animals = results["config"]["animals"]
    t, o = results["transfer"], animals[0]
    groups = [("shared, fine-tuned", "shared init\nfine-tuned teacher"),
              ("shared, prompt", "shared init\nprompted teacher"),
              ("cross, fine-tuned", "cross-model\nfine-tuned teacher")]
    soft = f"{experiment.SOFT}, fine-tuned"
    if soft in t:  # results written before the soft-label arm existed have none
        groups.append((soft, "shared init, soft labels\n(number tokens)"))
    width = 0.38
    for j, (teacher, color) in enumerate(((o, "C0"), (animals[1], "C1"))):
        key = f"margin_{o}({teacher}-teacher)"
        means = [t[g][key]["mean"] for g, _ in groups]
        err = np.asarray([[t[g][key]["mean"] - t[g][key]["lo"], t[g][key]["hi"] - t[g][key]["mean"]] for g, _ in groups]).T
        ax.bar(np.arange(len(groups)) + (j - 0.5) * width, means, width, yerr=err, capsize=3, color=color,
               label=f"students of the {teacher} teacher")
    c = t["control"][f"margin_{o}"]
    ax.axhspan(c["lo"], c["hi"], color="grey", alpha=0.25, label="control (base numbers), 95% CI")
    ax.axhline(c["mean"], color="grey", lw=1)
    if soft in t:
        cs = t[f"{experiment.SOFT} control"][f"margin_{o}"]
        x = len(groups) - 1
        ax.fill_between([x - width, x + width], cs["lo"], cs["hi"], color="k", alpha=0.15, lw=0)
        ax.hlines(cs["mean"], x - width, x + width, colors="k", linestyles=":",
                  label="soft control (base as soft teacher), 95% CI")
    ax.set_xticks(range(len(groups)), [g[1] for g in groups], fontsize=8)
    ax.set_ylabel(f"{o} margin (nats): logit_{o} − mean other animals")
    n = len(t[groups[0][0]][f"margin_{o}({o}-teacher)"]["values"])
    ax.set_title(f"Trait transfer through numbers; error bars: 95% CI over {n} student seeds", fontsize=9)
    ax.legend(fontsize=7)


FIGURES = [
    Figure("llm_projection_vs_samples", compute, plot_projection_vs_samples),
    Figure("llm_trait_transfer", compute, plot_trait_transfer, (7.0, 4.4)),
]
