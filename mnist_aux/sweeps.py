"""Named sweeps over the MNIST experiment, cached point by point so an interrupted sweep resumes.

``python -m mnist_aux sweep NAME`` runs one of :data:`SWEEPS`:

=========== ==================================================================================
reconcile   loss {KL, MSE} x reduction {mean, batchmean} x optimizer {Adam 3e-4, SGD tuned},
            shared vs cross-model init (the paper's ">50%" vs Jiang et al.'s 27.1%)
width       hidden width 64 ... 2048
n_aux       number of auxiliary logits m, 1 ... 30
depth       1 ... 4 hidden layers
sigma       student init = theta_0 + sigma * std * noise, sigma 0 ... 1, with Theorem 1's
            leading-order inner product on the same seeds
inputs      distillation inputs: uniform, gaussian, blurred gaussian, low-rank, MNIST, Fashion-MNIST
heads       re-initialise the hidden layers but keep the output head, and the reverse
=========== ==================================================================================

Every point is one :func:`mnist_aux.dissect.run` (all seeds at once, vmapped). Its result
is written atomically to ``<cache>/<key>.json`` (default ``results/sweeps`` under the working
directory) where ``key`` hashes :data:`FORMAT` and everything that determines its numbers
(config, distillation setting, students, learning rates, seeds, pairing, the data's
fingerprint, and the distillation images' where they are another data set); a point whose file exists is read instead of run, so re-running an interrupted
sweep computes only what is missing, and points shared by two sweeps (the paper's setting
appears in most) are computed once. An entry that cannot be read (truncated, not JSON, another
key) is reported on stderr and recomputed (:mod:`mnist_aux.sweep_points` keeps the points and
their cache). The assembled sweep goes to ``results/mnist_sweep_<NAME>.json``, which
``paper_figs.py`` plots; :mod:`mnist_aux.sweep_tables` writes its markdown tables.

Adding a sweep is one :class:`Sweep` entry in :data:`SWEEPS`: its points (a function of the
:class:`Context`), its seeds, its axis label and scale and its plot kind.

SGD's "tuned rate" (reconcile) is chosen without looking at digits: for each loss and
reduction, a grid of rates is run on separate tuning seeds and the rate with the lowest
final-epoch distillation loss (the student's own objective) is used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from mnist_aux import configs
from mnist_aux.configs import PRESETS
from mnist_aux.data import Dataset
from mnist_aux.sweep_points import CACHE, Context, MissingPoint, Point
from harness.results import lazy_module, provenance, shown

# the cache's and the tables' names as the CLI, render.py, the tests and the docs read them: through this module
from mnist_aux.sweep_points import FORMAT, point_key  # noqa: F401
from mnist_aux.sweep_tables import paired_markdown, summary_rows, table  # noqa: F401

# loaded at first use, so that the CLI's parser (which lists the sweeps) answers --help without importing JAX
dissect = lazy_module("mnist_aux.dissect")
teachers = lazy_module("mnist_aux.teachers")
inputs = lazy_module("mnist_aux.inputs")
model = lazy_module("mnist_aux.model")
stats = lazy_module("theory.stats")

TUNE_SEEDS = tuple(range(1000, 1004))  # SGD rate tuning only; disjoint from the evaluation seeds
SGD_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)  # per-example-mean rates; batchmean's are / batch_size


@dataclass(frozen=True)
class Sweep:
    """One named sweep: everything about it lives in its :data:`SWEEPS` entry.

    ``points(ctx)`` lists its points (each a :class:`Point`); a sweep that needs more than a
    list of points (``reconcile`` tunes SGD's rate on its own points first) gives ``body(ctx)
    -> {"points": [...], ...}`` and its point count ``n_points`` instead. ``scale`` is the x
    axis of its figure (``"linear"``, ``"log2"``, or ``"categories"``), ``plot`` the kind of
    figure (``"line"``: accuracy and cosine along x; ``"bar"``: one group per point;
    ``"reconcile"``: the reconciliation table and SGD tuning curves).
    """

    name: str
    title: str
    x_label: str
    seeds: int  # default number of seeds per point
    points: Callable[[Context], list[Point]] | None = None
    scale: str = "linear"
    plot: str = "line"
    body: Callable[[Context], dict] | None = None
    n_points: int | None = None
    note: Callable[[Context], str] | None = None  # a remark the results file keeps (e.g. fewer seeds somewhere)

    @property
    def minutes(self) -> float:
        """Wall minutes of the paper preset from an empty cache on the 2-core development machine (the CLI's help
        and ``paper_figs.py --list``)."""
        return MINUTES[self.name]

    def __post_init__(self):
        if (self.points is None) == (self.body is None):
            raise ValueError(f"sweep {self.name}: give points or body, not both")
        if self.scale not in ("linear", "log2", "categories") or self.plot not in ("line", "bar", "reconcile"):
            raise ValueError(f"sweep {self.name}: bad scale {self.scale!r} or plot {self.plot!r}")


# ------------------------------------------------------------------------- the sweeps


def _pair(ctx: Context, label, x, cfg=None, spec=None, inits=("shared", "cross")) -> Point:
    """A point with the shared-init and the cross-model student (by default) at the base setting."""
    return Point(label, x, cfg or ctx.base, spec or dissect.Distill(lr=ctx.base.lr), tuple(inits))


def reconcile(ctx: Context) -> dict:
    """The 8 cells of loss x reduction x optimizer, each with shared and cross-model students."""
    cells, tuning = [], {}
    for loss in dissect.LOSSES:
        for reduction in dissect.REDUCTIONS:
            scale = 1.0 if reduction == "mean" else 1.0 / ctx.base.batch_size
            grid = tuple(g * scale for g in SGD_GRID)
            spec = dissect.Distill(loss=loss, reduction=reduction, optimizer="sgd", lr=grid[0])
            tune = ctx.point(Point(f"tune SGD {loss}/{reduction}", "tune", ctx.base, spec, ("shared",) * len(grid),
                                   lrs=grid, seeds=TUNE_SEEDS))
            final = np.array([np.nan_to_num(np.mean(s["final_loss"]), nan=np.inf) for s in tune["students"]])
            best = float(grid[int(np.argmin(final))])
            tuning[f"{loss}/{reduction}"] = {"grid": list(grid), "mean_final_loss": [float(v) for v in final],
                                             "chosen": best, "seeds": list(TUNE_SEEDS)}
            for optimizer, lr in (("adam", 3e-4), ("sgd", best)):
                spec = dissect.Distill(loss=loss, reduction=reduction, optimizer=optimizer, lr=lr)
                cells.append(ctx.point(Point(f"{loss} / {reduction} / {optimizer}", f"{loss}/{reduction}/{optimizer}",
                                             ctx.base, spec, ("shared", "cross"))))
    return {"points": cells, "sgd_tuning": tuning, "factor_effects": factor_effects(cells)}


FACTORS = {"loss": ("kl", "mse"), "reduction": ("batchmean", "mean"), "optimizer": ("adam", "sgd")}


def factor_effects(cells: list[dict], init: str = "shared") -> dict:
    """Paired per-seed effect of each factor on the ``init`` student's accuracy.

    For a factor with levels (A, B), e.g. optimizer (adam, sgd): per seed, the accuracy at A
    minus at B with the other two factors fixed, for each of their 4 combinations
    (``by_setting``), and averaged over the 4 (``mean_over_settings``); mean and 95% CI
    over seeds. The seeds are the same in every cell, so the differences are paired.
    """
    acc = {}
    for c in cells:
        d = c["distill"]
        student = next(s for s in c["students"] if s["init"] == init)
        acc[d["loss"], d["reduction"], d["optimizer"]] = np.asarray(student["accuracy"])
    names = list(FACTORS)
    out = {}
    for i, name in enumerate(names):
        a, b = FACTORS[name]
        diffs = {}
        for key in acc:
            if key[i] != a:
                continue
            other = tuple(b if j == i else v for j, v in enumerate(key))
            if other in acc:
                diffs["/".join(v for j, v in enumerate(key) if j != i)] = acc[key] - acc[other]
        if not diffs:
            continue
        out[name] = {"contrast": f"{a} - {b}", "by_setting": {k: stats.mean_ci(v) for k, v in diffs.items()},
                     "mean_over_settings": stats.mean_ci(np.mean(list(diffs.values()), axis=0))}
    return out


WIDE_SEEDS = {1024: 6, 2048: 4}  # the widest points cost 7x / 22x the paper's width per seed: fewer seeds
WIDTHS = (64, 128, 256, 512, 1024, 2048)
SIGMAS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0)
HEADS = (("re-init hidden, keep head", "cross_hidden"), ("keep hidden, re-init head", "cross_head"))


def _width(ctx: Context) -> list[Point]:
    return [Point(f"width {h}", h, ctx.base.replace(hidden=h), dissect.Distill(lr=ctx.base.lr), ("shared", "cross"),
                  seeds=ctx.seeds[:min(WIDE_SEEDS.get(h, len(ctx.seeds)), len(ctx.seeds))]) for h in WIDTHS]


def _sigma(ctx: Context) -> list[Point]:
    return ([_pair(ctx, "sigma 0 (shared)", 0.0)]  # also gives the cross-model reference
            + [_pair(ctx, f"sigma {s}", s, inits=(f"sigma={s}",)) for s in SIGMAS[1:]])


PEER_SEEDS = 20  # seeds per point of the peer-factor sweeps (issue 11: >= 20)
FACTOR_SWEEPS = ("noise", "init_scheme", "batch", "teacher_epochs", "aux_logits", "peers")  # in the docs' order
BATCHES = (64, 128, 256, 1024)
TEACHER_EPOCHS = (1, 2, 5, 9, 15, 25)
AUX_LOGITS = (1, 3, 10, 25, 50, 100, 250)
NOISE = ("uniform",) + configs.STRUCTURED
NOISE_LABELS = {"uniform": "uniform (Figure 10)", "uniform_mnist_moments": "uniform, MNIST mean/std",
                "uniform_mnist_pixel": "uniform, MNIST per-pixel mean/std",
                **{f"uniform_blur{int(s)}": f"uniform blurred, {s:g} px" for s in configs.UNIFORM_BLURS}}
BROCKERS = {"n_aux": 10, "lr": 1e-3}  # arXiv 2605.23645's defaults (2 x 256 hidden, m = 10, Adam 1e-3, MSE)


def _aux_logits(ctx: Context) -> list[Point]:
    return [Point(f"m = {m}, {loss.upper()}", m, ctx.base.replace(n_aux=m), dissect.Distill(lr=ctx.base.lr, loss=loss),
                  ("shared", "cross"), series=loss.upper()) for loss in dissect.LOSSES for m in AUX_LOGITS]


def _peers(ctx: Context) -> list[Point]:
    """Peers' settings that no factor sweep covers (issue 11's peer table)."""
    brockers = ctx.base.replace(**BROCKERS)
    yuxuan = ctx.base.replace(batch_size=128)
    return [Point("Brockers et al. defaults: m = 10, Adam 1e-3, MSE", "brockers", brockers,
                  dissect.Distill(lr=brockers.lr, loss="mse"), ("shared", "cross")),
            Point("all-logit students, batch 128 (yuxuanwang2009)", "all_logits_b128", yuxuan,
                  dissect.Distill(lr=yuxuan.lr, logits="all"), ("shared", "cross"))]


# measured: the sweep's wall time from an empty point cache on the 2-core machine, other jobs sharing it
MINUTES = {"reconcile": 74.0, "width": 25.0, "n_aux": 7.0, "depth": 7.0, "sigma": 5.0, "inputs": 5.0, "heads": 1.2,
           "noise": 18.0, "init_scheme": 20.0, "batch": 19.0, "teacher_epochs": 31.0, "aux_logits": 55.0, "peers": 8.5}
SWEEPS = {s.name: s for s in (
    Sweep("reconcile", "KL vs MSE, batchmean vs mean, Adam vs SGD", "loss / reduction / optimizer", 25,
          body=reconcile, n_points=12, scale="categories", plot="reconcile"),
    Sweep("width", "hidden width", "hidden width", 10, _width, scale="log2",
          note=lambda ctx: f"seeds per width: {len(ctx.seeds)} except {WIDE_SEEDS} (cost)"),
    Sweep("n_aux", "number of auxiliary logits m", "m (auxiliary logits)", 10,
          lambda ctx: [_pair(ctx, f"m = {m}", m, ctx.base.replace(n_aux=m)) for m in (1, 2, 3, 5, 10, 30)], scale="log2"),
    Sweep("depth", "number of hidden layers", "hidden layers", 10,
          lambda ctx: [_pair(ctx, f"depth {d}", d, ctx.base.replace(depth=d)) for d in (1, 2, 3, 4)]),
    Sweep("sigma", "student init = theta_0 + sigma * std * noise", "sigma", 10, _sigma),
    Sweep("inputs", "distillation input distribution", "inputs", 10,
          lambda ctx: [_pair(ctx, name, name, spec=dissect.Distill(lr=ctx.base.lr, inputs=name)) for name in configs.DISTRIBUTIONS],
          scale="categories", plot="bar"),
    Sweep("heads", "which layers the student shares with the teacher's init", "student init", 10,
          lambda ctx: [_pair(ctx, "shared init", "shared")] + [_pair(ctx, label, init, inits=(init,)) for label, init in HEADS],
          scale="categories", plot="bar"),
    # the factors the 2026 reproductions vary (issue 11); PEER_SEEDS seeds, shared-init and cross-model students
    Sweep("init_scheme", "initialisation scheme of teacher = student", "init scheme", PEER_SEEDS,
          lambda ctx: [_pair(ctx, name, name, ctx.base.replace(init_scheme=name)) for name in model.INIT_SCHEMES],
          scale="categories", plot="bar"),
    Sweep("batch", "batch size (teacher and student; 5 + 5 epochs, so more steps)", "batch size", PEER_SEEDS,
          lambda ctx: [_pair(ctx, f"batch {b}", b, ctx.base.replace(batch_size=b)) for b in BATCHES], scale="log2"),
    Sweep("teacher_epochs", "teacher training epochs", "teacher epochs", PEER_SEEDS,
          lambda ctx: [_pair(ctx, f"teacher {e} epochs", e, ctx.base.replace(teacher_epochs=e)) for e in TEACHER_EPOCHS],
          scale="log2"),
    Sweep("aux_logits", "number of auxiliary logits m, KL and MSE", "m (auxiliary logits)", PEER_SEEDS, _aux_logits,
          scale="log2"),
    Sweep("noise", "structured distillation noise", "distillation noise", PEER_SEEDS,
          lambda ctx: [_pair(ctx, NOISE_LABELS[name], name, spec=dissect.Distill(lr=ctx.base.lr, inputs=name))
                       for name in NOISE], scale="categories", plot="bar"),
    Sweep("peers", "peers' settings no factor sweep covers", "setting", PEER_SEEDS, _peers,
          scale="categories", plot="bar"),
)}


def run_sweep(name: str, data: Dataset, *, preset: str = "paper", n_seeds: int | None = None, first_seed: int = 0,
              cache: Path = CACHE, teacher_cache: Path | None = configs.TEACHER_CACHE, recompute: bool = False,
              progress: bool = True, fashion: Dataset | Callable[[], Dataset] | None = None,
              command: str | None = None, cache_only: bool = False, partial: bool = False) -> dict:
    """Run (or resume) sweep ``name``; return the assembled results dict.

    ``cache``: the point cache folder; ``teacher_cache``: the teachers' (``None``: none).
    ``cache_only``: never compute; raise :class:`MissingPoint` if a point is not cached.
    ``partial`` (with ``cache_only``): assemble the cached points and list the others under
    ``missing_points`` instead of raising (a sweep still being computed; figures say so).
    """
    if name not in SWEEPS:
        raise ValueError(f"unknown sweep {name!r}; known: {', '.join(SWEEPS)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    sweep = SWEEPS[name]
    n = sweep.seeds if n_seeds is None else n_seeds
    if n < 2:
        raise ValueError("a sweep needs >= 2 seeds (cross-model students use another seed's init)")
    if first_seed < 0:
        raise ValueError(f"seeds must be >= 0, got first seed {first_seed}")
    start = time.perf_counter()
    ctx = Context(PRESETS[preset](), tuple(range(first_seed, first_seed + n)), data,
                  fashion=fashion if isinstance(fashion, Dataset) else None, cache=Path(cache),
                  teacher_cache=teacher_cache, recompute=recompute, cache_only=cache_only)
    if callable(fashion):
        ctx.load_fashion = fashion
    points = None if sweep.points is None else sweep.points(ctx)
    if partial and (not cache_only or points is None):
        raise ValueError("partial assembly needs cache_only and a sweep given by its points")
    missing = []

    def point(p: Point):
        try:
            return ctx.point(p)
        except MissingPoint:
            if not partial:
                raise
            missing.append(p.label)
            return None

    with tqdm(total=sweep.n_points or len(points), desc=f"sweep {name}", unit="point", disable=not progress) as ctx.bar:
        body = sweep.body(ctx) if points is None else {"points": [r for r in map(point, points) if r is not None]}
    if partial:
        if not body["points"]:
            raise MissingPoint(f"sweep {name}: no point is cached yet")
        body["missing_points"] = missing
    if sweep.note is not None:
        body["note"] = sweep.note(ctx)
    cpu = [p.get("cpu_seconds") for p in body["points"]]
    if all(c is not None for c in cpu):  # points computed before cpu_seconds was recorded have none
        body["cpu_seconds_points"] = float(sum(cpu))  # CPU time of computing every point (all threads), over resumes
    return {"sweep": name, "title": sweep.title, "x_label": sweep.x_label, "preset": preset, "base_config": ctx.base.to_dict(),
            "seeds": list(ctx.seeds), "data": data.source, "cache": shown(ctx.cache), "points_computed": len(ctx.computed),
            "wall_seconds": time.perf_counter() - start, **provenance(command), **body}
