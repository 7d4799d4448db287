"""The command line's arguments: the parser of every subcommand, and the checks argparse cannot make.

:func:`build_parser` builds ``python -m mnist_aux``'s parser, one function per subcommand (``run``,
``sweep``, ``align``, ``peers``, ``copies``, ``presets``), every flag with a help that gives its
default; :func:`check` then refuses, in one line and before any data is loaded, an argument that
would fail or silently mean nothing later (fewer than 2 or more than :data:`MAX_SEEDS` seeds, a seed
past the int32 PRNG range, a mesh that would split the MLPs, ``--liminal-weight`` without the
liminal arm). Building the parser reads the sweeps' names and times from :mod:`mnist_aux.sweeps`,
which loads JAX only when a sweep runs, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import math

from mnist_aux.configs import PRESETS
from harness import mesh

SEED_MAX = 2**31 - 1  # seeds become int32 PRNG seeds (jax.random.key, np.int32 arrays): S + N - 1 must fit
MAX_SEEDS = 10_000  # 100x the paper's 100-seed run, which takes about 50 minutes on 2 CPU cores


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


def _add_run(sub) -> None:
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


def _add_sweep(sub) -> None:
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


def _add_align(sub) -> None:
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


def _add_peers(sub) -> None:
    peer = sub.add_parser("peers", help="the peer table: each public number beside ours (markdown)",
                          description="Assemble the peer table (mnist_aux/peers.py) from the results files of "
                                      "Figure 10 and the sweeps; print it as markdown and write RESULTS/mnist_peers.json.")
    peer.add_argument("--results-dir", metavar="RESULTS", help="results folder (default: results/ in the working directory)")
    peer.add_argument("--out", metavar="PATH", help="results JSON (default RESULTS/mnist_peers.json)")


def _add_copies(sub) -> None:
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


def _add_presets(sub) -> None:
    sub.add_parser("presets", help="list the presets, their commands and run times")


def build_parser(description: str) -> argparse.ArgumentParser:
    """``python -m mnist_aux``'s parser; ``description`` is its ``--help`` text (the launcher's docstring)."""
    parser = argparse.ArgumentParser(prog="python -m mnist_aux", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_sweep, _add_align, _add_peers, _add_copies, _add_presets):  # the --help order
        add(sub)
    return parser


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
