"""The MNIST figures are registered and plot a results dict without computing."""

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import REPO, dicts_where

import paper_figs
from mnist_aux import experiment
from mnist_aux.figures import FIGURES, caption
from mnist_aux.sweeps import SWEEPS
from theory import stats
from theory.stats import mean_ci


def fake_results(n=5):
    rng = np.random.default_rng(0)
    centre = dict(zip(experiment.ARMS, (0.1, 0.95, 0.55, 0.9, 0.1, 0.8)))
    acc = {arm: (centre[arm] + 0.02 * rng.standard_normal(n)).tolist() for arm in experiment.ARMS}
    cos = {name: (0.03 * rng.standard_normal(n)).tolist() for name in experiment.COSINE_LABELS}
    return {"seeds": list(range(n)), "arms": list(experiment.ARMS), "arm_labels": experiment.ARM_LABELS,
            "accuracy": acc, "summary": {a: mean_ci(v) for a, v in acc.items()},
            "theory_cosine": cos, "theory_cosine_labels": experiment.COSINE_LABELS,
            "theory_cosine_summary": {k: mean_ci(v) for k, v in cos.items()},
            "preset": "paper", "data": {"dataset": "mnist", "origin": "--data-dir", "dir": "/x", "note": "rebuilt"}}


def test_registered_with_paper_figs():
    assert "mnist_aux_fig10" in paper_figs.registered_figures()
    sweeps = ["reconcile", "width", "n_aux", "depth", "sigma", "inputs", "heads",
              "init_scheme", "batch", "teacher_epochs", "aux_logits", "noise", "peers"]
    assert [f.name for f in FIGURES] == (["mnist_aux_fig10"] + [f"mnist_sweep_{s}" for s in sweeps]
                                         + ["mnist_alignment", "mnist_peers"])


@pytest.mark.parametrize("fig", FIGURES[1:], ids=lambda f: f.name)
def test_dissection_figures_plot_their_committed_results(fig):
    """The sweep and alignment figures draw from the results files in git, computing nothing."""
    path = REPO / "results" / f"{fig.name}.json"
    assert path.is_file(), f"{path} missing: run `python paper_figs.py --only {fig.name}`"
    figure = fig.plot(json.loads(path.read_text()))
    assert figure.axes and all(ax.has_data() for ax in figure.axes)
    plt.close(figure)


def test_plot_from_results_only():
    results = fake_results()
    fig = FIGURES[0].plot(results)
    bars = fig.axes[0]
    assert len(bars.patches) == 6
    assert "5 seeds" in bars.get_title()
    assert "over 5 seeds (Student's t, 4 dof)" in caption(results) and "95% CI" in caption(results) and "rebuilt" in caption(results)
    plt.close(fig)


def test_summary_ci_is_students_t():
    s = mean_ci([1.0, 2.0, 3.0, 4.0])
    sem = np.std([1, 2, 3, 4], ddof=1) / 2
    assert s["mean"] == 2.5 and np.allclose(s["ci95"], [2.5 - 3.182446 * sem, 2.5 + 3.182446 * sem], atol=1e-5)


def _every_summary(o):
    return dicts_where(o, lambda d: "ci95" in d)


@pytest.mark.parametrize("name", ["mnist_aux_fig10", "mnist_alignment"] + [f"mnist_sweep_{s}" for s in SWEEPS])
def test_committed_summaries_use_students_t(name):
    """Every summary in a committed MNIST results file is theory.stats.mean_ci of the per-seed
    values it summarises (Student's t, n - 1 dof), not the old normal 1.96."""
    results = json.loads((REPO / "results" / f"{name}.json").read_text())
    pairs = []  # (summary, the values it summarises)
    if name == "mnist_aux_fig10":
        pairs += [(results["summary"][a], results["accuracy"][a]) for a in results["arms"]]
        pairs += [(results["theory_cosine_summary"][c], results["theory_cosine"][c]) for c in results["theory_cosine"]]
    elif name == "mnist_alignment":
        pairs += [(r["final_accuracy_summary"], r["final_accuracy"]) for r in results["results"].values()]
    else:
        for p in results["points"]:
            pairs += [(p["teacher_summary"], p["teacher_accuracy"]), (p["reference_summary"], p["reference_accuracy"])]
            for s in p["students"]:
                pairs += [(s["accuracy_summary"], s["accuracy"]), (s["theory_cosine_summary"], s["theory_cosine"]),
                          (s["theory_inner_summary"], s["theory_inner"])]
        if "factor_effects" in results:
            from mnist_aux.sweeps import factor_effects
            assert json.loads(json.dumps(factor_effects(results["points"]))) == results["factor_effects"]
    assert pairs
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731 (nan == nan)
    for summary, values in pairs:
        assert same(summary, mean_ci(values))
    for s in _every_summary(results):  # also those whose per-step values are not kept (alignment)
        half = stats.t_quantile(s["n"]) * s["sem"]
        assert same(s["ci95"], [s["mean"] - half, s["mean"] + half])
