"""Regenerate every figure of subliminal-verify into figures/ (PNG and PDF).

Each figure is drawn from its saved results file (results/NAME.json) when that file
exists; otherwise the computation behind it runs first and its results are saved, so a
second call only re-plots. Figures are registered by the packages themselves: each of
``theory.figures``, ``mnist_aux.figures`` and ``llm_bridge.figures`` that exists exposes
``FIGURES``, a list of objects with

    name     str, the figure's file stem (figures/NAME.png, figures/NAME.pdf)
    compute  callable(quick: bool) -> dict, JSON-serialisable results with seeds and config
    plot     callable(results: dict) -> matplotlib.figure.Figure, no computation inside

Usage:
    python paper_figs.py                  # every figure, computing only what is missing
    python paper_figs.py --only NAME ...  # just these figures
    python paper_figs.py --quick          # small presets, written to results/quick, figures/quick
    python paper_figs.py --recompute      # ignore saved results
    python paper_figs.py --list           # list registered figures and exit
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tqdm import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parent
REGISTRIES = ("theory.figures", "mnist_aux.figures", "llm_bridge.figures")


def registered_figures() -> dict:
    """All registered figures, by name, in registry order."""
    figures = {}
    for module_name in REGISTRIES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:  # this package registers no figures yet
                continue
            raise
        for fig in module.FIGURES:
            if fig.name in figures:
                raise ValueError(f"figure {fig.name!r} registered twice")
            figures[fig.name] = fig
    return figures


def _show(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def load_or_compute(fig, results_dir: Path, quick: bool, recompute: bool) -> tuple[dict, str]:
    """Results for ``fig``: the saved file if present, else computed and saved atomically."""
    path = results_dir / f"{fig.name}.json"
    if path.exists() and not recompute:
        return json.loads(path.read_text()), f"from {_show(path)}"
    start = time.perf_counter()
    results = fig.compute(quick)
    results.setdefault("wall_seconds", time.perf_counter() - start)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    tmp.replace(path)
    return results, f"computed in {time.perf_counter() - start:.0f} s -> {_show(path)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="regenerate only these figures")
    parser.add_argument("--quick", action="store_true",
                        help="small presets for whatever must be computed; writes results/quick/ and figures/quick/")
    parser.add_argument("--recompute", action="store_true", help="recompute even where saved results exist")
    parser.add_argument("--list", action="store_true", help="list the registered figures and exit")
    args = parser.parse_args(argv)

    figures = registered_figures()
    if args.list:
        for name in figures:
            print(name)
        return 0
    names = args.only or list(figures)
    unknown = [n for n in names if n not in figures]
    if unknown:
        parser.error(f"unknown figure(s) {unknown}; registered: {list(figures)}")

    results_dir = ROOT / "results" / ("quick" if args.quick else "")
    figures_dir = ROOT / "figures" / ("quick" if args.quick else "")
    figures_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in (bar := tqdm(names, desc="figures", unit="fig")):
        bar.set_postfix_str(name)
        results, source = load_or_compute(figures[name], results_dir, args.quick, args.recompute)
        fig = figures[name].plot(results)
        fig.savefig(figures_dir / f"{name}.png", dpi=150, bbox_inches="tight")
        # no creation date, so regenerating from the same results rewrites the same bytes
        fig.savefig(figures_dir / f"{name}.pdf", bbox_inches="tight", metadata={"CreationDate": None})
        plt.close(fig)
        written.append(f"{figures_dir.relative_to(ROOT)}/{name}.{{png,pdf}}  ({source})")
    print("\n".join(["wrote:"] + [f"  {w}" for w in written]))
    print(f"paper_figs: {len(written)} figure(s) written to {figures_dir.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
