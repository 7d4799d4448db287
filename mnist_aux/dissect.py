"""The dissection engine: one teacher per seed, K students of any kind, many seeds at once.

Figure 10 (:mod:`mnist_aux.experiment`) trains four fixed students. Dissecting the effect
needs students that differ in ONE factor at a time: the imitation loss (KL on softmax or
MSE on raw logits), its reduction over the batch, the optimizer and its rate, where the
student starts (:data:`INITS_HELP`), and what it is distilled on (:mod:`mnist_aux.inputs`). A
:class:`Distill` fixes the loss, reduction, optimizer and inputs; each student of a run
has its own initialisation and learning rate, and all K students of a seed see the same
input batch and the same teacher outputs (computed once). Seeds are vmapped, as in
Figure 10, and a seed's numbers do not depend on the seeds beside it.

Keys, inits, noise batches, their order and the epoch skeleton come from
:mod:`mnist_aux.train` (``train.setup``, ``train.noise_epoch``), so the student
``Distill()`` with init ``"shared"`` is the Figure-10 aux-only student of the same seed
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
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import theory
from harness.results import versions
from theory.stats import mean_ci
from mnist_aux import inputs, teachers, train
from mnist_aux.configs import Config
from mnist_aux.data import Dataset
from mnist_aux.model import apply

LOSSES = ("kl", "mse")
REDUCTIONS = ("mean", "batchmean")
OPTIMIZERS = ("adam", "sgd")
INITS_HELP = {
    "shared": "the teacher's own initialisation theta_0 (Theorem 1's setting)",
    "cross": "another seed's theta_0 (a derangement pairs the seeds)",
    "sigma=S": "theta_0 + S * std(layer) * N(0, I), each layer's std as drawn (S >= 0)",
    "cross_hidden": "hidden layers from another seed's theta_0, output head theta_0's (re-initialised hidden, kept heads)",
    "cross_head": "hidden layers theta_0's, output head from another seed's theta_0 (kept hidden, re-initialised heads)",
}


@dataclass(frozen=True)
class Distill:
    """How the students imitate the teacher (one setting for all students of a run).

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
                              ("inputs", inputs.INPUTS), ("logits", ("aux", "all"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"Distill.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"Distill.lr must be > 0, got {self.lr}")

    def replace(self, **changes) -> "Distill":
        return dataclasses.replace(self, **changes)

    def imitation_loss(self, cfg: Config) -> theory.ImitationLoss:
        """The per-example loss as a theory-core :class:`theory.ImitationLoss`."""
        idx = cfg.aux_indices if self.logits == "aux" else None
        if self.loss == "kl":
            return theory.softmax_kl(idx)
        k = cfg.n_aux if self.logits == "aux" else cfg.n_out
        return theory.weighted_mse([1.0 / k] * k, idx)


def parse_init(name: str) -> tuple[str, float]:
    """``"sigma=0.3" -> ("sigma", 0.3)``; other names -> ``(name, 0.0)``; bad names raise."""
    if name.startswith("sigma="):
        try:
            sigma = float(name.split("=", 1)[1])
        except ValueError:
            raise ValueError(f"bad init {name!r}: sigma must be a number, e.g. 'sigma=0.2'") from None
        if not sigma >= 0:
            raise ValueError(f"bad init {name!r}: sigma must be >= 0")
        return "sigma", sigma
    if name not in INITS_HELP or name == "sigma=S":
        raise ValueError(f"unknown init {name!r}; known: shared, cross, sigma=S, cross_hidden, cross_head")
    return name, 0.0


# ----------------------------------------------------------------- per-seed pieces


def student_init(kind: str, sigma: float, theta0, theta0_cross, key):
    """One student's initial parameters (see :data:`INITS_HELP`)."""
    if kind == "shared":
        return theta0
    if kind == "cross":
        return theta0_cross
    if kind == "sigma":  # std of each layer's init as drawn; zero-initialised biases stay zero
        return theory.perturbed_init(theta0, sigma, key)
    if kind == "cross_hidden":
        return {name: (theta0 if name == "out" else theta0_cross)[name] for name in theta0}
    if kind == "cross_head":
        return {name: (theta0_cross if name == "out" else theta0)[name] for name in theta0}
    raise ValueError(kind)


def batch_loss(spec: Distill, cfg: Config, params, x, z) -> jax.Array:
    """One student's loss on a batch: the reduction of the per-example imitation losses."""
    per_example = spec.imitation_loss(cfg).value(apply(params, x), z)
    return per_example.sum() if spec.reduction == "batchmean" else per_example.mean()


def direction(spec: Distill) -> optax.GradientTransformation:
    """The optimizer without its rate: Adam's scaling (torch defaults) or the identity (SGD)."""
    return optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8) if spec.optimizer == "adam" else optax.identity()


def distill_epoch(spec: Distill, cfg: Config, students, opt_state, lrs, teacher, keys: train.SeedKeys, epoch,
                  images=None):
    """One epoch for the K students of a seed: ``students [K, ...]``, ``lrs [K]``.

    Returns ``(students, opt_state, mean loss per student [K])``. Batches and their order are
    Figure 10's (whole batches reshuffled each epoch, then the last partial batch).
    """
    tx = direction(spec)
    grad_fn = jax.vmap(jax.value_and_grad(partial(batch_loss, spec, cfg)), in_axes=(0, None, None))

    def step(carry, b, size):
        students, opt_state = carry
        x = inputs.batch(spec.inputs, cfg, keys, b, size, images)
        z = apply(teacher, x)
        loss, grads = grad_fn(students, x, z)
        updates, opt_state = jax.vmap(tx.update)(grads, opt_state)
        updates = jax.tree.map(lambda u: -lrs.reshape((-1,) + (1,) * (u.ndim - 1)) * u, updates)
        return (optax.apply_updates(students, updates), opt_state), loss

    carry, losses = train.noise_epoch(step, (students, opt_state), cfg, keys, epoch)
    return *carry, losses.mean(axis=0)


# ---------------------------------------------------------------------------- run


def _setup_program(cfg: Config, kinds: tuple[tuple[str, float], ...]):
    def setup(seeds, partners):
        keys, theta0, theta0_cross = train.setup(cfg, seeds, partners)

        def inits(t0, tc, key):
            sub = jax.random.split(jax.random.fold_in(key, 0x51A), len(kinds))
            return jax.tree.map(lambda *a: jnp.stack(a), *[student_init(k, s, t0, tc, sk)
                                                          for (k, s), sk in zip(kinds, sub)])
        return keys, theta0, jax.vmap(inits)(theta0, theta0_cross, keys.init)
    return jax.jit(setup)


def theory_link(spec: Distill, cfg: Config, students0, theta0, teacher, x0) -> dict[str, np.ndarray]:
    """Leading order of Theorem 1 for each student at its init, per seed: ``[S, K]`` arrays.

    ``dtheta_S`` is minus the gradient of the student's mean imitation loss on its first
    batch ``x0`` at its initial parameters (:func:`theory.student_update`); the teacher
    moved by ``theta_T - theta_0``. Returns their inner product and cosine.
    """
    loss = spec.imitation_loss(cfg)
    n_seeds, n_students = jax.tree.leaves(students0)[0].shape[:2]
    inner, cos = np.zeros((n_seeds, n_students)), np.zeros((n_seeds, n_students))
    for s in range(n_seeds):
        t0, t = jax.tree.map(lambda a: a[s], theta0), jax.tree.map(lambda a: a[s], teacher)
        disp = optax.tree.sub(t, t0)
        for k in range(n_students):
            update = theory.student_update(apply, jax.tree.map(lambda a: a[s, k], students0), t, x0[s], loss)
            inner[s, k], cos[s, k] = float(theory.inner(update, disp)), float(theory.cosine(update, disp))
    return {"inner": inner, "cosine": cos}


def run(cfg: Config, spec: Distill, inits, seeds, data: Dataset, *, lrs=None, images=None, pairing_seed: int = 0,
        teacher_cache: Path | None = teachers.CACHE, seeds_per_chunk: int = 25) -> dict:
    """Train one teacher per seed and K students per teacher; evaluate; return a results dict.

    ``inits``: K names (:data:`INITS_HELP`). ``lrs``: K learning rates (default
    ``spec.lr`` for all). ``images``: uint8 ``[n, 784]`` training images of the distillation
    set when ``spec.inputs`` is ``mnist`` / ``fashion_mnist`` (for ``uniform_mnist_*``: the
    images whose pixel moments the noise matches, the teacher's training images). ``teacher_cache``: the teachers'
    cache folder (:mod:`mnist_aux.teachers`; ``None``: no cache). The dict has, per student,
    per-seed test accuracy and final-epoch loss with summaries, the theory link at step 0,
    the teachers' accuracy, the config, seeds, pairing and timing.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    inits = list(inits)
    kinds = tuple(parse_init(n) for n in inits)
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
        images = jnp.asarray(images[: cfg.n_noise])
    elif spec.inputs in inputs.MOMENTS:
        images = jnp.asarray(inputs.moments(images))
    perm = train.derangement(len(seeds), pairing_seed)
    partners = [seeds[p] for p in perm]

    all_teachers, teacher_losses, teacher_info = teachers.trained(cfg, seeds, data, cache=teacher_cache)
    setup = _setup_program(cfg, kinds)
    epoch_fn = jax.jit(jax.vmap(partial(distill_epoch, spec, cfg), in_axes=(0, 0, None, 0, 0, None, None)),
                       donate_argnums=(0, 1))
    opt_init = jax.jit(jax.vmap(jax.vmap(direction(spec).init)))
    first = jax.jit(jax.vmap(partial(inputs.first_batch, spec.inputs, cfg), in_axes=(0, None)))
    acc_fn = jax.jit(jax.vmap(train.accuracy, in_axes=(0, None, None)))
    test_x, test_y = jnp.asarray(data.test_x), jnp.asarray(data.test_y)
    lr_arr = jnp.asarray(lrs, jnp.float32)

    out_acc, out_inner, out_cos, teacher_acc, ref_acc, losses_by_epoch = [], [], [], [], [], []
    for c0 in range(0, len(seeds), seeds_per_chunk):
        sl = slice(c0, c0 + seeds_per_chunk)
        s_arr = jnp.asarray(seeds[sl], jnp.int32)
        keys, theta0, students = setup(s_arr, jnp.asarray(partners[sl], jnp.int32))
        teacher = jax.tree.map(lambda a: a[sl], all_teachers)
        link = theory_link(spec, cfg, students, theta0, teacher, first(keys, images))
        out_inner.append(link["inner"])
        out_cos.append(link["cosine"])
        opt_state = opt_init(students)
        epochs = []
        for epoch in range(cfg.distill_epochs):
            students, opt_state, loss = epoch_fn(students, opt_state, lr_arr, teacher, keys, np.int32(epoch), images)
            epochs.append(np.asarray(loss))
        del opt_state
        losses_by_epoch.append(np.stack(epochs, axis=-1) if epochs else np.zeros((len(seeds[sl]), len(inits), 0)))
        out_acc.append(np.asarray(acc_fn(students, test_x, test_y)))
        both = jax.tree.map(lambda a, b: jnp.stack([a, b], axis=1), theta0, teacher)
        ref_teacher = np.asarray(acc_fn(both, test_x, test_y))
        ref_acc.append(ref_teacher[:, 0])
        teacher_acc.append(ref_teacher[:, 1])

    acc = np.concatenate(out_acc)  # [S, K]
    by_epoch = np.concatenate(losses_by_epoch)  # [S, K, epochs]
    inner, cos = np.concatenate(out_inner), np.concatenate(out_cos)
    students_out = []
    for k, name in enumerate(inits):
        final = by_epoch[:, k, -1] if by_epoch.shape[-1] else np.full(len(seeds), np.nan)
        students_out.append({
            "init": name, "lr": lrs[k],
            "accuracy": acc[:, k].tolist(), "accuracy_summary": mean_ci(acc[:, k]),
            "final_loss": final.tolist(), "loss_by_epoch": by_epoch[:, k].tolist(),
            "theory_inner": inner[:, k].tolist(), "theory_cosine": cos[:, k].tolist(),
            "theory_cosine_summary": mean_ci(cos[:, k]), "theory_inner_summary": mean_ci(inner[:, k]),
        })
    teacher_acc, ref_acc = np.concatenate(teacher_acc), np.concatenate(ref_acc)
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
