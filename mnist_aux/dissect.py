"""The dissection: one teacher per seed, K students of any kind, many seeds at once.

Figure 10 (:mod:`mnist_aux.experiment`) trains four fixed students. Dissecting the effect
needs students that differ in ONE factor at a time: the imitation loss (KL on softmax or
MSE on raw logits), its reduction over the batch, the optimizer and its rate, where the
student starts (:data:`INITS_HELP`), and what it is distilled on (:mod:`mnist_aux.inputs`). A
:class:`Distill` fixes the loss, reduction, optimizer and inputs; each student of a run
has its own initialisation and learning rate. The students are arms of the student engine
(:mod:`mnist_aux.engine`), as Figure 10's are: all K students of a seed see the same input
batch and the same teacher outputs (computed once), seeds are vmapped and sharded, and a
seed's numbers do not depend on the seeds beside it.

Keys, inits, noise batches, their order and the epoch skeleton are Figure 10's, so the
student ``Distill()`` with init ``"shared"`` is the Figure-10 aux-only student of the same seed
(the tests check each seed's teacher, first-epoch loss and step-0 cosine; at the paper
preset the reconciliation's KL/mean/Adam cell reproduces Figure 10's per-seed accuracies
for seeds 0-24 exactly, while on the smoke preset float32 summation order moves single
seeds by up to ~1 point).

Teachers come from :mod:`mnist_aux.teachers` (cached on disk, keyed by the teacher's config
and seeds, since most sweep points share them).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import theory
from harness.results import versions
from theory.stats import mean_ci
from mnist_aux import engine, inputs, teachers, train
from mnist_aux.configs import Config
from mnist_aux.data import Dataset
from mnist_aux.engine import INITS_HELP, LOSSES, OPTIMIZERS, REDUCTIONS, parse_init, student_init  # noqa: F401


@dataclass(frozen=True)
class Distill:
    """How the students imitate the teacher (one setting for all students of a run; the sweeps'
    cache keys hash its fields, :meth:`mnist_aux.sweeps.Point.describe`).

    loss       ``"kl"``: the official ``KL(softmax(teacher) || softmax(student))`` over the
               imitated logits; ``"mse"``: squared error of the raw logits, averaged over
               the imitated logits (torch's ``mse_loss`` per example).
    reduction  ``"mean"``: the per-example losses are averaged over the batch;
               ``"batchmean"``: summed over the batch (what torch's ``reduction="batchmean"``
               does in the official script, whose input is ``[models, batch, m]``: it divides
               by the number of models, so each model's loss is its batch SUM).
    optimizer  ``"adam"`` (torch defaults) or ``"sgd"`` (plain, no momentum); the rate is per
               student (:func:`run`'s ``lrs``), default ``lr``.
    inputs     one of :data:`mnist_aux.inputs.INPUTS` (synthetic ones have per-pixel std
               ``inputs.INPUT_STD``).
    logits     ``"aux"``: imitate the m auxiliary logits only; ``"all"``: all 10 + m.
    """

    loss: str = "kl"
    reduction: str = "mean"
    optimizer: str = "adam"
    lr: float = 3e-4
    inputs: str = "uniform"
    logits: str = "aux"

    def __post_init__(self):
        for name, allowed in (("loss", LOSSES), ("reduction", REDUCTIONS), ("optimizer", OPTIMIZERS),
                              ("inputs", inputs.INPUTS), ("logits", engine.LOGITS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"Distill.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"Distill.lr must be > 0, got {self.lr}")

    def replace(self, **changes) -> "Distill":
        return dataclasses.replace(self, **changes)

    def student(self, init: str = "shared", lr: float | None = None) -> engine.Student:
        """The engine's arm of one student of this setting."""
        return engine.Student(init=init, logits=self.logits, loss=self.loss, reduction=self.reduction,
                              optimizer=self.optimizer, lr=self.lr if lr is None else lr)

    def imitation_loss(self, cfg: Config) -> theory.ImitationLoss:
        """The per-example loss as a theory-core :class:`theory.ImitationLoss`."""
        return self.student().imitation_loss(cfg)


def _checked(cfg: Config, spec: Distill, inits, lrs, seeds, images):
    """:func:`run`'s arguments checked and normalised: ``(inits, lrs, seeds, images)``, the images cut to
    the distillation set (image inputs) or reduced to their pixel moments (moment-matched noise)."""
    inits = list(inits)
    for name in inits:
        parse_init(name)
    lrs = [spec.lr] * len(inits) if lrs is None else [float(v) for v in lrs]
    if len(lrs) != len(inits):
        raise ValueError(f"{len(lrs)} learning rates for {len(inits)} students")
    if any(not v > 0 for v in lrs):
        raise ValueError(f"learning rates must be > 0, got {lrs}")
    seeds = [int(s) for s in seeds]
    if len(set(seeds)) != len(seeds) or len(seeds) < 2:
        raise ValueError("need at least 2 distinct seeds (cross-model students use another seed's init)")
    if spec.inputs in inputs.IMAGES + inputs.MOMENTS and images is None:
        raise ValueError(f"inputs={spec.inputs!r} needs the images (uint8 [n, 784])")
    if spec.inputs in inputs.IMAGES:
        if images.shape[0] < cfg.n_noise:
            raise ValueError(f"{images.shape[0]} images for n_noise={cfg.n_noise}")
        images = np.asarray(images[: cfg.n_noise])
    elif spec.inputs in inputs.MOMENTS:
        images = inputs.moments(images)
    return inits, lrs, seeds, images


def _student_rows(out: engine.Outcome, inits, lrs, n_seeds: int) -> list[dict]:
    """Per student of the plan: its per-seed accuracy, losses and theory link, with summaries."""
    acc = out.accuracy[:, 2:]  # [S, K]
    by_epoch = out.loss_by_epoch.transpose(0, 2, 1)  # [S, K, epochs]
    inner, cos = out.inner, out.cosine
    students_out = []
    for k, name in enumerate(inits):
        final = by_epoch[:, k, -1] if by_epoch.shape[-1] else np.full(n_seeds, np.nan)
        students_out.append({
            "init": name, "lr": lrs[k],
            "accuracy": acc[:, k].tolist(), "accuracy_summary": mean_ci(acc[:, k]),
            "final_loss": final.tolist(), "loss_by_epoch": by_epoch[:, k].tolist(),
            "theory_inner": inner[:, k].tolist(), "theory_cosine": cos[:, k].tolist(),
            "theory_cosine_summary": mean_ci(cos[:, k]), "theory_inner_summary": mean_ci(inner[:, k]),
        })
    return students_out


def run(cfg: Config, spec: Distill, inits, seeds, data: Dataset, *, lrs=None, images=None, pairing_seed: int = 0,
        teacher_cache: Path | None = teachers.CACHE, seeds_per_chunk: int = 25, devices=None) -> dict:
    """Train one teacher per seed and K students per teacher; evaluate; return a results dict.

    ``inits``: K names (:data:`INITS_HELP`). ``lrs``: K learning rates (default
    ``spec.lr`` for all). ``images``: uint8 ``[n, 784]`` training images of the distillation
    set when ``spec.inputs`` is ``mnist`` / ``fashion_mnist`` (for ``uniform_mnist_*``: the
    images whose pixel moments the noise matches, the teacher's training images). ``teacher_cache``: the teachers'
    cache folder (:mod:`mnist_aux.teachers`; ``None``: no cache). ``devices`` (default all) carry the
    seed axis (:func:`mnist_aux.engine.run`). The dict has, per student,
    per-seed test accuracy and final-epoch loss with summaries, the theory link at step 0,
    the teachers' accuracy, the config, seeds, pairing and timing.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    inits, lrs, seeds, images = _checked(cfg, spec, inits, lrs, seeds, images)
    perm = train.derangement(len(seeds), pairing_seed)
    partners = [seeds[p] for p in perm]

    all_teachers, teacher_losses, teacher_info = teachers.trained(cfg, seeds, data, cache=teacher_cache)
    plan = engine.Plan(tuple(spec.student(name, lr) for name, lr in zip(inits, lrs)), inputs=spec.inputs)
    out = engine.run(cfg, plan, seeds, data, partners=partners, teachers=all_teachers, images=images,
                     seeds_per_chunk=seeds_per_chunk, devices=devices)
    students_out = _student_rows(out, inits, lrs, len(seeds))
    teacher_acc, ref_acc = out.accuracy[:, 1], out.accuracy[:, 0]
    return {
        "config": cfg.to_dict(), "distill": dataclasses.asdict(spec), "inits": inits,
        "seeds": seeds, "cross_init_seed": partners, "pairing": f"derangement(n={len(seeds)}, seed={pairing_seed})",
        "students": students_out,
        "teacher_accuracy": teacher_acc.tolist(), "teacher_summary": mean_ci(teacher_acc),
        "reference_accuracy": ref_acc.tolist(), "reference_summary": mean_ci(ref_acc),
        "teacher_ce_by_epoch": np.asarray(teacher_losses).tolist(), "teacher": teacher_info,
        "wall_seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start,
        "versions": versions(),
    }
