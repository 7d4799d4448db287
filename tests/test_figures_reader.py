"""What a reader of the figures needs is on them: full labels, every mark in a legend, the terms defined.

Each test draws a figure from a committed results file (plotting only, a second or two) and reads
back its text: no label cut with an ellipsis, a legend entry for each kind of mark, the command that
computes the numbers, and the definition of what is plotted where the README's glossary would
otherwise be needed.
"""

import json

import matplotlib.pyplot as plt
import pytest
from conftest import REPO

from llm_bridge.experiment import figures as lm_figures
from mnist_aux import dissect_figures


def _load(stem: str) -> dict:
    return json.loads((REPO / "results" / f"{stem}.json").read_text())


def _texts(fig) -> list[str]:
    """Every piece of text on the figure: titles, tick labels, legends (entries and titles), free text."""
    out = [t.get_text() for t in fig.findobj(plt.Text)]
    return [t for t in out if t]


def test_peer_figure_labels_whole_legend_complete_and_command():
    table = _load("mnist_peers")
    fig = dissect_figures.plot_peers(table)
    texts = _texts(fig)
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(ticks) == len(table["rows"])
    assert not any("…" in t or "..." in t for t in ticks), "a row label was cut"
    legend = " | ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "shared init" in legend and "cross-model" in legend and "theirs" in legend
    # the rows without a number of theirs say so
    assert sum("no single number" in t for t in texts) == sum(r["value"] is None for r in table["rows"])
    assert any("python -m mnist_aux peers" in t for t in texts)
    plt.close(fig)


def test_sweep_legends_sit_outside_the_panels():
    fig = dissect_figures.SweepFigure("init_scheme").plot(_load("mnist_sweep_init_scheme"))
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    plt.close(fig)


def test_a_point_without_a_cosine_is_explained():
    """m = 1 with KL: the first update is zero, its cosine undefined (NaN in the results): said, not just missing."""
    fig = dissect_figures.SweepFigure("n_aux").plot(_load("mnist_sweep_n_aux"))
    assert any("no cosine at m = 1" in t for t in _texts(fig))
    plt.close(fig)


def test_alignment_says_which_lines_are_zero_by_construction():
    fig = dissect_figures.AlignmentFigure().plot(_load("mnist_alignment"))
    assert sum("by construction" in t for t in _texts(fig)) == 2
    plt.close(fig)


@pytest.fixture(scope="module")
def tiny_lm():
    """The tiny-LM results in the engine's layout (the committed smoke run)."""
    return _load("llm_trait_transfer_smoke")


def test_trait_transfer_figure_defines_the_margin(tiny_lm):
    fig, ax = plt.subplots()
    lm_figures.plot_trait_transfer(tiny_lm, ax)
    owl = tiny_lm["config"]["animals"][0]
    title = ax.get_legend().get_title().get_text()
    assert f"{owl} margin:" in title and "mean logit of the other animals" in title
    plt.close(fig)


def test_projection_figure_labels_its_reference_lines_and_z(tiny_lm):
    fig, ax = plt.subplots()
    lm_figures.plot_projection_vs_samples(tiny_lm, ax)
    legend = ax.get_legend()
    entries = " | ".join(t.get_text() for t in legend.get_texts())
    assert "0.95" in entries and "0.5" in entries
    assert "standard error" in legend.get_title().get_text()
    plt.close(fig)
