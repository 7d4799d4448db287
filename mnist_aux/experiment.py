"""The Figure 10 experiment for many seeds at once: its six arms as one run of the student engine.

:func:`run` trains, for every seed, a teacher and its four students (paper section 6.2) and returns
a JSON-serialisable results dict: the config, seeds, cross-model pairing, every per-seed accuracy
and theory-link cosine, mean and 95% CI per arm, data source, versions and timing. The same dict is
the CLI's results file and the input of ``mnist_aux.figures``.

The four students are :data:`FIG10`'s, arms of :mod:`mnist_aux.engine` (one stack per seed, in the
order :data:`STUDENTS`: the shared-init and cross-model students that imitate the auxiliary logits
only, then the two that imitate all 10 + m logits); the teachers are trained by the engine chunk by
chunk. Seeds run in equal chunks (``seeds_per_chunk`` bounds memory) sharded over a 1-D mesh of the
devices (the CLI's ``--mesh data=N``: all devices by default, every host's in a multi-host run,
docs/scaling_up.md). A seed's keys, init and noise do not depend on which other seeds run beside
it; the chunk size (the vmapped shapes) changes XLA's float32 summation order, so numbers agree
across chunk sizes and device counts to float32 rounding, amplified by training to a few tenths of
a point for single seeds (docs/mnist_aux.md).
"""

from __future__ import annotations

import resource
import time

import jax
import numpy as np
from tqdm import tqdm

from harness.results import provenance
from theory.stats import mean_ci
from mnist_aux import engine, train
from mnist_aux.configs import Config
from mnist_aux.data import Dataset
from mnist_aux.engine import chunking  # noqa: F401  (benchmarks/mnist_aux_speed.py reads the chunk sizes here)

# Figure 10's students, in the stack's order: (init, imitated logits)
FIG10 = {"student_aux": ("shared", "aux"), "cross_aux": ("cross", "aux"), "student_all": ("shared", "all"),
         "cross_all": ("cross", "all")}
STUDENTS = tuple(FIG10)
ARMS = ("reference", "teacher", "student_aux", "student_all", "cross_aux", "cross_all")  # Figure 10's order
ARM_LABELS = {
    "reference": "Reference",
    "teacher": "Teacher",
    "student_aux": "Student (aux. only)",
    "student_all": "Student (all logits)",
    "cross_aux": "Cross-model (aux. only)",
    "cross_all": "Cross-model (all logits)",
}
COSINE_LABELS = {
    "student_aux": "shared init, aux-only loss",
    "cross_aux": "cross-model init, aux-only loss",
    "student_all": "shared init, all-logit loss",
    "cross_all": "cross-model init, all-logit loss",
}


def students(cfg: Config) -> tuple[engine.Student, ...]:
    """Figure 10's four students in :data:`STUDENTS` order: KL, batch mean, Adam at the config's rate."""
    return tuple(engine.Student(init=init, logits=logits, lr=cfg.lr) for init, logits in FIG10.values())


def plan(cfg: Config) -> engine.Plan:
    """Figure 10's run: its four students on uniform noise."""
    return engine.Plan(students(cfg))


class Programs(engine.Programs):
    """Figure 10's compiled programs (:class:`mnist_aux.engine.Programs` of :func:`plan`)."""

    def __init__(self, cfg: Config):
        super().__init__(cfg, plan(cfg))


# ---------------------------------------------------------------------------- run


