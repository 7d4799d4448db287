"""LM experiment figures, registered with paper_figs.py; both drawn from results/llm_trait_transfer.json.

``llm_projection_vs_samples``
    bootstrap probability that the hard-label student's step has a positive projection on
    the owl teacher's ``dtheta_T``, against the number of teacher sequences: shared init,
    cross-model and the base-number control, one thin line per pretrained base and their
    mean (Theorem 1 on a transformer LM).
``llm_trait_transfer``
    owl margin of the students trained on owl-teacher and dog-teacher numbers, for shared
    init (fine-tuned and prompted teachers), cross-model and the soft-label students: bars
    are means over bases, error bars the 95% CI over bases (students nested within bases),
    dots the per-base means; the controls as bands.

Both come from one run of :func:`llm_bridge.tiny.run` (the default preset; the smoke preset
with ``--quick``).
"""

from __future__ import annotations

import numpy as np

from llm_bridge import arms, tiny
from theory.figures import Figure  # one registry record for every package's figures
from theory.stats import caption

RESULTS = "llm_trait_transfer"


def compute(quick: bool) -> dict:
    from theory import results

    out = tiny.run(tiny.smoke() if quick else tiny.paper(), tiny.cache_dir_from_env())
    out["provenance"] = results.provenance("python paper_figs.py --only llm_trait_transfer" + (" --quick" if quick else ""))
    return out


def plot_projection_vs_samples(results: dict, ax) -> None:
    owl = arms.finetuned(results["config"]["animals"][0])
    per_base = results["per_base"]
    for (label, style), color in zip(((arms.P_SHARED, "o-"), (arms.P_CROSS, "s--"), (arms.P_CONTROL, "^:")),
                                     ("C0", "C1", "C2")):
        rows = [b["projection"][owl][label] for b in per_base]
        grid = rows[0]["grid"]
        curves = np.asarray([r["p_positive"] for r in rows])
        for c in curves:
            ax.semilogx(grid, c, "-", color=color, lw=0.6, alpha=0.35)
        z = results["projection_over_bases"][owl][label]["z"]
        ax.semilogx(grid, curves.mean(0), style, color=color,
                    label=f"{label} (z {z['mean']:.1f} [{z['ci95'][0]:.1f}, {z['ci95'][1]:.1f}] at n = {rows[0]['n']})")
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("number of teacher sequences n")
    ax.set_ylabel("P(mean projection on dθ_T > 0)  (bootstrap)")
    ax.set_title(f"Hard-label student's step vs {owl} teacher's step, {len(per_base)} tiny LMs\n"
                 f"(thin: each base; thick: mean; z: mean over bases, 95% CI over bases)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, which="major", alpha=0.3)


def plot_trait_transfer(results: dict, ax) -> None:
    animals = results["config"]["animals"]
    t, o = results["transfer"], animals[0]
    groups = [(arms.transfer(arms.SHARED, "fine-tuned"), "shared init\nfine-tuned teacher"),
              (arms.transfer(arms.SHARED, "prompt"), "shared init\nprompted teacher"),
              (arms.transfer(arms.CROSS, "fine-tuned"), "cross-model\nfine-tuned teacher")]
    soft = arms.transfer(arms.SOFT, "fine-tuned")
    if soft in t:
        groups.append((soft, "shared init, soft labels\n(number tokens)"))
    width = 0.38
    for j, (teacher, color) in enumerate(((o, "C0"), (animals[1], "C1"))):
        key = f"margin_{o}({teacher}-teacher)"
        x = np.arange(len(groups)) + (j - 0.5) * width
        means = [t[g][key]["mean"] for g, _ in groups]
        err = np.asarray([[t[g][key]["mean"] - t[g][key]["ci95"][0], t[g][key]["ci95"][1] - t[g][key]["mean"]]
                          for g, _ in groups]).T
        ax.bar(x, means, width, yerr=err, capsize=3, color=color, alpha=0.8,
               label=f"students of the {teacher} teacher")
        for xi, (g, _) in zip(x, groups):
            per = t[g][key]["per_outer"]
            ax.scatter(np.full(len(per), xi), per, s=9, color="k", zorder=3)
    c = t[f"{arms.SHARED} control"][f"margin_{o}"]
    ax.axhspan(*c["ci95"], color="grey", alpha=0.25, label="control (base numbers), 95% CI over bases")
    ax.axhline(c["mean"], color="grey", lw=1)
    if soft in t:
        cs = t[f"{arms.SOFT} control"][f"margin_{o}"]
        x = len(groups) - 1
        ax.fill_between([x - width, x + width], *cs["ci95"], color="k", alpha=0.15, lw=0)
        ax.hlines(cs["mean"], x - width, x + width, colors="k", linestyles=":",
                  label="soft control (base as soft teacher)")
    ax.set_xticks(range(len(groups)), [g[1] for g in groups], fontsize=8)
    ax.set_ylabel(f"{o} margin (nats): logit_{o} − mean other animals")
    first = t[groups[0][0]][f"margin_{o}({o}-teacher)"]
    ax.set_title(f"Trait transfer through numbers; dots: per-base means of {first['inner_n']} students;\n"
                 f"{caption(first['n'], 'pretrained bases')}", fontsize=9)
    ax.legend(fontsize=7)


FIGURES = [
    Figure("llm_projection_vs_samples", compute, plot_projection_vs_samples, results_name=RESULTS),
    Figure("llm_trait_transfer", compute, plot_trait_transfer, (7.0, 4.4)),
]
