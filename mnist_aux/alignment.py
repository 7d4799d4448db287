"""Multi-step alignment of aux-only distillation, and the interventions that test it.

Theorem 1 speaks of ONE small step. Here the shared-init, aux-only student of Figure 10 is
followed through all its steps (Kitkana & Arora, arXiv 2604.25779). At every step ``t`` the
update actually taken, ``u_t = theta_{t+1} - theta_t``, is compared with

* the teacher's displacement ``D = theta_T - theta_0``, and
* the trait direction ``-g_t``, minus the gradient of the digit cross-entropy at the
  current student on a fixed probe set of labelled training images,

by inner product and cosine; the series is stored every ``log_every`` steps. The arms
(:data:`ARMS`) change the update:

``none``          Figure 10's student (Adam on the aux-only KL).
``trait``         each step's gradient AND Adam's resulting update are projected onto the
                  orthogonal complement of ``g_t`` (recomputed at every step), so no step
                  moves along the trait gradient (the projection is applied twice, which
                  makes the float32 residual cosine ~1e-7).
``displacement``  the same with the fixed direction ``D``.
``liminal``       "liminal training": during the first epoch the loss gains
                  ``liminal_weight * KL(softmax f(theta_0, x) || softmax f(theta, x))`` over all
                  10 + m logits on the same noise, a penalty for leaving the reference.

Test accuracy is measured at the start and after every epoch. All arms of a seed use the
same teacher, noise batches and batch order as Figure 10.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import theory
from harness.results import provenance
from theory.stats import mean_ci
from mnist_aux import engine, teachers, train
from mnist_aux.configs import Config
from mnist_aux.data import Dataset, normalize
from mnist_aux.model import apply

ARMS = ("none", "trait", "displacement", "liminal")
ARM_LABELS = {"none": "no intervention", "trait": "update ⊥ trait gradient",
              "displacement": "update ⊥ teacher displacement", "liminal": "liminal (KL to reference, epoch 1)"}
PROBE = 1024  # labelled training images behind the trait gradient (the last PROBE of the training set)
_KL = theory.softmax_kl()  # over all 10 + m logits: the liminal penalty
SERIES = ("inner_disp", "cos_disp", "inner_trait", "cos_trait", "kl", "residual_cos")  # per step; kl: the imitation loss


def project_out(tree, d):
    """``tree - (<tree, d> / <d, d>) d``, applied twice (re-orthogonalisation); ``d = 0`` leaves it."""
    dd = theory.inner(d, d)
    for _ in range(2):
        c = jnp.where(dd > 0, theory.inner(tree, d) / jnp.where(dd > 0, dd, 1.0), 0.0)
        tree = jax.tree.map(lambda a, b: a - c * b, tree, d)
    return tree


def trait_gradient(params, probe_x, probe_y):
    """Gradient of the mean digit cross-entropy (10 digit logits) on the probe set."""
    return jax.grad(train.teacher_loss)(params, probe_x, probe_y)


@dataclass(frozen=True)
class Intervention:
    """One arm of :data:`ARMS` as the engine's per-step hook (:class:`mnist_aux.engine.Hook`).

    Every step it measures the student's update ``u_t`` (after Adam and the rate) against the
    teacher's displacement ``D = theta_T - theta_0`` and the trait direction ``-g_t`` (the digit
    cross-entropy's gradient at the current student on the probe set); ``trait`` and
    ``displacement`` project ``g_t`` or ``D`` out of the gradient and out of the update;
    ``liminal`` adds its penalty to the loss in the first epoch.
    """

    arm: str
    liminal_weight: float = 1.0
    needs_reference = True

    def prepare(self, teacher, ref, shared):
        return {"disp": optax.tree.sub(teacher, ref), "ref": ref, "probe": shared}

    def state(self, params, ctx):
        return trait_gradient(params, *ctx["probe"])

    def _against(self, g_trait, ctx):
        return {"trait": g_trait, "displacement": ctx["disp"]}.get(self.arm)

    def penalty(self, y, x, ctx, epoch):
        if self.arm != "liminal":
            return None
        return jnp.where(epoch == 0, self.liminal_weight, 0.0) * _KL.value(y, apply(ctx["ref"], x)).mean()

    def gradient(self, grads, g_trait, ctx):
        against = self._against(g_trait, ctx)
        return grads if against is None else project_out(grads, against)

    def update(self, updates, g_trait, ctx):
        return self.gradient(updates, g_trait, ctx)

    def metrics(self, updates, g_trait, ctx):
        neg_g, disp, against = optax.tree.scale(-1.0, g_trait), ctx["disp"], self._against(g_trait, ctx)
        return {"inner_disp": theory.inner(updates, disp), "cos_disp": theory.cosine(updates, disp),
                "inner_trait": theory.inner(updates, neg_g), "cos_trait": theory.cosine(updates, neg_g),
                "residual_cos": jnp.abs(theory.cosine(updates, against)) if against is not None else jnp.zeros(())}


def run(cfg: Config, seeds, data: Dataset, *, arms=ARMS, log_every: int = 10, liminal_weight: float = 1.0,
        teacher_cache: Path | None = teachers.CACHE, progress: bool = True, command: str | None = None,
        devices=None) -> dict:
    """Train the shared-init aux-only student under each arm for every seed; return results.

    Each arm is one run of the student engine (:func:`mnist_aux.engine.run`, all seeds in one
    chunk, the arm as its per-step hook :class:`Intervention`). ``teacher_cache``: the teachers'
    cache folder (:mod:`mnist_aux.teachers`; ``None``: none); ``devices`` (default all) carry the seed axis.
    """
    start = time.perf_counter()
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; known: {ARMS}")
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")
    if liminal_weight < 0:
        raise ValueError(f"liminal_weight must be >= 0, got {liminal_weight}")
    seeds = [int(s) for s in seeds]
    if len(set(seeds)) != len(seeds) or len(seeds) < 2:
        raise ValueError("need at least 2 distinct seeds")
    trained, _, teacher_info = teachers.trained(cfg, seeds, data, cache=teacher_cache)
    # the students' theta_0 drawn op by op, outside jit, as the committed alignment results were: it rounds
    # differently from the compiled draw the teachers started from (by up to ~6e-8 a weight)
    references = train.references(cfg, jnp.asarray(seeds, jnp.int32))
    probe = (normalize(jnp.asarray(data.train_x[-PROBE:])), jnp.asarray(data.train_y[-PROBE:]))
    student = engine.Student(lr=cfg.lr)  # Figure 10's shared-init, aux-only student

    out = {}
    for arm in arms:
        def report(ep, loss, steps, acc, arm=arm):
            if progress:
                print(f"alignment: arm {arm}, epoch {ep + 1}/{cfg.distill_epochs}: accuracy "
                      f"{acc.mean():.3f}, KL {steps['loss'][:, -1].mean():.2e}", flush=True)

        plan = engine.Plan((student,), hook=Intervention(arm, liminal_weight), unstacked=True)
        run_ = engine.run(cfg, plan, seeds, data, teachers=trained, references=references, shared=probe, link=False,
                          epoch_accuracy=True, seeds_per_chunk=len(seeds), devices=devices, on_epoch=report)
        series = {k: run_.series["loss" if k == "kl" else k][..., 0] for k in SERIES}  # [S, steps]
        acc = run_.epoch_accuracy[..., 0]  # [S, epochs + 1]
        per_epoch = series["kl"].shape[1] // max(cfg.distill_epochs, 1)
        kept = np.arange(0, series["kl"].shape[1], log_every)
        out[arm] = {
            "label": ARM_LABELS[arm],
            "accuracy_by_epoch": acc.tolist(), "final_accuracy": acc[:, -1].tolist(),
            "final_accuracy_summary": mean_ci(acc[:, -1]),
            "kl_first_epoch_mean": series["kl"][:, :per_epoch].mean(axis=1).tolist(),
            "kl_last_epoch_mean": series["kl"][:, -per_epoch:].mean(axis=1).tolist(),
            "logged_steps": kept.tolist(),
            "series": {k: v[:, kept].tolist() for k, v in series.items() if k != "residual_cos"},
            "max_residual_cos": float(series["residual_cos"].max()),
            "mean_cos_trait_summary": mean_ci(series["cos_trait"].mean(axis=1)),
            "mean_cos_disp_summary": mean_ci(series["cos_disp"].mean(axis=1)),
            "sum_inner_trait_summary": mean_ci(series["inner_trait"].sum(axis=1)),
            "sum_inner_disp_summary": mean_ci(series["inner_disp"].sum(axis=1)),
        }
    return {"config": cfg.to_dict(), "seeds": seeds, "arms": list(arms), "log_every": log_every,
            "liminal_weight": liminal_weight, "probe": f"last {PROBE} training images", "teacher": teacher_info,
            "data": data.source, "results": out, "wall_seconds": time.perf_counter() - start,
            **provenance(command)}
