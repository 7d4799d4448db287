"""Figures of the MNIST dissection: the reconciliation table, the sweeps, the alignment, the peer table.

Each is a :class:`PanelFigure` record (``harness.figures.Figure``) built here and drawn by
:mod:`mnist_aux.dissect_plots`; the one registry, :data:`mnist_aux.figures.FIGURES`, lists them
after Figure 10 (this module never imports it):

``mnist_sweep_reconcile``  bars: loss x reduction x optimizer, shared vs cross-model init
``mnist_sweep_<name>``     accuracy (95% CI) and Theorem 1's step-0 cosine along a sweep
``mnist_alignment``        alignment of the student's updates over training; accuracy with
                           and without each intervention
``mnist_peers``            every public number of the experiment beside ours (:mod:`mnist_aux.peers`)

Full mode (``python paper_figs.py``) runs what is missing at the paper's setting (the sweep
caches make that a resume); quick mode (``--quick``) assembles the figure from the cached
full-run points when they are all there, else runs the smoke setting on 3 seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mnist_aux.dissect_plots import plot_alignment, plot_peers, plot_sweep  # noqa: E402
# the drawing code lived here before it had a module of its own; its public names still answer here
from mnist_aux.dissect_plots import CHANCE, ROLE_STYLE, SERIES_STYLE  # noqa: E402,F401
from mnist_aux.dissect_plots import plot_bar_sweep, plot_line_sweep, plot_reconcile  # noqa: E402,F401
from mnist_aux.sweeps import SWEEPS  # noqa: E402
from harness.figures import Figure  # noqa: E402
from harness.results import read_json, write_json  # noqa: E402

QUICK_SEEDS = 3


def _data():
    from mnist_aux import data

    return data.load("mnist")  # $SUBLIMINAL_MNIST_DIR, then the usual search


def _full_run_dir(results_dir: Path, quick: bool) -> Path:
    """Where the full run's results are: ``paper_figs.py --quick`` fills ``RESULTS/quick``."""
    return results_dir.parent if quick else results_dir


@dataclass(frozen=True)
class PanelFigure(Figure):
    """``harness.figures.Figure`` for the MNIST figures: ``compute_fn(quick, results_dir)`` also gets the
    results folder (the sweep and teacher caches, the full run a quick one reuses, the files the peer
    table quotes), and ``draw(results)`` returns the whole matplotlib figure (several panels, one
    legend and the caption) instead of filling one axes."""

    def compute(self, quick: bool, results_dir: Path) -> dict:
        return self.compute_fn(quick, results_dir)

    def plot(self, results: dict) -> plt.Figure:
        return self.draw(results)


def _command(name: str, quick: bool) -> str:
    return f"python paper_figs.py --only {name}" + (" --quick" if quick else "")


def compute_sweep(sweep: str, quick: bool, results_dir: Path) -> dict:
    """Sweep ``sweep`` at the paper's setting (a resume from its cache), or for ``quick`` the full
    run's cached points when they are all there, else the smoke setting on :data:`QUICK_SEEDS` seeds."""
    from mnist_aux import sweeps

    command = _command(f"mnist_sweep_{sweep}", quick)
    dataset = _data()
    if quick:
        try:  # the full run's points, when every one is cached
            return sweeps.run_sweep(sweep, dataset, progress=False, cache_only=True, command=command,
                                    cache=_full_run_dir(results_dir, quick) / "sweeps")
        except sweeps.MissingPoint:
            pass
    return sweeps.run_sweep(sweep, dataset, preset="smoke" if quick else "paper",
                            n_seeds=QUICK_SEEDS if quick else None, cache=results_dir / "sweeps",
                            teacher_cache=results_dir / "cache" / "teachers", progress=False, command=command)


def compute_alignment(quick: bool, results_dir: Path) -> dict:
    """The alignment run: paper preset, 10 seeds; ``quick`` reuses the full run when it is there (and
    readable), else runs the smoke preset on :data:`QUICK_SEEDS` seeds."""
    from mnist_aux import alignment
    from mnist_aux.configs import paper, smoke

    if quick:
        full = read_json(_full_run_dir(results_dir, quick) / "mnist_alignment.json")
        if full is not None:
            return full
    cfg, n = (smoke(), QUICK_SEEDS) if quick else (paper(), 10)
    results = alignment.run(cfg, range(n), _data(), teacher_cache=results_dir / "cache" / "teachers",
                            progress=False, command=_command("mnist_alignment", quick))
    results["preset"] = "smoke" if quick else "paper"
    return results


def compute_peers(quoted: Callable[[str], Figure], quick: bool, results_dir: Path) -> dict:
    """The peer table from the results files it quotes; one that is missing is computed as its own
    figure ``quoted(stem)`` computes it, and kept."""
    from mnist_aux import peers

    def missing(stem):
        result = quoted(stem).compute(quick, results_dir)
        write_json(results_dir / f"{stem}.json", result)
        return result

    return peers.assemble(peers.load(results_dir, missing))


def sweep_figure(sweep: str) -> PanelFigure:
    """``mnist_sweep_<sweep>``; compute minutes: the sweep's (:data:`mnist_aux.sweeps.MINUTES`), about a
    minute quick."""
    return PanelFigure(f"mnist_sweep_{sweep}", partial(compute_sweep, sweep), plot_sweep,
                       minutes=(SWEEPS[sweep].minutes, 1.0))


def alignment_figure() -> PanelFigure:
    """``mnist_alignment``: 4 minutes at the paper preset, about one quick."""
    return PanelFigure("mnist_alignment", compute_alignment, plot_alignment, minutes=(4.0, 1.0))


SweepFigure, AlignmentFigure = sweep_figure, alignment_figure  # the names the figure-reader tests use


def peers_figure(quoted: Callable[[str], Figure]) -> PanelFigure:
    """The peer table, drawn from the results files it quotes (computed first where missing, by
    ``quoted(stem)``, the registry's figure of that file); every sweep it quotes takes 300 min."""
    return PanelFigure("mnist_peers", partial(compute_peers, quoted), plot_peers, minutes=(300.0, 15.0))
