"""What each ``python -m mnist_aux`` subcommand does once its arguments are checked: one handler per command.

Each handler in :data:`COMMANDS` takes the parsed arguments (:mod:`mnist_aux.arguments`) and returns
the exit status. It checks the output file before any work (a default file holding another run's
seeds or config is never overwritten), loads the data, runs the experiment, writes the results
JSON (in a multi-host run only process 0 writes) and prints the markdown table and a one-line
summary; a problem is one line on stderr and status 2. The experiment modules are imported inside
the handlers, so that ``--help``, ``presets`` and argument errors answer without starting JAX.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from mnist_aux.configs import PRESETS, Config
from harness import mesh
from harness.results import (command_line, guard_default_output, is_writer, prepare_output, provenance, results_dir,
                             shown, write_json)


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
    table |= provenance(command_line("python -m mnist_aux", args.argv))  # the commit that assembled it
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


# the subcommand's name (``args.command``) -> what it does
COMMANDS = {"run": _run, "sweep": _sweep, "align": _align, "peers": _peers, "copies": _copies, "presets": _presets}
