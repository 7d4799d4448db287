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

import numpy as np

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


def write_json(results: dict, out: Path) -> None:
    """Write ``results`` to ``out`` atomically (a temporary file, then a rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    tmp.replace(out)


def _load_mnist(args: argparse.Namespace):
    """MNIST for ``sweep`` / ``align`` (None after printing the error)."""
    from mnist_aux import data

    try:
        return data.load("mnist", args.data_dir, allow_download=not args.no_download)
    except data.DataError as err:
        print(f"mnist_aux: error: {err}", file=sys.stderr)
        return None


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
    write_json(results, out)
    print(table(results))
    s, t = results["summary"], results["timing"]
    print(f"mnist_aux: {args.seeds} seeds ({args.preset}, {cfg.dataset}) in {t['wall_seconds'] / 60:.1f} min, "
          f"peak {t['peak_rss_gib']:.2f} GiB; teacher {s['teacher']['mean']:.3f}, "
          f"student aux-only {s['student_aux']['mean']:.3f}, cross-model aux-only {s['cross_aux']['mean']:.3f} "
          f"-> {out}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from mnist_aux import data, sweeps

    dataset = _load_mnist(args)
    if dataset is None:
        return 2
    command = "python -m mnist_aux " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    cache = Path(args.cache) if args.cache else sweeps.CACHE
    try:
        results = sweeps.run_sweep(args.name, dataset, preset=args.preset, n_seeds=args.seeds, first_seed=args.first_seed,
                                   cache=cache, recompute=args.recompute, progress=not args.no_progress, command=command)
    except data.DataError as err:  # Fashion-MNIST for the inputs sweep
        print(f"mnist_aux: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else ROOT / "results" / f"mnist_sweep_{args.name}.json"
    write_json(results, out)
    print(sweeps.table(results))
    print(f"mnist_aux: sweep {args.name}: {len(results['points'])} points ({results['points_computed']} computed, "
          f"the rest from {cache}) in {results['wall_seconds'] / 60:.1f} min -> {out}")
    return 0


def _align(args: argparse.Namespace) -> int:
    from mnist_aux import alignment

    dataset = _load_mnist(args)
    if dataset is None:
        return 2
    cfg = PRESETS[args.preset]()
    results = alignment.run(cfg, range(args.first_seed, args.first_seed + args.seeds), dataset, arms=args.arms,
                            log_every=args.log_every, liminal_weight=args.liminal_weight, progress=not args.no_progress)
    results["preset"] = args.preset
    results["command"] = "python -m mnist_aux " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    out = Path(args.out) if args.out else ROOT / "results" / "mnist_alignment.json"
    write_json(results, out)
    for arm, r in results["results"].items():
        s = r["final_accuracy_summary"]
        print(f"{r['label']:40s} accuracy {s['mean']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]  "
              f"KL epoch1 {np.mean(r['kl_first_epoch_mean']):.2e} -> epoch{cfg.distill_epochs} "
              f"{np.mean(r['kl_last_epoch_mean']):.2e}  mean cos(update, -trait grad) "
              f"{r['mean_cos_trait_summary']['mean']:+.4f}")
    print(f"mnist_aux: alignment {len(results['seeds'])} seeds in {results['wall_seconds'] / 60:.1f} min -> {out}")
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
    from mnist_aux.sweeps import SWEEPS

    sweep = sub.add_parser("sweep", help="run or resume a named sweep (cached point by point)",
                           description="Run one of the named sweeps; every finished point is cached under "
                                       "results/sweeps/, so re-running an interrupted sweep computes only what is "
                                       "missing. Sweeps: " + "; ".join(f"{s.name}: {s.title}" for s in SWEEPS.values()))
    sweep.add_argument("name", choices=list(SWEEPS), help="which sweep")
    sweep.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="base setting (default paper)")
    sweep.add_argument("--seeds", type=int, metavar="N", help="seeds per point (default: the sweep's, 25 for reconcile, 10 else)")
    sweep.add_argument("--first-seed", type=int, default=0, metavar="S", help="seeds are S .. S+N-1 (default 0)")
    sweep.add_argument("--data-dir", metavar="DIR", help="MNIST folder (default as for `run`)")
    sweep.add_argument("--no-download", action="store_true", help="fail instead of downloading when no local copy is found")
    sweep.add_argument("--cache", metavar="DIR", help="per-point cache folder (default results/sweeps)")
    sweep.add_argument("--recompute", action="store_true", help="ignore cached points (and overwrite them)")
    sweep.add_argument("--out", metavar="PATH", help="results JSON (default results/mnist_sweep_NAME.json)")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
    sweep.set_defaults(func=_sweep)
    align = sub.add_parser("align", help="multi-step alignment of the student's updates and the ablations",
                           description="Follow the aux-only student's updates against the teacher displacement and "
                                       "the trait gradient, with the projection ablations and liminal training.")
    align.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="setting (default paper)")
    align.add_argument("--seeds", type=int, default=10, metavar="N", help="seeds (default 10)")
    align.add_argument("--first-seed", type=int, default=0, metavar="S", help="seeds are S .. S+N-1 (default 0)")
    align.add_argument("--arms", nargs="+", default=["none", "trait", "displacement", "liminal"],
                       choices=["none", "trait", "displacement", "liminal"], help="which arms (default all)")
    align.add_argument("--log-every", type=int, default=10, metavar="K", help="keep the alignment every K steps (default 10)")
    align.add_argument("--liminal-weight", type=float, default=1.0, metavar="W",
                       help="weight of the KL-to-reference penalty in the first epoch (default 1)")
    align.add_argument("--data-dir", metavar="DIR", help="MNIST folder (default as for `run`)")
    align.add_argument("--no-download", action="store_true", help="fail instead of downloading when no local copy is found")
    align.add_argument("--out", metavar="PATH", help="results JSON (default results/mnist_alignment.json)")
    align.add_argument("--no-progress", action="store_true", help="no progress lines")
    align.set_defaults(func=_align)
    presets = sub.add_parser("presets", help="list the presets, their commands and run times")
    presets.set_defaults(func=_presets)
    args = parser.parse_args(argv)
    if args.command in ("run", "align") and args.seeds < 2:
        parser.error("--seeds must be >= 2 (cross-model students need another seed's init)")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
