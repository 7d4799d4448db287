"""The student engine: every student the package trains, K per seed, many seeds at once.

Figure 10's four students (:mod:`mnist_aux.experiment`), the K students of a dissection or sweep
point (:mod:`mnist_aux.dissect`) and the alignment runs (:mod:`mnist_aux.alignment`) are arms of
this one engine. An arm is a :class:`~mnist_aux.arms.Student`: where it starts (:data:`INITS_HELP`),
which logits it imitates, its loss and that loss's reduction over the batch, its optimizer and its
rate. A run is a :class:`~mnist_aux.arms.Plan`: K students, the distillation inputs they all see
(:mod:`mnist_aux.inputs`) and optionally a :class:`~mnist_aux.arms.Hook` that acts on every step of
every student (the alignment's projections, penalty and per-step measurements). The arms and one
seed's distillation epoch live in :mod:`mnist_aux.arms` (their names are importable from here too);
this module runs them over many seeds.

Seeds. Every per-seed function is ``vmap``-ped over seeds inside ``jax.jit``. :func:`run` processes
the seeds in equal chunks (``seeds_per_chunk`` bounds memory; the last chunk is padded with repeats,
then dropped); inside a chunk every array with a seed axis is sharded over a 1-D mesh of the devices
(axis ``"seeds"``, :class:`jax.sharding.NamedSharding`; every host's devices in a multi-host run,
docs/scaling_up.md), shared arrays are replicated, and each phase is one program compiled ahead of
time (:class:`Programs`). A seed's keys, inits and inputs do not depend on the seeds beside it; the
chunk size and K (the vmapped shapes) change XLA's float32 summation order, so numbers agree across
them to float32 rounding only, amplified by training to a few tenths of a point for single seeds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mnist_aux import inputs, train
from mnist_aux.arms import (  # noqa: F401  (the arms' names, importable from the engine)
    INITS_HELP, LOGITS, LOSSES, OPTIMIZERS, REDUCTIONS, SIGMA_SALT, Hook, Plan, Student, distill_epoch, init_students,
    objective, optimizer, parse_init, student_init, theory_link)
from mnist_aux.configs import Config
from mnist_aux.data import Dataset

# ------------------------------------------------------------------ many seeds at once


def chunking(n_seeds: int, seeds_per_chunk: int, n_devices: int) -> tuple[int, int]:
    """``(n_chunks, chunk)``: equal chunks of at most ~``seeds_per_chunk`` seeds, each a
    multiple of the device count (the last chunk is padded with repeats, then dropped)."""
    chunk = max(1, min(seeds_per_chunk, n_seeds))
    n_chunks = math.ceil(n_seeds / chunk)
    chunk = math.ceil(n_seeds / n_chunks)
    chunk = math.ceil(chunk / n_devices) * n_devices
    return n_chunks, chunk


def _distill_epochs(plan: Plan, cfg: Config, students, opt_state, teacher, keys, epoch, extra=None):
    """:func:`distill_epoch` vmapped over seeds (``extra``'s ``reference`` has a seed axis, the rest is shared)."""
    extra = extra or {}
    axes = {name: 0 if name == "reference" else None for name in extra}
    return jax.vmap(partial(distill_epoch, plan, cfg), in_axes=(0, 0, 0, 0, None, axes))(
        students, opt_state, teacher, keys, epoch, extra)


def _start(plan: Plan, cfg: Config, seeds, partners=None):
    """``(keys, theta0, students [S, K, ...])`` of ``seeds``: :func:`mnist_aux.train.setup` and
    :func:`init_students` in one program."""
    keys, theta0, theta0_cross = train.setup(cfg, seeds, partners)
    return keys, theta0, jax.vmap(partial(init_students, plan))(theta0, theta0_cross, keys.init)


def _accuracy(models, test_x, test_y):
    return jax.vmap(train.accuracy, in_axes=(0, None, None))(models, test_x, test_y)


def _stack_models(*models):
    """Per-seed stacks ``[S, M, ...]`` from pytrees ``[S, ...]`` (a ``[S, K, ...]`` stack counts as K)."""
    parts = [jax.tree.map(lambda a: a[:, None], m) if m["fc1"]["kernel"].ndim == 3 else m for m in models]
    return jax.tree.map(lambda *a: jnp.concatenate(a, axis=1), *parts)


class Programs:
    """The compiled programs of a run, compiled ahead of time per argument shape and sharding
    (compile time counted apart in ``compile_seconds``)."""

    def __init__(self, cfg: Config, plan: Plan):
        self.cfg, self.plan = cfg, plan
        self.compile_seconds = 0.0
        self._jitted = {
            "setup": jax.jit(partial(train.setup, cfg)),
            "start": jax.jit(partial(_start, plan, cfg)),
            "teacher_epoch": jax.jit(partial(train.teacher_epochs, cfg), donate_argnums=(0, 1)),
            "opt_init": jax.jit(jax.vmap(train.optimizer(cfg).init)),  # the teacher's
            "students": jax.jit(jax.vmap(partial(init_students, plan))),
            "student_opt_init": jax.jit(jax.vmap(optimizer(plan).init)),
            "first_batch": jax.jit(jax.vmap(partial(inputs.first_batch, plan.inputs, cfg), in_axes=(0, None))),
            "distill_epoch": jax.jit(partial(_distill_epochs, plan, cfg), donate_argnums=(0, 1)),
            "stack": jax.jit(_stack_models),
            "accuracy": jax.jit(_accuracy),
        }
        self._compiled = {}

    def __call__(self, name, *args):
        # Shardings are part of the key: on several devices XLA may give an epoch's outputs other
        # shardings than its inputs had, and a compiled program only accepts the ones it was built for.
        key = (name, jax.tree.structure(args), tuple((getattr(a, "shape", None), getattr(a, "sharding", None))
                                                     for a in jax.tree.leaves(args)))
        if key not in self._compiled:
            start = time.perf_counter()
            self._compiled[key] = self._jitted[name].lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
        return self._compiled[key](*args)


def host(tree):
    """Seed-sharded results as numpy arrays, whole on every host: on a multi-host mesh the other
    hosts' seeds are gathered (``process_allgather``); on one host this is ``np.asarray``."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


@dataclass
class Outcome:
    """What :func:`run` measured, per seed (numpy arrays, the padded seeds dropped).

    accuracy        ``[S, 2 + K]`` test accuracy of the reference init, the teacher, then the K students
    loss_by_epoch   ``[S, epochs, K]`` each student's mean imitation loss per epoch
    teacher_loss    ``[S, teacher epochs]`` mean cross-entropy per epoch (teachers trained by the run), else None
    inner, cosine   ``[S, K]`` the step-0 theory link (:func:`theory_link`), else None
    epoch_accuracy  ``[S, epochs + 1, K]`` the students' accuracy at the start and after each epoch, else None
    series          the hook's per-step values ``{name: [S, steps, K]}`` (``loss`` among them), else ``{}``
    """

    accuracy: np.ndarray
    loss_by_epoch: np.ndarray
    teacher_loss: np.ndarray | None = None
    inner: np.ndarray | None = None
    cosine: np.ndarray | None = None
    epoch_accuracy: np.ndarray | None = None
    series: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)


PHASES = ("setup", "teacher", "distill", "eval", "theory_cosines")


@dataclass
class _Run:
    """What one :func:`run` shares across its chunks: programs, shardings, placed arrays, timers, progress."""

    cfg: Config
    plan: Plan
    per_seed: NamedSharding
    replicated: NamedSharding
    n_chunks: int
    data: dict  # test_x, test_y and (teachers trained here) train_x, train_y, on the devices
    extra: dict  # the distillation's images and the hook's shared arrays, on the devices
    per_epoch: dict  # the bar's share (%) of one epoch of each phase
    bar: object = None
    chunk: int = 0
    programs: Programs = None
    phase_seconds: dict = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))

    def __post_init__(self):
        self.programs = Programs(self.cfg, self.plan)

    def timed(self, phase: str, name: str, *args):
        """Program ``name`` on ``args``, its seconds (until the outputs are ready) counted to ``phase``."""
        t0 = time.perf_counter()
        out = jax.block_until_ready(self.programs(name, *args))
        self.phase_seconds[phase] += time.perf_counter() - t0
        return out

    def status(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"chunk {self.chunk + 1}/{self.n_chunks} {text}")

    def advance(self, phase: str) -> None:
        if self.bar is not None:
            self.bar.update(self.per_epoch[phase])


def _prepare(cfg: Config, plan: Plan, n_seeds: int, data: Dataset, *, trains: bool, images, shared,
             seeds_per_chunk: int, devices, bar) -> tuple[_Run, int]:
    """The run's mesh over ``devices``, its chunking, its arrays on the devices and its progress shares:
    ``(_Run, seeds per chunk)``. ``trains``: the teachers are trained by the run."""
    devices = list(devices or jax.devices())
    mesh = jax.make_mesh((len(devices),), ("seeds",), (jax.sharding.AxisType.Auto,), devices=devices)
    per_seed, replicated = NamedSharding(mesh, P("seeds")), NamedSharding(mesh, P())
    n_chunks, chunk = chunking(n_seeds, seeds_per_chunk, len(devices))
    placed = {"test_x": data.test_x, "test_y": data.test_y}
    if trains:
        placed.update(train_x=data.train_x[: cfg.n_train], train_y=data.train_y[: cfg.n_train])
    placed = {name: jax.device_put(a, replicated) for name, a in placed.items()}
    extra = {name: jax.device_put(a, replicated) for name, a in (("images", images), ("shared", shared))
             if a is not None}
    teacher_work = train.flops_per_seed(cfg.replace(distill_epochs=0))["ours"] if trains else 0
    work = {"teacher": teacher_work, "distill": train.flops_per_seed(cfg)["ours"] - teacher_work}
    per_epoch = {phase: 100.0 * w / sum(work.values()) / n_chunks / max(epochs, 1)
                 for (phase, w), epochs in zip(work.items(), (cfg.teacher_epochs, cfg.distill_epochs))}
    return _Run(cfg, plan, per_seed, replicated, n_chunks, placed, extra, per_epoch, bar), chunk


def _teach(r: _Run, theta0, keys, n_real: int):
    """The chunk's teachers trained from theta_0: ``(teacher, mean loss per epoch [n_real, epochs])``."""
    teacher = jax.tree.map(jnp.copy, theta0)
    opt_state = r.timed("setup", "opt_init", teacher)
    losses = []
    for epoch in range(r.cfg.teacher_epochs):
        r.status(f"teacher epoch {epoch + 1}/{r.cfg.teacher_epochs}")
        teacher, opt_state, loss = r.timed("teacher", "teacher_epoch", teacher, opt_state, keys.shuffle,
                                           np.int32(epoch), r.data["train_x"], r.data["train_y"])
        losses.append(host(loss))
        r.advance("teacher")
    return teacher, (np.stack(losses, 1)[:n_real] if losses else np.zeros((n_real, 0)))


def _link(r: _Run, keys, students, theta0, teacher, n_real: int) -> dict:
    """The chunk's step-0 theory link (:func:`theory_link`) of its first ``n_real`` seeds."""
    r.status("theory cosines")
    x0 = r.timed("theory_cosines", "first_batch", keys, r.extra.get("images"))
    t0 = time.perf_counter()
    args = (students, theta0, teacher, x0)
    if jax.process_count() > 1:  # the per-seed loop indexes seeds other hosts hold
        args = host(args)
    out = theory_link(r.plan, r.cfg, *args, n_real)
    r.phase_seconds["theory_cosines"] += time.perf_counter() - t0
    return out


def _distill(r: _Run, students, theta0, teacher, keys, n_real: int, epoch_accuracy: bool, on_epoch):
    """The chunk's students distilled for every epoch: ``(students, losses [n_real, epochs, K], the
    hook's series {name: [n_real, steps, K]}, accuracies per epoch [n_real, epochs + 1, K] or None)``."""
    cfg, plan = r.cfg, r.plan
    opt_state = r.timed("setup", "student_opt_init", students)
    step_extra = dict(r.extra, **({"reference": theta0} if plan.hook is not None and plan.hook.needs_reference
                                  else {}))
    evaluate = lambda: host(r.timed("eval", "accuracy", students, r.data["test_x"], r.data["test_y"]))[:n_real]  # noqa: E731
    accs = [evaluate()] if epoch_accuracy else []
    losses, series = [], []
    for epoch in range(cfg.distill_epochs):
        r.status(f"distill epoch {epoch + 1}/{cfg.distill_epochs}")
        students, opt_state, loss, steps = r.timed("distill", "distill_epoch", students, opt_state, teacher, keys,
                                                   np.int32(epoch), *([step_extra] if step_extra else []))
        losses.append(host(loss)[:n_real])
        series.append({k: v[:n_real] for k, v in host(steps).items()})
        if epoch_accuracy:
            accs.append(evaluate())
        if on_epoch is not None:
            on_epoch(epoch, losses[-1], series[-1], accs[-1] if epoch_accuracy else None)
        r.advance("distill")
    del opt_state
    losses = np.stack(losses, 1) if losses else np.zeros((n_real, 0, len(plan.students)))
    joined = {k: np.concatenate([s[k] for s in series], axis=1) for k in series[0]} if series and series[0] else None
    return students, losses, joined, (np.stack(accs, 1) if epoch_accuracy else None)


def _chunk(r: _Run, s_arr, p_arr, idx, n_real: int, *, teachers, references, link: bool, epoch_accuracy: bool,
           on_epoch) -> dict:
    """One chunk of seeds (``idx`` into the run's seeds, padded to the compiled shape): what :class:`Outcome`
    holds for its first ``n_real`` seeds (``None`` where not measured)."""
    out = dict.fromkeys(("teacher_loss", "inner", "cosine", "epoch_accuracy", "series"))
    if references is None:
        keys, theta0, students = r.timed("setup", "start", s_arr, p_arr)
    else:
        keys, theta0 = jax.device_put(jax.tree.map(lambda a: a[np.asarray(idx)], references), r.per_seed)
        students = r.timed("setup", "students", theta0, None, keys.init)
    if teachers is None:
        teacher, out["teacher_loss"] = _teach(r, theta0, keys, n_real)
    else:
        teacher = jax.device_put(jax.tree.map(lambda a: a[np.asarray(idx)], teachers), r.per_seed)
    if link:
        out.update(_link(r, keys, students, theta0, teacher, n_real))
    students, out["loss_by_epoch"], out["series"], out["epoch_accuracy"] = _distill(
        r, students, theta0, teacher, keys, n_real, epoch_accuracy, on_epoch)
    r.status("evaluation")
    models = r.timed("eval", "stack", theta0, teacher, students)  # [S, 2 + K, ...]
    out["accuracy"] = host(r.timed("eval", "accuracy", models, r.data["test_x"], r.data["test_y"]))[:n_real]
    return out


def run(cfg: Config, plan: Plan, seeds, data: Dataset, *, partners=None, teachers=None, references=None, images=None,
        shared=None, link: bool = True, epoch_accuracy: bool = False, seeds_per_chunk: int = 50, devices=None, bar=None,
        on_epoch: Callable | None = None) -> Outcome:
    """Distil ``plan``'s K students from one teacher per seed, for every seed of ``seeds``; evaluate.

    ``partners``: seed ``i``'s cross-model partner (a seed whose theta_0 its ``cross`` students start
    from), needed when a student does. ``teachers``: the trained teachers ``[S, ...]``
    (:func:`mnist_aux.teachers.trained`); ``None``: trained here, chunk by chunk (Figure 10).
    ``references``: the seeds' ``(keys, theta0)`` when the caller drew them (the alignment; else drawn
    here, with the students, in one program).
    ``images``: the image inputs' images or the pixel moments (:mod:`mnist_aux.inputs`); ``shared``:
    arrays the hook reads. ``link``: compute the step-0 theory link. ``epoch_accuracy``: evaluate the
    students at the start and after every epoch. ``devices`` (default all, every host's) carry the
    seed axis. ``bar``: a tqdm bar over 100 (%) to advance. ``on_epoch(epoch, loss [S, K], steps,
    accuracy [S, K] or None)`` is called after each epoch of each chunk with that chunk's seeds.
    """
    seeds = [int(s) for s in seeds]
    if plan.needs_partner and partners is None:
        raise ValueError("cross-model students need partner seeds")
    if references is not None and plan.needs_partner:
        raise ValueError("given references, the students can start from theta_0 only")
    r, chunk = _prepare(cfg, plan, len(seeds), data, trains=teachers is None, images=images, shared=shared,
                        seeds_per_chunk=seeds_per_chunk, devices=devices, bar=bar)
    chunks = []
    for r.chunk in range(r.n_chunks):
        idx = list(range(r.chunk * chunk, min((r.chunk + 1) * chunk, len(seeds))))
        n_real = len(idx)
        idx += [idx[-1]] * (chunk - n_real)  # pad to the compiled shape; padded results dropped
        s_arr = jax.device_put(np.asarray([seeds[i] for i in idx], np.int32), r.per_seed)
        p_arr = None if partners is None else jax.device_put(np.asarray([partners[i] for i in idx], np.int32),
                                                             r.per_seed)
        chunks.append(_chunk(r, s_arr, p_arr, idx, n_real, teachers=teachers, references=references, link=link,
                             epoch_accuracy=epoch_accuracy, on_epoch=on_epoch))
    joined = {k: np.concatenate([c[k] for c in chunks]) if chunks[0][k] is not None else None
              for k in ("accuracy", "loss_by_epoch", "teacher_loss", "inner", "cosine", "epoch_accuracy")}
    series = chunks[0]["series"]
    return Outcome(**joined, series={k: np.concatenate([c["series"][k] for c in chunks]) for k in series} if series
                   else {},
                   timing={"compile_seconds": r.programs.compile_seconds, "phase_seconds": r.phase_seconds,
                           "n_chunks": r.n_chunks, "seeds_per_chunk": chunk})
