"""Command line: ``python -m mnist_aux run --preset paper --seeds 100``.

Runs the paper's Figure 10 experiment (section 6.2) for many seeds at once and writes a
results JSON that ``python paper_figs.py --only mnist_aux_fig10`` plots. ``python -m
mnist_aux presets`` lists the presets with their commands and run times. ``run`` splits the
seeds over devices (``--mesh data=N``, default all) and over hosts (``--distributed``, only
process 0 writes): docs/scaling_up.md.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from mnist_aux.configs import PRESETS, Config
from harness import mesh
from harness.results import (OutputError, command_line, guard_default_output, is_writer, prepare_output, results_dir,
                            shown, write_json)


SEED_MAX = 2**31 - 1  # seeds become int32 PRNG seeds (jax.random.key, np.int32 arrays): S + N - 1 must fit
MAX_SEEDS = 10_000  # 100x the paper's 100-seed run, which takes about 50 minutes on 2 CPU cores


def default_out(preset: str, dataset: str, folder: Path) -> Path:
    """``folder/mnist_aux_fig10.json`` for the paper preset on MNIST (what paper_figs reads),
    else ``folder/mnist_aux_<preset>[_<dataset>].json``."""
    if preset == "paper" and dataset == "mnist":
        return folder / "mnist_aux_fig10.json"
    return folder / f"mnist_aux_{preset}{'' if dataset == 'mnist' else '_' + dataset}.json"


# a results file's config in today's form (files written before a field with a default existed lack it)
_CONFIG = {"config": lambda c: Config(**c).to_dict()}


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


def outside_unit_interval(summaries, n_seeds: int) -> str | None:
    """A note when an accuracy's 95% t-interval runs past [0, 1] (few seeds, wide interval), else None."""
    if any(s["ci95"][0] < 0 or s["ci95"][1] > 1 for s in summaries):
        return (f"note: with {n_seeds} seeds some 95% t-intervals run past [0, 1] (an accuracy is bounded; the "
                "interval is the t convention's, not clipped): use more seeds for a usable interval (the committed "
                "runs use 20-100)")
    return None


def _fail(message: str) -> int:
    print(f"mnist_aux: error: {message}", file=sys.stderr)
    return 2


def _load(dataset: str, args: argparse.Namespace):
    """The dataset, or None after printing the one-line error."""
    from mnist_aux import data

    try:
        return data.load(dataset, args.data_dir, allow_download=not args.no_download)
    except data.DataError as err:
        _fail(str(err))
        return None


def _devices(args: argparse.Namespace):
    """The devices of ``--mesh data=N`` (default all, every host's), or a one-line problem."""
    import jax

    devices = jax.devices()
    n = len(devices) if args.mesh is None else mesh.parse_mesh(args.mesh)["data"]
    if n > len(devices):
        return (f"--mesh data={n}: only {len(devices)} device{'s are' if len(devices) > 1 else ' is'} available "
                f"({devices[0].platform})")
    if jax.process_count() > 1 and n != len(devices):
        return f"--mesh data={n}: a multi-host run uses every host's devices ({len(devices)}); leave --mesh out"
    return devices[:n]


