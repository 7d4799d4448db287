"""The MNIST figures are registered and plot a results dict without computing."""

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import REPO

import paper_figs
from mnist_aux import experiment, train
from mnist_aux.figures import FIGURES, caption


def fake_results(n=5):
    rng = np.random.default_rng(0)
    centre = dict(zip(train.ARMS, (0.1, 0.95, 0.55, 0.9, 0.1, 0.8)))
    acc = {arm: (centre[arm] + 0.02 * rng.standard_normal(n)).tolist() for arm in train.ARMS}
    cos = {name: (0.03 * rng.standard_normal(n)).tolist() for name in experiment.COSINE_LABELS}
    return {"seeds": list(range(n)), "arms": list(train.ARMS), "arm_labels": experiment.ARM_LABELS,
            "accuracy": acc, "summary": {a: experiment.summarize(v) for a, v in acc.items()},
            "theory_cosine": cos, "theory_cosine_labels": experiment.COSINE_LABELS,
            "theory_cosine_summary": {k: experiment.summarize(v) for k, v in cos.items()},
            "preset": "paper", "data": {"dataset": "mnist", "origin": "--data-dir", "dir": "/x", "note": "rebuilt"}}


def test_registered_with_paper_figs():
    assert "mnist_aux_fig10" in paper_figs.registered_figures()
    sweeps = ["reconcile", "width", "n_aux", "depth", "sigma", "inputs", "heads"]
    assert [f.name for f in FIGURES] == ["mnist_aux_fig10"] + [f"mnist_sweep_{s}" for s in sweeps] + ["mnist_alignment"]


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
    assert "N = 5 seeds" in caption(results) and "95% CI" in caption(results) and "rebuilt" in caption(results)
    plt.close(fig)


def test_summary_ci_is_mean_plus_minus_1_96_standard_errors():
    s = experiment.summarize([1.0, 2.0, 3.0, 4.0])
    sem = np.std([1, 2, 3, 4], ddof=1) / 2
    assert s["mean"] == 2.5 and np.allclose(s["ci95"], [2.5 - 1.96 * sem, 2.5 + 1.96 * sem], atol=1e-4)
