"""The figure protocol of ``paper_figs.py`` (every package's ``FIGURES`` list) and the one-axes record.

Figures are registered by the packages that compute them (``theory.figures``,
``mnist_aux.figures``, ``llm_bridge.experiment.figures``); :func:`registered` collects them by name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import matplotlib.pyplot as plt

REGISTRIES = ("theory.figures", "mnist_aux.figures", "llm_bridge.experiment.figures")


class FigureSpec(Protocol):
    """The one figure protocol of paper_figs.py, for every package's ``FIGURES`` list.

    name       the file stem of the figure (figures/NAME.png and .pdf)
    results    the stem of the results file it is drawn from (results/RESULTS.json); several
               figures may share one file, which is then computed once
    compute    ``compute(quick, results_dir) -> dict``: runs the computation (``quick``: a small
               preset) and returns JSON-ready results with seeds and config; ``results_dir`` is
               the folder being filled, for computations that reuse other saved results
    plot       ``plot(results) -> matplotlib Figure``: draws, computes nothing
    minutes    (optional) ``(full, quick)``: estimated minutes of ``compute`` on 2 CPU cores
    """

    name: str
    results: str
    # optional: estimated minutes of compute() on 2 CPU cores, (full, quick); paper_figs.py asks before
    # running anything over a minute
    minutes: tuple[float, float]

    def compute(self, quick: bool, results_dir: Path) -> dict: ...

    def plot(self, results: dict) -> plt.Figure: ...


@dataclass(frozen=True)
class Figure:
    """A :class:`FigureSpec` drawn on one axes: ``draw(results, ax)``; ``compute(quick)``."""

    name: str
    compute_fn: Callable[[bool], dict]
    draw: Callable[[dict, object], None]
    size: tuple[float, float] = (6.4, 4.4)
    results_name: str | None = None  # the shared results file's stem, when not ``name``
    minutes: tuple[float, float] | None = None  # estimated compute minutes on 2 CPU cores, (full, quick)

    @property
    def results(self) -> str:
        return self.results_name or self.name

    def compute(self, quick: bool, results_dir: Path) -> dict:
        return self.compute_fn(quick)

    def plot(self, results: dict):
        fig, ax = plt.subplots(figsize=self.size)
        self.draw(results, ax)
        return fig



def registered(registries=REGISTRIES) -> dict:
    """All registered figures, by name, in registry order (a name registered twice is an error)."""
    figures = {}
    for module_name in registries:
        for fig in importlib.import_module(module_name).FIGURES:
            if fig.name in figures:
                raise ValueError(f"figure {fig.name!r} registered twice")
            figures[fig.name] = fig
    return figures
