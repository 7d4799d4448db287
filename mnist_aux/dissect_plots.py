"""The MNIST dissection's figures, drawn: ``plot_*(results)`` returns the whole matplotlib figure.

Drawing only (the figure records, the runs that fill them and the caches they resume from are
:mod:`mnist_aux.dissect_figures`'): :func:`plot_sweep` draws a sweep in its kind of figure
(:attr:`mnist_aux.sweeps.Sweep.plot`: the reconciliation bars beside the SGD tuning curves,
accuracy and Theorem 1's step-0 cosine along a swept value, or one bar group per point),
:func:`plot_alignment` the alignment of the student's updates over training with each
intervention's accuracy, :func:`plot_peers` every public number beside ours. Every figure puts one
legend under its panels, never over data, and its caption under the legend: what the error bars
are and the command that computed the numbers.
"""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mnist_aux.sweeps import SWEEPS  # noqa: E402
from theory import stats  # noqa: E402

CHANCE = 0.1
ROLE_STYLE = {"student": ("C4", "shared init: the teacher's θ0 (or the point's init)"),
              "cross": ("C7", "cross-model init: another seed's θ0")}


def _role(init: str) -> str:
    return "cross" if init == "cross" else "student"


def _err(summary: dict) -> tuple[float, list[list[float]]]:
    m = summary["mean"]
    return m, [[m - summary["ci95"][0]], [summary["ci95"][1] - m]]


def _accuracy_label(results: dict) -> str:
    aux = all(p.get("distill", {}).get("logits", "aux") == "aux" for p in results["points"])
    return "student test accuracy" + (" (aux-only)" if aux else "\n(aux-only unless the point says all logits)")


def _legend_and_caption(fig, handles_from, caption: str, ncol: int = 3) -> None:
    """One legend for every panel, under the panels (never over data), and the caption under it."""
    handles, labels = handles_from.get_legend_handles_labels()
    legend = fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(ncol, len(handles)),
                        fontsize=8, frameon=False)
    fig.draw_without_rendering()  # the legend's height is known only once it is laid out
    bottom = legend.get_window_extent().transformed(fig.transFigure.inverted()).y0
    fig.text(0.5, bottom - 0.01, caption, ha="center", va="top", fontsize=8, wrap=True)


def _caption(results: dict) -> str:
    n = sorted({s["accuracy_summary"]["n"] for p in results["points"] for s in p["students"]})
    bars = stats.caption(n[0]) if len(n) == 1 else f"error bars: 95% CI of the mean over {n[0]}-{n[-1]} seeds (Student's t)"
    missing = results.get("missing_points")
    todo = f" Not yet computed: {'; '.join(missing)}." if missing else ""
    return (f"{bars}. Preset {results['preset']}.{todo} "
            f"Command: {results.get('command') or 'python -m mnist_aux sweep ' + results['sweep']}")