def _run(args: argparse.Namespace) -> int:
    cfg = PRESETS[args.preset]().replace(dataset=args.dataset)
    try:
        mesh.initialize(args)  # before anything touches a device
    except ValueError as err:
        return _fail(str(err))
    devices = _devices(args)
    if isinstance(devices, str):
        return _fail(devices)
    writer = is_writer()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    if args.out:
        out = prepare_output(args.out) if writer else args.out  # other hosts write nothing
    else:  # the default file is replaced only by the same run (seeds, config)
        out = default_out(args.preset, cfg.dataset, results_dir(args.results_dir))
        if writer:
            out = guard_default_output(out, {"seeds": list(seeds), "config": cfg.to_dict()}, normalize=_CONFIG)
    # Imported here so `--help`, `presets` and argument errors answer without starting JAX.
    from mnist_aux import experiment

    dataset = _load(cfg.dataset, args)
    if dataset is None:
        return 2
    results = experiment.run(cfg, seeds, dataset, seeds_per_chunk=args.seeds_per_chunk, pairing_seed=args.pairing_seed,
                             devices=devices, progress=not args.no_progress and writer,
                             command=command_line("python -m mnist_aux", args.argv))
    results["preset"] = args.preset
    results["pairing_seed"] = args.pairing_seed
    if not writer:
        return 0
    write_json(out, results)
    print(table(results))
    note = outside_unit_interval(results["summary"].values(), len(results["seeds"]))
    if note:
        print(note)
    s, t = results["summary"], results["timing"]
    print(f"mnist_aux: {args.seeds} seeds ({args.preset}, {cfg.dataset}) in {t['wall_seconds'] / 60:.1f} min, "
          f"peak {t['peak_rss_gib']:.2f} GiB; teacher {s['teacher']['mean']:.3f}, "
          f"student aux-only {s['student_aux']['mean']:.3f}, cross-model aux-only {s['cross_aux']['mean']:.3f} "
          f"-> {shown(out)}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from mnist_aux import data, sweeps

    folder = results_dir(args.results_dir)
    n_seeds = args.seeds or sweeps.SWEEPS[args.name].seeds
    out = prepare_output(args.out) if args.out else guard_default_output(
        folder / f"mnist_sweep_{args.name}.json",
        {"seeds": list(range(args.first_seed, args.first_seed + n_seeds)), "preset": args.preset})

    dataset = _load("mnist", args)
    if dataset is None:
        return 2
    cache = Path(args.cache).expanduser() if args.cache else folder / "sweeps"
    try:
        results = sweeps.run_sweep(args.name, dataset, preset=args.preset, n_seeds=args.seeds, first_seed=args.first_seed,
                                   cache=cache, teacher_cache=folder / "cache" / "teachers", recompute=args.recompute,
                                   progress=not args.no_progress, command=command_line("python -m mnist_aux", args.argv),
                                   cache_only=args.cached_only, partial=args.cached_only,
                                   fashion=lambda: data.load("fashion_mnist", args.fashion_data_dir,
                                                             allow_download=not args.no_download))
    except data.DataError as err:  # Fashion-MNIST for the inputs sweep
        return _fail(str(err))
    except (sweeps.MissingPoint, ValueError) as err:
        return _fail(str(err))
    write_json(out, results)
    print(sweeps.table(results))
    print(f"mnist_aux: sweep {args.name}: {len(results['points'])} points ({results['points_computed']} computed, "
          f"the rest from {shown(cache)}) in {results['wall_seconds'] / 60:.1f} min -> {shown(out)}")
    if results.get("missing_points"):
        print(f"mnist_aux: sweep {args.name}: not yet computed (--cached-only): {'; '.join(results['missing_points'])}")
    return 0


def _align(args: argparse.Namespace) -> int:
    folder = results_dir(args.results_dir)
    cfg = PRESETS[args.preset]()
    out = prepare_output(args.out) if args.out else guard_default_output(
        folder / "mnist_alignment.json",
        {"seeds": list(range(args.first_seed, args.first_seed + args.seeds)), "config": cfg.to_dict(),
         "arms": list(args.arms)}, normalize=_CONFIG)
    from mnist_aux import alignment

    dataset = _load("mnist", args)
    if dataset is None:
        return 2
    results = alignment.run(cfg, range(args.first_seed, args.first_seed + args.seeds), dataset, arms=args.arms,
                            log_every=args.log_every, liminal_weight=args.liminal_weight,
                            teacher_cache=folder / "cache" / "teachers", progress=not args.no_progress,
                            command=command_line("python -m mnist_aux", args.argv))
    results["preset"] = args.preset
    write_json(out, results)
    for arm, r in results["results"].items():
        s = r["final_accuracy_summary"]
        print(f"{r['label']:40s} accuracy {s['mean']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]  "
              f"KL epoch1 {np.mean(r['kl_first_epoch_mean']):.2e} -> epoch{cfg.distill_epochs} "
              f"{np.mean(r['kl_last_epoch_mean']):.2e}  mean cos(update, -trait grad) "
              f"{r['mean_cos_trait_summary']['mean']:+.4f}")
    note = outside_unit_interval([r["final_accuracy_summary"] for r in results["results"].values()], len(results["seeds"]))
    if note:
        print(note)
    print(f"mnist_aux: alignment {len(results['seeds'])} seeds in {results['wall_seconds'] / 60:.1f} min -> {shown(out)}")
    return 0


def _peers(args: argparse.Namespace) -> int:
    from mnist_aux import peers, sweeps
    from harness.results import read_results

    folder = results_dir(args.results_dir)
    out = prepare_output(args.out or folder / "mnist_peers.json")

    def make(stem):
        return ("python -m mnist_aux run --preset paper --seeds 100" if stem == peers.FIG10
                else f"python -m mnist_aux sweep {stem.removeprefix('mnist_sweep_')}")

    def missing(stem):
        path = folder / f"{stem}.json"
        try:
            read_results(path)
            why = f"{shown(path)} is missing or unreadable"
        except ValueError as err:  # say what is wrong with it
            why = f"{shown(path)} is missing or unreadable: {str(err).removeprefix(shown(path) + ': ')}"
        raise FileNotFoundError(f"{why}; run `{make(stem)}` first")

    try:
        files = peers.load(folder, missing)
        table = peers.assemble(files)
    except FileNotFoundError as err:
        return _fail(str(err))
    except KeyError as err:
        return _fail(f"{err.args[0]} (rerun that sweep)")
    table["command"] = command_line("python -m mnist_aux", args.argv)
    write_json(out, table)
    print(peers.markdown(table))
    for name in sweeps.FACTOR_SWEEPS:  # the factor sweeps' tables, as docs/mnist_dissect.md shows them
        stem = f"mnist_sweep_{name}"
        try:
            results = files[stem] if stem in files else read_results(folder / f"{stem}.json")  # each file read once
            text = (sweeps.paired_markdown(results) if results is not None
                    else f"{name}: not computed yet (`python -m mnist_aux sweep {name}`)")
        except ValueError as err:
            text = f"{name}: {err}; rerun `python -m mnist_aux sweep {name}`"
        except (KeyError, TypeError, IndexError) as err:
            text = f"{name}: {shown(folder / (stem + '.json'))} is not a sweep results file ({type(err).__name__}: " \
                   f"{err}); rerun `python -m mnist_aux sweep {name}`"
        print("\n" + text)
    print(f"mnist_aux: peer table, {len(table['rows'])} rows -> {shown(out)}")
    return 0


def _copies(args: argparse.Namespace) -> int:
    """Figure 10's arms on the same seeds on two copies of the training images (paired)."""
    from mnist_aux import data

    cfg = PRESETS[args.preset]()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    out = prepare_output(args.out) if args.out else guard_default_output(
        results_dir(args.results_dir) / "mnist_data_copies.json",
        {"seeds": seeds, "config": cfg.to_dict(), "other_train_images": args.other_train_images}, normalize=_CONFIG)
    official = _load("mnist", args)
    if official is None:
        return 2
    try:
        other = data.with_train_images(official, args.other_train_images)
    except data.DataError as err:
        return _fail(str(err))
    from mnist_aux import experiment

    command = command_line("python -m mnist_aux", args.argv)
    runs = {name: experiment.run(cfg, seeds, ds, progress=not args.no_progress, command=command)
            for name, ds in (("official", official), ("other", other))}
    results = {"experiment": "mnist_data_copies", "seeds": seeds, "config": cfg.to_dict(), "preset": args.preset,
               "other_train_images": args.other_train_images,
               "comparison": experiment.compare_copies(runs["official"], runs["other"]),
               "runs": {name: {k: r[k] for k in ("accuracy", "summary", "theory_cosine", "data", "timing")}
                        for name, r in runs.items()},
               **{k: runs["official"][k] for k in ("command", "versions", "machine")}}
    write_json(out, results)
    print(experiment.copies_markdown(results))
    print(f"mnist_aux: {len(seeds)} paired seeds on two copies of the training images -> {shown(out)}")
    return 0


def _presets(args: argparse.Namespace) -> int:
    for name, preset in PRESETS.items():
        print(f"{name}: {preset()}\n    {' '.join(preset.__doc__.split())}\n")
    return 0


def _common(p: argparse.ArgumentParser, out_default: str, teachers: bool = True) -> None:
    """The flags every subcommand shares: where data, results and caches are, seeds, progress."""
    p.add_argument("--first-seed", type=int, default=0, metavar="S",
                   help="seeds are S .. S+N-1 (default 0; S >= 0 and S+N-1 <= 2**31-1, the int32 PRNG seeds)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="folder with the four IDX .gz files (default: $SUBLIMINAL_MNIST_DIR or "
                        "$SUBLIMINAL_FASHION_MNIST_DIR, a system copy, the download cache, else download)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading when no local copy is found")
    p.add_argument("--results-dir", metavar="RESULTS",
                   help="results folder (default: results/ in the working directory)"
                        + ("; the teachers are cached in RESULTS/cache/teachers" if teachers else ""))
    p.add_argument("--out", metavar="PATH", help=f"results JSON (default {out_default}; a default file holding "
                                                 "another run's seeds or config is never overwritten: name --out); "
                                                 "checked before any work")
    p.add_argument("--no-progress", action="store_true", help="no progress output")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_aux", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train teachers and students for many seeds; write a results JSON",
                         description="Train, for each seed, a teacher and four students (section 6.2) and write "
                                     "every per-seed accuracy, mean and 95% CI to a results JSON.")
    run.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                     help="paper: the paper's setup (default; 100 seeds take about an hour on 2 CPU cores); smoke: the CI "
                          "check (8 seeds, 20-45 s); tiny: the CLIs' end-to-end check (seconds; its numbers mean "
                          "nothing). `python -m mnist_aux presets` prints each preset's config")
    run.add_argument("--seeds", type=int, default=100, metavar="N", help="number of seeds (models) to train (default 100; 2 .. 10,000)")
    run.add_argument("--dataset", choices=("mnist", "fashion_mnist"), default="mnist", help="data set (default mnist)")
    run.add_argument("--seeds-per-chunk", type=int, default=50, metavar="K",
                     help="seeds trained at once; bounds memory at about 60 MB per seed (default 50). Numbers "
                          "agree across chunk sizes only to float32 rounding (a seed can move by a few tenths of "
                          "a point); use the default to reproduce the committed results")
    run.add_argument("--pairing-seed", type=int, default=0, metavar="P",
                     help="seed of the derangement that pairs cross-model students with other inits (default 0)")
    _common(run, "RESULTS/mnist_aux_fig10.json for paper on MNIST, else RESULTS/mnist_aux_<preset>[_<dataset>].json",
            teachers=False)
    mesh.add_arguments(run, mesh_help="devices the seeds are split over: data=N puts each chunk's seeds on N devices "
                                      "(default: all devices; every host's with --distributed). Numbers agree across "
                                      "device counts to float32 rounding (docs/scaling_up.md)")
    run.set_defaults(func=_run)
    from mnist_aux.sweeps import SWEEPS

    sweep = sub.add_parser("sweep", help="run or resume a named sweep (cached point by point)",
                           description="Run one of the named sweeps; every finished point is cached under "
                                       "RESULTS/sweeps/, so re-running an interrupted sweep computes only what is "
                                       "missing. Sweeps (minutes for the paper preset on 2 CPU cores): "
                                       + "; ".join(f"{s.name} (~{s.minutes:.0f} min): {s.title}" for s in SWEEPS.values()))
    sweep.add_argument("name", choices=list(SWEEPS), help="which sweep")
    sweep.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="base setting (default paper)")
    sweep.add_argument("--seeds", type=int, metavar="N", help="seeds per point (default: the sweep's: 25 for reconcile, 20 for init_scheme, batch, "
                            "teacher_epochs, aux_logits, noise and peers, 10 else)")
    sweep.add_argument("--cache", metavar="DIR", help="per-point cache folder (default RESULTS/sweeps)")
    sweep.add_argument("--recompute", action="store_true", help="ignore cached points (and overwrite them)")
    sweep.add_argument("--fashion-data-dir", metavar="DIR",
                       help="Fashion-MNIST folder for the inputs sweep (default: $SUBLIMINAL_FASHION_MNIST_DIR, the "
                            "Debian package's copy, the download cache, else download unless --no-download)")
    sweep.add_argument("--cached-only", action="store_true",
                       help="compute nothing: assemble the cached points and list the missing ones in the results "
                            "(a sweep still being computed elsewhere)")
    _common(sweep, "RESULTS/mnist_sweep_NAME.json")
    sweep.set_defaults(func=_sweep)
    align = sub.add_parser("align", help="multi-step alignment of the student's updates and the ablations",
                           description="Follow the aux-only student's updates against the teacher displacement and "
                                       "the trait gradient, with the projection ablations and liminal training "
                                       "(paper preset, 10 seeds: about 5 minutes on 2 CPU cores).")
    align.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="setting (default paper)")
    align.add_argument("--seeds", type=int, default=10, metavar="N", help="seeds (default 10)")
    align.add_argument("--arms", nargs="+", default=["none", "trait", "displacement", "liminal"],
                       choices=["none", "trait", "displacement", "liminal"], help="which arms (default all)")
    align.add_argument("--log-every", type=int, default=10, metavar="K", help="keep the alignment every K steps (default 10)")
    align.add_argument("--liminal-weight", type=float, default=None, metavar="W",
                       help="weight of the KL-to-reference penalty in the first epoch of the liminal arm (default 1; "
                            "refused when --arms leaves liminal out)")
    _common(align, "RESULTS/mnist_alignment.json")
    align.set_defaults(func=_align)
    peer = sub.add_parser("peers", help="the peer table: each public number beside ours (markdown)",
                          description="Assemble the peer table (mnist_aux/peers.py) from the results files of "
                                      "Figure 10 and the sweeps; print it as markdown and write RESULTS/mnist_peers.json.")
    peer.add_argument("--results-dir", metavar="RESULTS", help="results folder (default: results/ in the working directory)")
    peer.add_argument("--out", metavar="PATH", help="results JSON (default RESULTS/mnist_peers.json)")
    peer.set_defaults(func=_peers)
    copies = sub.add_parser("copies", help="Figure 10's arms on two copies of the training images, paired by seed",
                            description="Run Figure 10's arms on the same seeds on the MNIST folder (--data-dir or "
                                        "the usual places) and on the same data with the training images of "
                                        "--other-train-images; write each arm's paired difference with its 95%% CI "
                                        "(how much numbers computed on the other copy moved). Seeds 0-19 of the paper "
                                        "preset: about 25 minutes on 2 CPU cores.")
    copies.add_argument("--other-train-images", metavar="FILE", required=True,
                        help="the other train-images-idx3-ubyte.gz (e.g. ../shared/data/mnist-rebuilt/...)")
    copies.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="setting (default paper)")
    copies.add_argument("--seeds", type=int, default=20, metavar="N", help="paired seeds (default 20)")
    _common(copies, "RESULTS/mnist_data_copies.json", teachers=False)
    copies.set_defaults(func=_copies)
    presets = sub.add_parser("presets", help="list the presets, their commands and run times")
    presets.set_defaults(func=_presets)
    args = parser.parse_args(argv)
    args.argv = argv  # None: sys.argv[1:]
    problem = check(args)
    if problem:
        return _fail(problem)
    try:
        return args.func(args)
    except OutputError as err:
        return _fail(str(err))


