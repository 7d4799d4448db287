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
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import theory
from harness.results import provenance
from theory.stats import mean_ci
from mnist_aux import dissect, teachers, train
from mnist_aux.configs import Config
from mnist_aux.data import Dataset, normalize
from mnist_aux.model import apply

ARMS = ("none", "trait", "displacement", "liminal")
ARM_LABELS = {"none": "no intervention", "trait": "update ⊥ trait gradient",
              "displacement": "update ⊥ teacher displacement", "liminal": "liminal (KL to reference, epoch 1)"}
PROBE = 1024  # labelled training images behind the trait gradient (the last PROBE of the training set)
_KL = theory.softmax_kl()  # over all 10 + m logits: the liminal penalty


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


def _metrics(u, disp, g):
    neg_g = optax.tree.scale(-1.0, g)
    return {"inner_disp": theory.inner(u, disp), "cos_disp": theory.cosine(u, disp),
            "inner_trait": theory.inner(u, neg_g), "cos_trait": theory.cosine(u, neg_g)}


def epoch(arm: str, cfg: Config, liminal_weight: float, student, opt_state, theta0, teacher,
          keys: train.SeedKeys, ep, probe_x, probe_y):
    """One distillation epoch of one seed's student under ``arm``; per-step metrics."""
    tx = optax.adam(cfg.lr)
    imitation = dissect.Distill().imitation_loss(cfg)  # Figure 10's aux-only KL
    disp = optax.tree.sub(teacher, theta0)

    def loss_fn(params, x, z):
        y = apply(params, x)
        kl = imitation.value(y, z).mean()
        if arm == "liminal":
            penalty = _KL.value(y, apply(theta0, x)).mean()
            return kl + jnp.where(ep == 0, liminal_weight, 0.0) * penalty, kl
        return kl, kl

    def step(carry, b, size):
        params, opt_state = carry
        x = train.noise_batch(keys.noise, b, size)
        (_, kl), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, apply(teacher, x))
        g_trait = trait_gradient(params, probe_x, probe_y)
        against = {"trait": g_trait, "displacement": disp}.get(arm)
        if against is not None:
            grads = project_out(grads, against)
        updates, opt_state = tx.update(grads, opt_state, params)
        if against is not None:
            updates = project_out(updates, against)
        m = _metrics(updates, disp, g_trait)
        m["kl"] = kl
        m["residual_cos"] = jnp.abs(theory.cosine(updates, against)) if against is not None else jnp.zeros(())
        return (optax.apply_updates(params, updates), opt_state), m

    carry, ms = train.noise_epoch(step, (student, opt_state), cfg, keys, ep)
    return *carry, ms


def run(cfg: Config, seeds, data: Dataset, *, arms=ARMS, log_every: int = 10, liminal_weight: float = 1.0,
        teacher_cache: Path | None = teachers.CACHE, progress: bool = True, command: str | None = None) -> dict:
    """Train the shared-init aux-only student under each arm for every seed; return results.

    ``teacher_cache``: the teachers' cache folder (:mod:`mnist_aux.teachers`; ``None``: none).
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
    keys, theta0 = train.references(cfg, jnp.asarray(seeds, jnp.int32))
    probe_x = normalize(jnp.asarray(data.train_x[-PROBE:]))
    probe_y = jnp.asarray(data.train_y[-PROBE:])
    test_x, test_y = jnp.asarray(data.test_x), jnp.asarray(data.test_y)
    acc_fn = jax.jit(jax.vmap(lambda p: train.accuracy(jax.tree.map(lambda a: a[None], p), test_x, test_y)[0]))
    init_fn = jax.jit(jax.vmap(optax.adam(cfg.lr).init))

    out = {}
    for arm in arms:
        epoch_fn = jax.jit(jax.vmap(partial(epoch, arm, cfg, liminal_weight), in_axes=(0, 0, 0, 0, 0, None, None, None)))
        student, opt_state = theta0, init_fn(theta0)
        accs, logs = [np.asarray(acc_fn(student))], []
        for ep in range(cfg.distill_epochs):
            student, opt_state, ms = epoch_fn(student, opt_state, theta0, trained, keys, np.int32(ep), probe_x, probe_y)
            logs.append(jax.tree.map(np.asarray, ms))
            accs.append(np.asarray(acc_fn(student)))
            if progress:
                print(f"alignment: arm {arm}, epoch {ep + 1}/{cfg.distill_epochs}: accuracy "
                      f"{accs[-1].mean():.3f}, KL {logs[-1]['kl'][:, -1].mean():.2e}", flush=True)
        series = {k: np.concatenate([lg[k] for lg in logs], axis=1) for k in logs[0]}  # [S, steps]
        acc = np.stack(accs, axis=1)  # [S, epochs + 1]
        kept = np.arange(0, series["kl"].shape[1], log_every)
        out[arm] = {
            "label": ARM_LABELS[arm],
            "accuracy_by_epoch": acc.tolist(), "final_accuracy": acc[:, -1].tolist(),
            "final_accuracy_summary": mean_ci(acc[:, -1]),
            "kl_first_epoch_mean": series["kl"][:, :len(logs[0]["kl"][0])].mean(axis=1).tolist(),
            "kl_last_epoch_mean": series["kl"][:, -len(logs[-1]["kl"][0]):].mean(axis=1).tolist(),
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
