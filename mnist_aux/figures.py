"""The MNIST figures' one registry (:data:`FIGURES`, read by paper_figs.py), and Figure 10's plot.

``mnist_aux_fig10``, the paper's Figure 10, is drawn here; the dissection's figures (the sweeps,
the alignment, the peer table) in :mod:`mnist_aux.dissect_figures`, which never imports this module.
Every entry is a :class:`~mnist_aux.dissect_figures.PanelFigure` (``harness.figures.Figure``).

Figure 10, left: the six arms' mean test accuracy with 95% CIs over seeds and the chance line, as
in the paper. Middle: every seed's accuracy (strip plot). Right: the theory link, each
seed's cosine between a student's first distillation update and the teacher's
displacement ``theta_T - theta_0`` (Theorem 1: positive for the shared-init student).
Plotting reads only the results dict (``python -m mnist_aux run`` writes the same format).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mnist_aux import dissect_figures  # noqa: E402
from mnist_aux.dissect_figures import PanelFigure  # noqa: E402
from mnist_aux.sweeps import SWEEPS  # noqa: E402
from theory import stats  # noqa: E402

CHANCE = 0.1
COLORS = {"reference": "gray", "teacher": "C5", "student_aux": "C4", "student_all": "C4",
          "cross_aux": "C4", "cross_all": "C4"}
FADED = ("cross_aux", "cross_all")  # the paper draws the cross-model bars lighter
COSINES = ("student_aux", "cross_aux", "student_all", "cross_all")  # panel order (JSON sorts dict keys)


def plot_bars(results: dict, ax) -> None:
    """Mean test accuracy per arm with 95% CI error bars, chance line at 10%."""
    arms = results["arms"]
    means = np.array([results["summary"][a]["mean"] for a in arms])
    lo = np.array([results["summary"][a]["ci95"][0] for a in arms])
    hi = np.array([results["summary"][a]["ci95"][1] for a in arms])
    bars = ax.bar(range(len(arms)), means, yerr=[means - lo, hi - means], capsize=4,
                  color=[COLORS[a] for a in arms], label="mean, 95% CI")
    for bar, arm in zip(bars, arms):
        if arm in FADED:
            bar.set_alpha(0.45)
    for x, (m, top) in enumerate(zip(means, hi)):
        ax.text(x, top + 0.015, f"{m:.1%}", ha="center", va="bottom", fontsize=8)
    ax.axhline(CHANCE, ls=":", c="black", label="chance (10%)")
    ax.set_xticks(range(len(arms)), [results["arm_labels"][a] for a in arms], rotation=40, ha="right")
    ax.set_ylabel("test accuracy (fraction correct)")
    ax.set_ylim(0, 1.05)
    ax.yaxis.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"Figure 10: mean over {len(results['seeds'])} seeds")


def plot_strip(results: dict, ax) -> None:
    """Every seed's test accuracy per arm (jittered), with the mean as a black bar."""
    arms = results["arms"]
    rng = np.random.default_rng(0)  # jitter only; fixed so the file is deterministic
    for x, arm in enumerate(arms):
        v = np.asarray(results["accuracy"][arm])
        ax.scatter(x + rng.uniform(-0.25, 0.25, v.size), v, s=8, alpha=0.6, color=COLORS[arm], linewidths=0)
        ax.hlines(v.mean(), x - 0.3, x + 0.3, color="black", lw=1.5)
    ax.axhline(CHANCE, ls=":", c="black")
    ax.set_xticks(range(len(arms)), [results["arm_labels"][a] for a in arms], rotation=40, ha="right")
    ax.set_ylabel("test accuracy (fraction correct)")
    ax.set_ylim(0, 1.05)
    ax.yaxis.grid(True, alpha=0.3)
    ax.set_title("per seed (black: mean)")


def plot_cosines(results: dict, ax) -> None:
    """Per-seed cosine(first student update, theta_T - theta_0), shared vs cross-model init."""
    names = [n for n in COSINES if n in results["theory_cosine"]]
    rng = np.random.default_rng(1)
    for x, name in enumerate(names):
        v = np.asarray(results["theory_cosine"][name])
        ax.scatter(x + rng.uniform(-0.25, 0.25, v.size), v, s=8, alpha=0.6,
                   color="C4" if name.startswith("student") else "C7", linewidths=0)
        s = results["theory_cosine_summary"][name]
        ax.errorbar(x, s["mean"], yerr=[[s["mean"] - s["ci95"][0]], [s["ci95"][1] - s["mean"]]],
                    fmt="_", color="black", capsize=4, ms=14)
    ax.axhline(0, c="black", lw=0.8)
    ax.set_xticks(range(len(names)), [results["theory_cosine_labels"][n] for n in names], rotation=40, ha="right")
    ax.set_ylabel("cosine(first student update, θ_T − θ_0)")
    ax.yaxis.grid(True, alpha=0.3)
    ax.set_title("theory link at step 0 (black: mean, 95% CI)")


def caption(results: dict) -> str:
    """Seed count, what the error bars are, and which data produced the figure."""
    src = results.get("data", {})
    data = f"{src.get('dataset', '?')} from {src.get('origin', '?')} ({src.get('dir', '')})"
    if src.get("note"):
        data += f"; {src['note']}"
    n = len(results["seeds"])
    bars = stats.caption(n)
    return f"{bars[0].upper()}{bars[1:]}. Preset {results.get('preset', '?')}. Data: {data}."


def plot_fig10(results: dict) -> plt.Figure:
    """The three panels and the caption as one matplotlib Figure."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.2), gridspec_kw={"width_ratios": [1.1, 1.1, 0.9]})
    plot_bars(results, axes[0])
    plot_strip(results, axes[1])
    plot_cosines(results, axes[2])
    fig.tight_layout()
    fig.text(0.5, -0.02, caption(results), ha="center", va="top", fontsize=8, wrap=True)
    return fig


def compute_fig10(quick: bool, results_dir: Path) -> dict:
    """Figure 10's run: the paper preset at 100 seeds, or for ``quick`` the smoke preset at 8."""
    from mnist_aux import data, experiment
    from mnist_aux.configs import paper, smoke

    preset, n = ("smoke", 8) if quick else ("paper", 100)
    cfg = (smoke if quick else paper)()
    dataset = data.load(cfg.dataset)  # --data-dir's place: $SUBLIMINAL_MNIST_DIR, then the usual search
    results = experiment.run(cfg, range(n), dataset,
                             command="python paper_figs.py --only mnist_aux_fig10" + (" --quick" if quick else ""))
    results["preset"] = preset
    return results


# minutes: 100 seeds / the smoke preset's 8, on 2 CPU cores
FIG10 = PanelFigure("mnist_aux_fig10", compute_fig10, plot_fig10, minutes=(50.0, 0.5))
FIGURES = [FIG10, *(dissect_figures.sweep_figure(name) for name in SWEEPS), dissect_figures.alignment_figure()]
# the peer table computes a file it quotes that is missing as that file's figure above computes it
FIGURES.append(dissect_figures.peers_figure(lambda stem: next(f for f in FIGURES if f.results == stem)))