def check(args: argparse.Namespace) -> str | None:
    """The first argument that would fail (or silently mean nothing) later, as one line, else
    None: checked before any data is loaded (the CLI exits with status 2)."""
    if args.command in ("presets", "peers"):
        return None
    if args.seeds is not None and args.seeds < 2:
        return f"--seeds must be >= 2 (cross-model students need another seed's init), got {args.seeds}"
    if args.seeds is not None and args.seeds > MAX_SEEDS:
        return (f"--seeds must be <= {MAX_SEEDS:,} (the paper's run has 100 seeds; each takes about 30 s on 2 CPU "
                f"cores), got {args.seeds:,}")
    if args.first_seed < 0:
        return f"--first-seed must be >= 0, got {args.first_seed}"
    n = args.seeds
    if n is None and args.command == "sweep":
        from mnist_aux.sweeps import SWEEPS

        n = SWEEPS[args.name].seeds
    if args.first_seed + (n or 1) - 1 > SEED_MAX:
        return (f"--first-seed {args.first_seed} with {n} seeds runs past seed {SEED_MAX} (2**31-1, the largest "
                f"int32 PRNG seed); the last seed is --first-seed + --seeds - 1")
    if args.command == "run":
        problem = mesh.check_arguments(args)
        if problem:
            return problem
        if args.mesh is not None and mesh.parse_mesh(args.mesh)["model"] != 1:
            return (f"--mesh {args.mesh}: the MNIST experiment splits seeds only (data=N); its 784-256-256-13 MLPs "
                    "are too small to split (model must be 1)")
        if args.seeds_per_chunk < 1:
            return f"--seeds-per-chunk must be >= 1, got {args.seeds_per_chunk}"
        if args.pairing_seed < 0:
            return f"--pairing-seed must be >= 0, got {args.pairing_seed}"
        if args.pairing_seed > SEED_MAX:
            return f"--pairing-seed must be <= 2**31-1 (an int32 PRNG seed), got {args.pairing_seed}"
    if args.command == "sweep" and args.cached_only and args.recompute:
        return "--cached-only computes nothing and --recompute recomputes everything: give one of them"
    if args.command == "align":
        if args.log_every < 1:
            return f"--log-every must be >= 1, got {args.log_every}"
        if args.liminal_weight is not None and "liminal" not in args.arms:
            return "--liminal-weight weighs the liminal arm's penalty; --arms leaves liminal out"
        if args.liminal_weight is None:
            args.liminal_weight = 1.0
        if not (math.isfinite(args.liminal_weight) and args.liminal_weight >= 0):
            return f"--liminal-weight must be a finite number >= 0, got {args.liminal_weight}"
    return None

if __name__ == "__main__":
    sys.exit(main())