def plot_reconcile(results: dict) -> plt.Figure:
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(15, 5.4), gridspec_kw={"width_ratios": [1.6, 1]})
    points = results["points"]
    for i, p in enumerate(points):
        for j, s in enumerate(p["students"]):
            role = _role(s["init"])
            m, e = _err(s["accuracy_summary"])
            ax.bar(i + (j - 0.5) * 0.38, m, 0.36, yerr=e, capsize=3, color=ROLE_STYLE[role][0],
                   alpha=1.0 if role == "student" else 0.5, label=ROLE_STYLE[role][1] if i == 0 else None)
            if role == "student":
                ax.text(i + (j - 0.5) * 0.38, e[1][0] + m + 0.01, f"{m:.0%}", ha="center", fontsize=7)
    labels = []
    for p in points:
        lr = p["students"][0]["lr"]
        labels.append(p["label"].replace(" / ", "\n") + f"\nlr {lr:.3g}")
    ax.set_xticks(range(len(points)), labels, fontsize=7)
    ax.axhline(CHANCE, ls=":", c="black", label="chance")
    ax.set_ylabel("student test accuracy (aux-only distillation)")
    ax.set_ylim(0, max(1.0, ax.get_ylim()[1]))
    ax.legend(fontsize=8)
    ax.yaxis.grid(True, alpha=0.3)
    ax.set_title("loss / reduction / optimizer (SGD: rate tuned on the distillation loss)")
    effects = results.get("factor_effects", {})
    if effects:
        from mnist_aux.render import points  # the README's rounding rule for differences of proportions

        text = ("paired effect on the shared-init student, in percentage points\n(mean over the other settings, "
                "95% CI):\n" + "\n".join(f"{name} {e['contrast']}: {points(e['mean_over_settings'])}"
                                         for name, e in effects.items()))
        ax.text(0.01, 0.98, text, transform=ax.transAxes, va="top", fontsize=7.5,
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"})
    # right: SGD tuning curves
    for k, (cell, t) in enumerate(sorted(results["sgd_tuning"].items())):
        grid, loss = np.asarray(t["grid"]), np.asarray(t["mean_final_loss"])
        ok = np.isfinite(loss)
        rel = loss[ok] / loss[ok].min()
        scale = 1.0 if cell.endswith("/mean") else 1.0 / results["base_config"]["batch_size"]
        batchmean = cell.endswith("batchmean")
        ax2.plot(grid[ok] / scale, rel, "x--" if batchmean else "o-", color=f"C{k // 2}", ms=8 if batchmean else 5,
                 label=f"{cell} (chosen {t['chosen']:.3g})")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("SGD rate (batchmean rates x batch size)")
    ax2.set_ylabel("final distillation loss / best")
    ax2.set_title(f"SGD tuning on seeds {results['sgd_tuning'][next(iter(results['sgd_tuning']))]['seeds']}")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.text(0.5, -0.02, _caption(results), ha="center", va="top", fontsize=8, wrap=True)
    return fig


SERIES_STYLE = ("o-", "s--", "^-.", "D:")  # a sweep's series (e.g. KL and MSE): one line style each


def plot_line_sweep(results: dict) -> plt.Figure:
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    series = list(dict.fromkeys(p.get("series", "") for p in results["points"]))
    no_direction = []  # points whose first update is zero (KL on one logit: its softmax is constant)
    for (role, (color, role_label)), (si, name) in ((r, s) for r in ROLE_STYLE.items() for s in enumerate(series)):
        label = f"{role_label}, {name}" if name else role_label
        xs, acc, cos = [], [], []
        for p in results["points"]:
            if p.get("series", "") != name:
                continue
            for s in p["students"]:
                if _role(s["init"]) == role:
                    xs.append(float(p["x"]))
                    acc.append(_err(s["accuracy_summary"]))
                    cos.append(_err(s["theory_cosine_summary"]))
                    if not np.isfinite(s["theory_cosine_summary"]["mean"]) and p["label"] not in no_direction:
                        no_direction.append(p["label"])
        if not xs:
            continue
        if len(xs) == 1:  # one point of this role (the sigma sweep's cross-model student): a reference band
            m, e = acc[0]
            ax.axhspan(m - e[0][0], m + e[1][0], color=color, alpha=0.25, label=f"{label} (one point: its 95% CI band)")
            m, e = cos[0]
            ax2.axhspan(m - e[0][0], m + e[1][0], color=color, alpha=0.25)
            continue
        for a, data in ((ax, acc), (ax2, cos)):
            a.errorbar(xs, [d[0] for d in data], yerr=np.hstack([d[1] for d in data]), fmt=SERIES_STYLE[si % 4],
                       color=color, capsize=3, label=label)
    ax.axhline(CHANCE, ls=":", c="black", label="chance (10%)")
    ax2.axhline(0, c="black", lw=0.8)
    ticks = list(dict.fromkeys(p["x"] for p in results["points"]))
    for a in (ax, ax2):
        a.set_xlabel(results["x_label"])
        if SWEEPS[results["sweep"]].scale == "log2":
            a.set_xscale("log", base=2)
            a.set_xticks([float(x) for x in ticks], [str(x) for x in ticks])
        elif all(float(x).is_integer() for x in ticks):  # counts (layers): no 1.5 tick
            a.set_xticks([float(x) for x in ticks], [str(int(float(x))) for x in ticks])
        a.grid(True, alpha=0.3)
    if no_direction:
        ax2.text(0.02, 0.98, textwrap.fill(f"no cosine at {', '.join(no_direction)}: the student's first update is "
                                            "zero there (a softmax over one logit is constant), so it has no "
                                            "direction", 60), transform=ax2.transAxes, fontsize=7, va="top",
                 color="0.3")
    ax.set_ylabel(_accuracy_label(results))
    ax2.set_ylabel("step-0 cosine(student update, θ_T − θ_0)")
    ax.set_title(f"sweep: {results['title']}")
    ax2.set_title("Theorem 1's leading order at each student's init")
    fig.tight_layout()
    _legend_and_caption(fig, ax, _caption(results))
    return fig


def plot_bar_sweep(results: dict) -> plt.Figure:
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    labels, top = [], 0.0
    for i, p in enumerate(results["points"]):
        labels.append(p["label"])
        k = len(p["students"])
        for j, s in enumerate(p["students"]):
            role = _role(s["init"])
            off = (j - (k - 1) / 2) * 0.38
            for a, summ in ((ax, s["accuracy_summary"]), (ax2, s["theory_cosine_summary"])):
                m, e = _err(summ)
                a.bar(i + off, m, 0.36, yerr=e, capsize=3, color=ROLE_STYLE[role][0],
                      alpha=1.0 if role == "student" else 0.5, label=ROLE_STYLE[role][1] if (i == 0 and a is ax) else None)
            if role == "student":
                m, e = _err(s["accuracy_summary"])
                ax.text(i + off, m + e[1][0] + 0.01, f"{m:.0%}", ha="center", fontsize=7)
                top = max(top, m + e[1][0])
    few = len(labels) <= 3  # few long labels read better wrapped and level than rotated
    for a in (ax, ax2):
        if few:
            a.set_xticks(range(len(labels)), [textwrap.fill(t, 26) for t in labels], fontsize=8)
        else:
            a.set_xticks(range(len(labels)), labels, rotation=25, ha="right", fontsize=8)
        a.yaxis.grid(True, alpha=0.3)
    ax.set_ylim(0, max(ax.get_ylim()[1], top + 0.07))  # room for the percentages above the bars
    ax.axhline(CHANCE, ls=":", c="black", label="chance (10%)")
    ax2.axhline(0, c="black", lw=0.8)
    ax.set_ylabel(_accuracy_label(results))
    ax2.set_ylabel("step-0 cosine(student update, θ_T − θ_0)")
    ax.set_title(f"sweep: {results['title']}")
    ax2.set_title("Theorem 1's leading order at each student's init")
    fig.tight_layout()
    _legend_and_caption(fig, ax, _caption(results).replace("error bars:", "bars: mean; percentages: the "
                                                           "shared-init student's mean; error bars:", 1))
    return fig


def plot_sweep(results: dict) -> plt.Figure:
    """A sweep's figure, of its kind (:attr:`mnist_aux.sweeps.Sweep.plot`)."""
    kind = SWEEPS[results["sweep"]].plot
    return {"reconcile": plot_reconcile, "line": plot_line_sweep, "bar": plot_bar_sweep}[kind](results)


def _band(ax, steps, values, color, label):
    v = np.asarray(values)
    m, half = v.mean(axis=0), stats.half_width(v, axis=0)
    ax.plot(steps, m, color=color, label=label, lw=1.2)
    ax.fill_between(steps, m - half, m + half, color=color, alpha=0.2)


def plot_alignment(results: dict) -> plt.Figure:
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    arms = results["arms"]
    for k, arm in enumerate(arms):
        r = results["results"][arm]
        steps, color = r["logged_steps"], f"C{k}"
        _band(axes[0, 0], steps, r["series"]["cos_trait"], color, r["label"])
        _band(axes[0, 1], steps, r["series"]["cos_disp"], color, r["label"])
        _band(axes[1, 0], steps, r["series"]["kl"], color, r["label"])
        acc = np.asarray(r["accuracy_by_epoch"])
        m = acc.mean(axis=0)
        axes[1, 1].errorbar(np.arange(acc.shape[1]) + 0.04 * (k - 1.5), m, yerr=stats.half_width(acc, axis=0),
                            fmt="o-", color=color, capsize=3, label=f"{r['label']}: {m[-1]:.0%}")
    axes[0, 0].set_title("cosine(step's update, −∇ digit CE at the current student)")
    axes[0, 1].set_title("cosine(step's update, θ_T − θ_0)")
    axes[1, 0].set_title("aux-only distillation loss (KL) per step")
    axes[1, 0].set_yscale("log")
    axes[1, 1].set_title("digit test accuracy after each epoch (legend: after the last)")
    axes[1, 1].axhline(CHANCE, ls=":", c="black", label="chance (10%)")
    for a, series in ((axes[0, 0], "cos_trait"), (axes[0, 1], "cos_disp")):
        a.axhline(0, c="black", lw=0.8)
        a.set_ylabel("cosine (mean over seeds)")
        # an arm projected off this very direction has cosine 0 at every step: its line hides under the axis
        flat = [results["results"][arm]["label"] for arm in arms
                if np.allclose(np.asarray(results["results"][arm]["series"][series]), 0.0, atol=1e-6)]
        if flat:
            a.text(0.99, 0.01, f"on the 0 line by construction: {'; '.join(flat)}", transform=a.transAxes,
                   ha="right", va="bottom", fontsize=7, color="0.3")
    axes[1, 0].set_ylabel("KL on the aux logits (mean over seeds)")
    axes[1, 1].set_ylabel("digit test accuracy")
    for a in axes.flat:
        a.grid(True, alpha=0.3)
    axes[1, 1].legend(fontsize=7, loc="upper left")
    for a in (axes[0, 0], axes[0, 1], axes[1, 0]):
        a.set_xlabel("distillation step")
    axes[1, 1].set_xlabel("epoch")
    fig.tight_layout()
    n = len(results["seeds"])
    _legend_and_caption(fig, axes[0, 0], f"{n} seeds, preset {results.get('preset', '?')}; bands and "
                        f"{stats.caption(n)}. Trait gradient on the {results['probe']}; liminal: the student is also "
                        f"pulled towards its own starting outputs in epoch 1 (KL, weight {results['liminal_weight']}). "
                        f"Command: {results.get('command', 'python -m mnist_aux align')}", ncol=4)
    return fig


def _peer_label(r: dict) -> str:
    """A row's label in full: source, arm, and the setting wrapped (never cut)."""
    return "\n".join([r["source"], *textwrap.wrap(f"{r['arm']}; {r['setting']}", 58)])


def plot_peers(table: dict) -> plt.Figure:
    rows = table["rows"]
    labels = [_peer_label(r) for r in rows]
    height = [0.12 * (lab.count("\n") + 1) + 0.22 for lab in labels]  # inches per row: its label's lines
    y_of = np.cumsum(height[::-1]) - np.asarray(height[::-1]) / 2  # first row on top
    y_of = y_of[::-1]
    fig, ax = plt.subplots(figsize=(11, sum(height) + 2.2))
    styles = {"C4": "ours, shared init: mean, 95% CI", "C7": "ours, cross-model / different init: mean, 95% CI"}
    seen = set()
    for r, y in zip(rows, y_of):
        s = r["ours_summary"]
        color = "C4" if "cross" not in r["arm"] and "different" not in r["arm"] else "C7"
        ax.errorbar(s["mean"], y - 0.12, xerr=[[s["mean"] - s["ci95"][0]], [s["ci95"][1] - s["mean"]]], fmt="o",
                    color=color, capsize=3, label=styles[color] if color not in seen else None)
        seen.add(color)
        if r["value"] is not None:
            err = None if r["spread"] is None else [[r["spread"]], [r["spread"]]]
            ax.errorbar(r["value"], y + 0.12, xerr=err, fmt="s", color="black", mfc="white", capsize=3,
                        label="theirs: as reported (± their spread, where they give one)" if "theirs" not in seen
                        else None)
            seen.add("theirs")
        else:  # a setting we run without a single number of theirs to put beside it
            ax.text(0.5, y + 0.12, "theirs: no single number quoted here (their setting sweeps m from 3 to 250)",
                    ha="center", va="center", fontsize=7, color="0.35", style="italic")
    ax.set_yticks(y_of, labels, fontsize=6.5)
    ax.set_ylim(0, sum(height))
    ax.axvline(CHANCE, ls=":", c="black", label="chance (10%)")
    ax.set_xlim(0, 1)
    ax.set_xlabel("student test accuracy")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title("Public MNIST aux-logit numbers beside ours at the closest setting")
    fig.tight_layout()
    _legend_and_caption(fig, ax, "Ours: " + table["ci"] + "; settings and gaps in docs/mnist_dissect.md (peer table). "
                        f"Computed by: {table.get('command', 'python -m mnist_aux peers')} (from the results files it "
                        "quotes); python paper_figs.py --only mnist_peers only redraws it.", ncol=2)
    return fig