def run(cfg: Config, seeds, data: Dataset, *, seeds_per_chunk: int = 50, devices=None,
        pairing_seed: int = 0, progress: bool = True, command: str | None = None) -> dict:
    """Train and evaluate the six arms of Figure 10 for every seed in ``seeds``.

    ``devices`` (default: all devices, every host's after ``jax.distributed.initialize``) carry
    the seed axis; every host runs this function and gets the whole results; ``pairing_seed`` picks
    the derangement pairing each seed's cross-model students with another seed's
    initialisation. Returns the results dict (see the module docstring).
    """
    start = time.perf_counter()
    prov = provenance(command)  # before training: the commit that produced the numbers
    seeds = [int(s) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise ValueError("seeds must be distinct")
    perm = train.derangement(len(seeds), pairing_seed)
    partners = [seeds[p] for p in perm]
    devices = list(devices or jax.devices())
    with tqdm(total=100.0, disable=not progress, unit="%", dynamic_ncols=True,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}",
              desc=f"mnist_aux {len(seeds)} seeds") as bar:
        out = engine.run(cfg, plan(cfg), seeds, data, partners=partners, seeds_per_chunk=seeds_per_chunk,
                         devices=devices, bar=bar)
    order = ("reference", "teacher") + STUDENTS
    acc = {arm: out.accuracy[:, order.index(arm)].tolist() for arm in ARMS}
    cos = {name: out.cosine[:, STUDENTS.index(name)] for name in COSINE_LABELS}
    losses = {"teacher_ce": out.teacher_loss.tolist() if cfg.teacher_epochs else [],
              "student_kl": out.loss_by_epoch.tolist() if cfg.distill_epochs else []}
    wall = time.perf_counter() - start
    return {
        "experiment": "mnist_aux_fig10",
        "paper": "Cloud et al., Subliminal Learning, arXiv 2507.14805, section 6.2, Figure 10",
        "config": cfg.to_dict(),
        "seeds": seeds,
        "cross_init_seed": partners,
        "pairing": f"derangement(n={len(seeds)}, seed={pairing_seed}): seed i's cross-model students "
                   "start from the reference init of cross_init_seed[i]",
        "arms": list(ARMS),
        "arm_labels": ARM_LABELS,
        "accuracy": acc,
        "summary": {arm: mean_ci(v) for arm, v in acc.items()},
        "theory_cosine": {name: v.tolist() for name, v in cos.items()},
        "theory_cosine_labels": COSINE_LABELS,
        "theory_cosine_summary": {name: mean_ci(v) for name, v in cos.items()},
        "losses": {**losses, "student_kl_order": list(STUDENTS),
                   "note": "per seed, mean loss of each epoch; student_kl per student in student_kl_order"},
        "data": data.source,
        "timing": {
            "wall_seconds": wall,
            "compile_seconds": out.timing["compile_seconds"],
            "phase_seconds": out.timing["phase_seconds"],
            "seconds_per_seed": wall / len(seeds),
            "n_chunks": out.timing["n_chunks"],
            "seeds_per_chunk": out.timing["seeds_per_chunk"],
            "peak_rss_gib": peak_rss_gib(),
            "flops_per_seed": train.flops_per_seed(cfg),
        },
        **prov,
        "machine": {**prov["machine"], "devices": [str(d) for d in devices]},
    }


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far, GiB (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def compare_copies(official: dict, other: dict) -> dict:
    """Paired per-seed differences between two Figure 10 runs on the same seeds and config that
    differ only in their data (``official - other``, per arm and per theory cosine), each with
    its mean and 95% t-CI over seeds: how far numbers computed on ``other`` moved."""
    if official["seeds"] != other["seeds"] or official["config"] != other["config"]:
        raise ValueError("a paired comparison needs the same seeds and config on both copies")
    diff = {arm: mean_ci(np.subtract(official["accuracy"][arm], other["accuracy"][arm])) for arm in official["accuracy"]}
    cos = {name: mean_ci(np.subtract(official["theory_cosine"][name], other["theory_cosine"][name]))
           for name in official["theory_cosine"]}
    return {"accuracy_difference": diff, "theory_cosine_difference": cos,
            "accuracy_official": official["summary"], "accuracy_other": other["summary"]}


def copies_markdown(results: dict) -> str:
    """The docs' table of :func:`compare_copies`: each arm on both copies and the paired difference."""
    n = len(results["seeds"])
    lines = [f"| arm ({n} paired seeds) | official copy | earlier (rebuilt) copy | official - rebuilt, paired |",
             "| --- | --- | --- | --- |"]

    def pct(s, sign=""):
        return f"{100 * s['mean']:{sign}.1f} % [{100 * s['ci95'][0]:{sign}.1f}, {100 * s['ci95'][1]:{sign}.1f}]"

    for arm, label in ARM_LABELS.items():
        c = results["comparison"]
        lines.append(f"| {label} | {pct(c['accuracy_official'][arm])} | {pct(c['accuracy_other'][arm])} | "
                     f"{pct(c['accuracy_difference'][arm], '+')} |")
    return "\n".join(lines)

