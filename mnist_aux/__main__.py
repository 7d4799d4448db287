"""Command line: ``python -m mnist_aux run --preset paper --seeds 100``.

Runs the paper's Figure 10 experiment (section 6.2) for many seeds at once and writes a
results JSON that ``python paper_figs.py --only mnist_aux_fig10`` plots. ``python -m
mnist_aux presets`` lists the presets with their commands and run times.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from mnist_aux.configs import PRESETS

ROOT = Path(__file__).resolve().parent.parent


def default_out(preset: str, dataset: str) -> Path:
    """results/mnist_aux_fig10.json for the paper preset on MNIST (what paper_figs reads),
    else results/mnist_aux_<preset>[_<dataset>].json."""
    if preset == "paper" and dataset == "mnist":
        return ROOT / "results" / "mnist_aux_fig10.json"
    return ROOT / "results" / f"mnist_aux_{preset}{'' if dataset == 'mnist' else '_' + dataset}.json"


def table(results: dict) -> str:
    """The six arms and the theory-link cosines as a markdown table (mean and 95% CI)."""
    n = len(results["seeds"])
    lines = [f"| arm ({n} seeds) | test accuracy, mean | 95% CI |", "| --- | --- | --- |"]
    for arm in results["arms"]:
        s = results["summary"][arm]
        lines.append(f"| {results['arm_labels'][arm]} | {s['mean']:.4f} | [{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}] |")
    lines += ["", "| cosine(first student update, teacher displacement) | mean | 95% CI |", "| --- | --- | --- |"]
    for name, label in results["theory_cosine_labels"].items():
        s = results["theory_cosine_summary"][name]
        lines.append(f"| {label} | {s['mean']:.4f} | [{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}] |")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    # Imported here so `--help` and `presets` answer without starting JAX.
    from mnist_aux import data, experiment

    cfg = PRESETS[args.preset]()
    cfg = cfg.replace(dataset=args.dataset)
    try:
        dataset = data.load(cfg.dataset, args.data_dir, allow_download=not args.no_download)
    except data.DataError as err:
        print(f"mnist_aux: error: {err}", file=sys.stderr)
        return 2
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    command = "python -m mnist_aux " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    results = experiment.run(cfg, seeds, dataset, seeds_per_chunk=args.seeds_per_chunk,
                             pairing_seed=args.pairing_seed, progress=not args.no_progress, command=command)
    results["preset"] = args.preset
    out = Path(args.out) if args.out else default_out(args.preset, cfg.dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    tmp.replace(out)
    print(table(results))
    s, t = results["summary"], results["timing"]
    print(f"mnist_aux: {args.seeds} seeds ({args.preset}, {cfg.dataset}) in {t['wall_seconds'] / 60:.1f} min, "
          f"peak {t['peak_rss_gib']:.2f} GiB; teacher {s['teacher']['mean']:.3f}, "
          f"student aux-only {s['student_aux']['mean']:.3f}, cross-model aux-only {s['cross_aux']['mean']:.3f} "
          f"-> {out}")
    return 0


def _presets(args: argparse.Namespace) -> int:
    for name, preset in PRESETS.items():
        print(f"{name}: {preset()}\n    {' '.join(preset.__doc__.split())}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_aux", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train teachers and students for many seeds; write a results JSON",
                         description="Train, for each seed, a teacher and four students (section 6.2) and write "
                                     "every per-seed accuracy, mean and 95% CI to a results JSON.")
    run.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                     help="paper: the paper's setup (default); smoke: a seconds-long check for CI")
    run.add_argument("--seeds", type=int, default=100, metavar="N", help="number of seeds (models) to train (default 100; >= 2)")
    run.add_argument("--first-seed", type=int, default=0, metavar="S", help="seeds are S .. S+N-1 (default 0)")
    run.add_argument("--dataset", choices=("mnist", "fashion_mnist"), default="mnist", help="data set (default mnist)")
    run.add_argument("--data-dir", metavar="DIR",
                     help="folder with the four IDX .gz files (default: $SUBLIMINAL_MNIST_DIR or "
                          "$SUBLIMINAL_FASHION_MNIST_DIR, a system copy, the download cache, else download)")
    run.add_argument("--no-download", action="store_true", help="fail instead of downloading when no local copy is found")
    run.add_argument("--out", metavar="PATH",
                     help="results JSON (default results/mnist_aux_fig10.json for paper on MNIST, "
                          "else results/mnist_aux_<preset>[_<dataset>].json)")
    run.add_argument("--seeds-per-chunk", type=int, default=50, metavar="K",
                     help="seeds trained at once; bounds memory at about 60 MB per seed (default 50); "
                          "does not change any number")
    run.add_argument("--pairing-seed", type=int, default=0, metavar="P",
                     help="seed of the derangement that pairs cross-model students with other inits (default 0)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=_run)
    presets = sub.add_parser("presets", help="list the presets, their commands and run times")
    presets.set_defaults(func=_presets)
    args = parser.parse_args(argv)
    if args.command == "run" and args.seeds < 2:
        parser.error("--seeds must be >= 2 (cross-model students need another seed's init)")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
