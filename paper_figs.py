"""Regenerate every figure of subliminal-verify into figures/ (PNG and PDF).

Each figure is drawn from its saved results file (results/NAME.json) when that file
exists; otherwise the computation behind it runs first and its results are saved
(atomically), so a second call only re-plots. Figures are registered by the packages
themselves: ``theory.figures``, ``mnist_aux.figures`` and ``llm_bridge.experiment.figures`` each expose
``FIGURES``, a list of objects following ``harness.figures.FigureSpec``:

    name     str, the figure's file stem (figures/NAME.png, figures/NAME.pdf)
    results  str, the results file's stem (results/RESULTS.json); figures may share one
    compute  callable(quick, results_dir) -> dict, JSON-serialisable results with seeds and config
    plot     callable(results) -> matplotlib.figure.Figure, no computation inside

The results and figures folders are ``results/`` and ``figures/`` under the working
directory (or ``--results-dir`` / ``--figures-dir``), never inside an installed package.

Usage (after a non-editable ``pip install .``: ``python -m paper_figs`` with the same flags):
    python paper_figs.py                  # every figure from the saved results: about 2 s a figure, 55 s for
                                          # all 21 on 2 CPU cores busy with other jobs (load average 7); skips,
                                          # and lists, any whose results are missing and take over a minute to
                                          # compute
    python paper_figs.py --compute        # ... and runs the computations behind missing results (hours for all)
    python paper_figs.py --only NAME ...  # just these figures
    python paper_figs.py --quick          # small presets, written to results/quick, figures/quick
    python paper_figs.py --recompute      # ignore saved results
    python paper_figs.py --list           # list registered figures with their compute times, and exit

Compute times: each figure's ``minutes`` attribute, ``(full, quick)`` minutes on 2 CPU cores, which
``--list`` prints; from seconds (the theory figures) to about an hour for Figure 10's 100 seeds and the
reconciliation sweep, five hours for everything the peer table quotes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from harness import results

# matplotlib (with the Agg backend) and the figure registry, which imports every package's figures, are
# imported where figures are listed or drawn, so that --help answers at once


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

def registered_figures() -> dict:
    """All registered figures, by name, in registry order (:func:`harness.figures.registered`)."""
    from harness import figures as figures_registry

    _pyplot()
    return figures_registry.registered()


def load_or_compute(fig, results_dir: Path, quick: bool, recompute: bool, done: dict) -> tuple[dict, str]:
    """Results for ``fig``: computed this call already (a shared file), the saved file, or computed and saved."""
    if fig.results in done:
        return done[fig.results], f"shares {fig.results}.json"
    path = results_dir / f"{fig.results}.json"
    if path.exists() and not recompute:
        return json.loads(path.read_text()), f"from {results.shown(path)}"
    start = time.perf_counter()
    out = fig.compute(quick, results_dir)
    out.setdefault("wall_seconds", time.perf_counter() - start)
    out.setdefault("provenance", results.provenance(f"python paper_figs.py --only {fig.name} --recompute"
                                                    + (" --quick" if quick else "")))
    results.write_json(path, out)
    done[fig.results] = out
    return out, f"computed in {time.perf_counter() - start:.0f} s -> {results.shown(path)}"


def plan(figures: dict, names: list[str], results_dir: Path, quick: bool, recompute: bool) -> list[tuple[str, float | None]]:
    """The results files the call would compute: ``(stem, estimated minutes or None if unknown)``, each once.

    A figure's estimate is its ``minutes`` attribute, ``(full, quick)`` minutes on 2 CPU cores (none:
    unknown, treated as long)."""
    todo = {}
    for name in names:
        fig = figures[name]
        if fig.results in todo or ((results_dir / f"{fig.results}.json").exists() and not recompute):
            continue
        minutes = getattr(fig, "minutes", None)
        todo[fig.results] = None if minutes is None else minutes[1 if quick else 0]
    return list(todo.items())


def main(argv: list[str] | None = None) -> int:
    # `python -m paper_figs` (installed module) runs with a module spec; `python paper_figs.py` without one
    prog = "python -m paper_figs" if __spec__ is not None and __spec__.name == "paper_figs" else None
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="regenerate only these figures")
    parser.add_argument("--quick", action="store_true",
                        help="small presets for whatever must be computed; writes results/quick/ and figures/quick/")
    parser.add_argument("--recompute", action="store_true",
                        help="recompute even where saved results exist (consent to any computation, as --compute)")
    parser.add_argument("--compute", action="store_true",
                        help="run the computations behind missing results even when they take longer than a minute "
                             "(without it, those figures are skipped with what would run and how long)")
    parser.add_argument("--list", action="store_true",
                        help="list the registered figures, each with its results file and compute time, and exit")
    parser.add_argument("--results-dir", type=lambda p: Path(p).expanduser(), default=Path("results"),
                        help="folder of the results files (default: results/ under the working directory)")
    parser.add_argument("--figures-dir", type=lambda p: Path(p).expanduser(), default=Path("figures"),
                        help="folder the figures are written to (default: figures/ under the working directory)")
    args = parser.parse_args(argv)

    figures = registered_figures()
    if args.list:
        for name, fig in figures.items():
            minutes = getattr(fig, "minutes", None)
            cost = "compute time unknown" if minutes is None else (
                f"computing it: about {minutes[0]:g} min ({minutes[1]:g} with --quick) on 2 CPU cores")
            print(f"{name:<36} {results.shown(args.results_dir / fig.results)}.json; {cost}")
        return 0
    names = args.only or list(figures)
    unknown = [n for n in names if n not in figures]
    if unknown:
        parser.error(f"unknown figure(s) {unknown}; registered: {list(figures)}")

    results_dir = args.results_dir / ("quick" if args.quick else "")
    figures_dir = args.figures_dir / ("quick" if args.quick else "")
    try:
        for folder in (results_dir, figures_dir):
            results.prepare_output(folder / "probe.json")
    except results.OutputError as err:
        print(f"paper_figs: error: {err}", file=sys.stderr)
        return 2
    todo = plan(figures, names, results_dir, args.quick, args.recompute)
    long = {stem: m for stem, m in todo if m is None or m > 1.0}
    skipped = []
    if long and not (args.compute or args.recompute):
        total = sum(m for m in long.values() if m is not None)
        print("paper_figs: skipping the figures whose results are missing, since computing them takes more than a "
              f"minute each (about {total:.0f} min on 2 CPU cores in all"
              f"{', more for the unknown' if None in long.values() else ''}); --compute runs them, --quick small "
              "presets:", file=sys.stderr)
        for stem, m in long.items():
            print(f"  {results.shown(results_dir / stem)}.json: about "
                  + ("? (unknown)" if m is None else f"{m:.0f} min"), file=sys.stderr)
        skipped = [n for n in names if figures[n].results in long]
        names = [n for n in names if n not in skipped]
        if not names:
            print("paper_figs: error: no figure has its results here; nothing drawn", file=sys.stderr)
            return 2
    from tqdm import tqdm

    plt = _pyplot()
    written, done = [], {}
    for name in (bar := tqdm(names, desc="figures", unit="fig")):
        bar.set_postfix_str(name)
        data, source = load_or_compute(figures[name], results_dir, args.quick, args.recompute, done)
        fig = figures[name].plot(data)
        figures_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(figures_dir / f"{name}.png", dpi=150, bbox_inches="tight")
        # no creation date, so regenerating from the same results rewrites the same bytes
        fig.savefig(figures_dir / f"{name}.pdf", bbox_inches="tight", metadata={"CreationDate": None})
        plt.close(fig)
        written.append(f"{results.shown(figures_dir / name)}.{{png,pdf}}  ({source})")
    print("\n".join(["wrote:"] + [f"  {w}" for w in written]))
    print(f"paper_figs: {len(written)} figure(s) written to {results.shown(figures_dir)}/"
          + (f"; {len(skipped)} skipped (results missing, see above)" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
