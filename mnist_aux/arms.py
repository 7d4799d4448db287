"""The arms of the student engine (:mod:`mnist_aux.engine`) and one seed's distillation epoch.

An arm is a :class:`Student`: where it starts (:data:`INITS_HELP`), which logits it imitates, its
loss and that loss's reduction over the batch, its optimizer and its rate. A :class:`Plan` is K
students, the distillation inputs they all see (:mod:`mnist_aux.inputs`) and optionally a
:class:`Hook` acting on every step of every student (the alignment's projections, penalty and
per-step measurements).

One seed's K students are one stack ``[K, ...]``. They see the same input batch and the same
teacher outputs (computed once per batch); their forward pass is one ``vmap`` over the stack (the
first layer of all K is one matmul); the gradient of the SUM of their losses gives each student its
own gradient; one optax transformation (Adam's scaling or SGD's identity, then each student's rate)
updates the stack. :func:`distill_epoch` is the one distillation epoch; :func:`theory_link` the
step-0 link to Theorem 1. Everything here is per seed: :func:`mnist_aux.engine.run` vmaps it over
seeds and shards those over devices.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

import theory
from mnist_aux import inputs, train
from mnist_aux.configs import Config
from mnist_aux.model import apply

LOSSES = ("kl", "mse")
REDUCTIONS = ("mean", "batchmean")
OPTIMIZERS = ("adam", "sgd")
LOGITS = ("aux", "all")
INITS_HELP = {
    "shared": "the teacher's own initialisation theta_0 (Theorem 1's setting)",
    "cross": "another seed's theta_0 (a derangement pairs the seeds)",
    "sigma=S": "theta_0 + S * std(layer) * N(0, I), each layer's std as drawn (S >= 0)",
    "cross_hidden": "hidden layers from another seed's theta_0, output head theta_0's (re-initialised hidden, kept heads)",
    "cross_head": "hidden layers theta_0's, output head from another seed's theta_0 (kept hidden, re-initialised heads)",
}
SIGMA_SALT = 0x51A  # the sigma students' noise: split from fold_in(init key, SIGMA_SALT), one key per student


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


@dataclass(frozen=True)
class Student:
    """One arm: how one student of a seed starts and learns.

    init       :data:`INITS_HELP` (``"shared"``, ``"cross"``, ``"sigma=S"``, ``"cross_hidden"``, ``"cross_head"``)
    logits     ``"aux"``: imitate the m auxiliary logits only (:attr:`Config.aux_indices`); ``"all"``: all 10 + m
    loss       ``"kl"``: the official ``KL(softmax(teacher) || softmax(student))`` over the imitated
               logits; ``"mse"``: squared error of the raw logits, averaged over the imitated logits
    reduction  ``"mean"``: per-example losses averaged over the batch; ``"batchmean"``: summed over it
               (torch's ``reduction="batchmean"`` on the official script's ``[models, batch, m]`` input)
    optimizer  ``"adam"`` (torch defaults: betas 0.9/0.999, eps 1e-8) or ``"sgd"`` (plain)
    lr         the rate
    """

    init: str = "shared"
    logits: str = "aux"
    loss: str = "kl"
    reduction: str = "mean"
    optimizer: str = "adam"
    lr: float = 3e-4

    def __post_init__(self):
        parse_init(self.init)
        for name, allowed in (("logits", LOGITS), ("loss", LOSSES), ("reduction", REDUCTIONS),
                              ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def imitation_loss(self, cfg: Config) -> theory.ImitationLoss:
        """The per-example loss on the full outputs ``[B, 10 + m]`` as a theory-core
        :class:`theory.ImitationLoss` (training, and the step-0 theory link :func:`theory.student_update`)."""
        indices = cfg.aux_indices if self.logits == "aux" else None
        if self.loss == "kl":
            return theory.softmax_kl(indices)
        k = cfg.n_aux if self.logits == "aux" else cfg.n_out
        return theory.weighted_mse([1.0 / k] * k, indices)

    def per_example(self, cfg: Config, y: jax.Array, z: jax.Array) -> jax.Array:
        """Per-example imitation loss of outputs ``y [..., B, 10 + m]`` against the teacher's ``z``: ``[..., B]``.

        The imitated logits are taken by :attr:`Config.aux_indices` (the theory core's subset loss, a gather),
        not by slicing: a slice's gradient rounds differently in float32 under a batch-sum reduction, and the
        committed sweeps were computed with the gather.
        """
        return self.imitation_loss(cfg).value(y, z)

    def reduce(self, per_example: jax.Array) -> jax.Array:
        """The batch reduction of per-example losses ``[..., B] -> [...]``."""
        return per_example.sum(axis=-1) if self.reduction == "batchmean" else per_example.mean(axis=-1)


class Hook(Protocol):
    """What a run does at every step of every student, besides imitating the teacher (alignment).

    The engine calls each method per student (``vmap`` over the stack) except :meth:`prepare`,
    once per seed and epoch. ``ctx`` is what :meth:`prepare` returned.

    needs_reference  whether :meth:`prepare` needs the seed's reference init theta_0 (``ref``)
    prepare          ``(teacher, ref, shared) -> ctx``; ``shared``: the run's shared arrays
    state            ``(params, ctx) -> state``: quantities at the student's current parameters
    penalty          ``(y, x, ctx, epoch) -> scalar or None``: added to the student's loss (``y [B, 10 + m]``)
    gradient         ``(grads, state, ctx) -> grads`` before the optimizer
    update           ``(updates, state, ctx) -> updates`` after the optimizer and the rate
    metrics          ``(updates, state, ctx) -> {name: scalar}`` kept for every step
    """

    needs_reference: bool

    def prepare(self, teacher, ref, shared): ...

    def state(self, params, ctx): ...

    def penalty(self, y, x, ctx, epoch): ...

    def gradient(self, grads, state, ctx): ...

    def update(self, updates, state, ctx): ...

    def metrics(self, updates, state, ctx) -> dict: ...


@dataclass(frozen=True)
class Plan:
    """A run: the K students of every seed, the inputs they are distilled on, and a per-step hook.

    ``unstacked``: a lone student (K = 1) runs as a model of its own, not as a stack of one. The two
    agree to float32 rounding only (a ``vmap`` over one model rounds some products differently); the
    alignment's committed runs are the former, a sweep point's lone student the latter.
    """

    students: tuple[Student, ...]
    inputs: str = "uniform"  # one of mnist_aux.inputs.INPUTS
    hook: Hook | None = None
    unstacked: bool = False

    def __post_init__(self):
        if not self.students:
            raise ValueError("a run needs at least one student")
        if self.inputs not in inputs.INPUTS:
            raise ValueError(f"inputs must be one of {inputs.INPUTS}, got {self.inputs!r}")
        if self.unstacked and len(self.students) != 1:
            raise ValueError("only a lone student runs unstacked")

    @property
    def needs_partner(self) -> bool:
        """Whether a student starts (partly) from another seed's theta_0."""
        return any(parse_init(s.init)[0] not in ("shared", "sigma") for s in self.students)


def _runs(students, key) -> list[tuple[int, int]]:
    """``[(start, stop)]``: the stretches of consecutive students with equal ``key(student)``."""
    bounds = [0] + [k for k in range(1, len(students)) if key(students[k]) != key(students[k - 1])] + [len(students)]
    return list(zip(bounds[:-1], bounds[1:]))


# ------------------------------------------------------------------- per-seed pieces


def init_students(plan: Plan, theta0, theta0_cross, key=None):
    """The K students' initial parameters ``[K, ...]`` of one seed, in ``plan.students`` order.

    ``key`` (the seed's init key) is needed by ``sigma`` students only: student k's noise is key k
    of ``split(fold_in(key, SIGMA_SALT), K)``.
    """
    kinds = [parse_init(s.init) for s in plan.students]
    if key is None:
        if any(kind == "sigma" for kind, _ in kinds):
            raise ValueError("sigma students need the seed's init key")
        sub = [None] * len(kinds)
    else:
        sub = jax.random.split(jax.random.fold_in(key, SIGMA_SALT), len(kinds))
    return jax.tree.map(lambda *a: jnp.stack(a), *[student_init(kind, sigma, theta0, theta0_cross, k)
                                                    for (kind, sigma), k in zip(kinds, sub)])


def _rates(lrs) -> optax.GradientTransformation:
    """Each student's rate: the update of student ``k`` (leaves ``[K, ...]``) times ``-lrs[k]``.

    A lone student's update is multiplied by the Python number, as ``optax.scale`` does: the same
    products, but XLA then fuses what follows (the alignment's per-step inner products) as it did
    for the committed runs, which round otherwise.
    """
    def update(updates, state, params=None):
        if len(lrs) == 1:
            return jax.tree.map(lambda u: -lrs[0] * u, updates), state
        lr = jnp.asarray(lrs, jnp.float32)
        return jax.tree.map(lambda u: -lr.reshape((-1,) + (1,) * (u.ndim - 1)) * u, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _direction(kind: str) -> optax.GradientTransformation:
    """The optimizer without its rate: Adam's scaling (torch defaults) or the identity (SGD)."""
    return optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8) if kind == "adam" else optax.identity()


def _by_runs(runs, txs) -> optax.GradientTransformation:
    """Students of different optimizers: transformation ``txs[i]`` on the students ``runs[i]`` of the stack."""
    take = lambda tree, a, b: jax.tree.map(lambda v: v[a:b], tree)  # noqa: E731

    def init(params):
        return tuple(tx.init(take(params, a, b)) for (a, b), tx in zip(runs, txs))

    def update(updates, state, params=None):
        out = [tx.update(take(updates, a, b), s) for (a, b), tx, s in zip(runs, txs, state)]
        return jax.tree.map(lambda *u: jnp.concatenate(u), *[u for u, _ in out]), tuple(s for _, s in out)

    return optax.GradientTransformation(init, update)


def optimizer(plan: Plan) -> optax.GradientTransformation:
    """The stack's optimizer: each student's direction (Adam or SGD), then its own rate.

    With Adam for every student its state has the layout of ``optax.adam``'s (one step count per seed).
    """
    runs = _runs(plan.students, lambda s: s.optimizer)
    direction = (_direction(plan.students[0].optimizer) if len(runs) == 1
                 else _by_runs(runs, [_direction(plan.students[a].optimizer) for a, _ in runs]))
    return optax.chain(direction, _rates([s.lr for s in plan.students]))


def _each(lone: bool, fn, stacked: tuple, shared: tuple = ()):
    """``fn(*one student's trees, *shared)`` for every student of the stack: a ``vmap`` over the
    leading axis K, or the call itself for an unstacked lone student (:class:`Plan`)."""
    if lone:
        return fn(*stacked, *shared)
    return jax.vmap(fn, in_axes=(0,) * len(stacked) + (None,) * len(shared))(*stacked, *shared)


def objective(plan: Plan, cfg: Config, params, x, z, ctx=None, epoch=0):
    """``(sum over students of their losses (with the hook's penalty), imitation loss per student [K])``.

    ``params [K, ...]`` (an unstacked lone student's ``[...]``, its loss then a scalar); ``x [B, 784]``; ``z [B, 10 + m]``
    the teacher's outputs. Students with the same loss, logits and reduction are consecutive stretches of
    the stack, each one slice of the stacked outputs.
    """
    students, hook = plan.students, plan.hook
    lone = plan.unstacked
    y = _each(lone, apply, (params,), (x,))  # [K, B, 10 + m]
    if lone:
        loss = students[0].reduce(students[0].per_example(cfg, y, z))
    else:
        runs = _runs(students, lambda s: (s.loss, s.logits, s.reduction))
        per_example = [students[a].per_example(cfg, y[a:b] if len(runs) > 1 else y, z[None]) for a, b in runs]
        if len({s.reduction for s in students}) == 1:
            loss = students[0].reduce(jnp.concatenate(per_example) if len(runs) > 1 else per_example[0])
        else:
            loss = jnp.concatenate([students[a].reduce(p) for (a, _), p in zip(runs, per_example)])
    objective = loss
    if hook is not None:
        penalty = _each(lone, hook.penalty, (y,), (x, ctx, epoch))
        if penalty is not None:
            objective = loss + penalty
    return objective.sum(), loss


def distill_epoch(plan: Plan, cfg: Config, students, opt_state, teacher, keys: train.SeedKeys, epoch, extra=None):
    """One distillation epoch of one seed's K students ``[K, ...]`` on its inputs (the one epoch function).

    Batches and their order are Figure 10's (:func:`mnist_aux.train.noise_epoch`: whole batches in a
    fresh order each epoch, then the last partial batch); batch ``b`` is
    ``inputs.batch(plan.inputs, ..., b)``. ``extra``: ``images`` (the image inputs' images, or the
    pixel moments), ``reference`` (the seed's theta_0, for a hook that needs it) and ``shared`` (the
    hook's shared arrays). Returns ``(students, opt_state, mean imitation loss per student [K],
    per-step values)``: with a hook, ``{"loss": [steps, K], **its metrics [steps, K]}``, else ``{}``.

    An unstacked plan's lone student runs through the epoch as a model of its own (its stack axis
    dropped at the start and given back at the end; :class:`Plan`).
    """
    extra = extra or {}
    hook, tx = plan.hook, optimizer(plan)
    lone = plan.unstacked
    ctx = None if hook is None else hook.prepare(teacher, extra.get("reference"), extra.get("shared"))
    if lone:  # the optimizer state's leaves with a stack axis are those mirroring the parameters
        students, opt_state = jax.tree.map(lambda a: a[0], students), jax.tree.map(lambda a: a[0] if a.ndim else a,
                                                                                     opt_state)

    def step(carry, b, size):
        params, opt_state = carry
        x = inputs.batch(plan.inputs, cfg, keys, b, size, extra.get("images"))
        z = apply(teacher, x)
        state = None if hook is None else _each(lone, hook.state, (params,), (ctx,))
        (_, loss), grads = jax.value_and_grad(partial(objective, plan, cfg), has_aux=True)(params, x, z, ctx, epoch)
        if hook is not None:
            grads = _each(lone, hook.gradient, (grads, state), (ctx,))
        updates, opt_state = tx.update(grads, opt_state, params)
        out = {"loss": loss}
        if hook is not None:
            updates = _each(lone, hook.update, (updates, state), (ctx,))
            out.update(_each(lone, hook.metrics, (updates, state), (ctx,)))
        if lone:
            out = jax.tree.map(lambda a: a[None], out)
        return (optax.apply_updates(params, updates), opt_state), out

    (students, opt_state), outs = train.noise_epoch(step, (students, opt_state), cfg, keys, epoch)
    if lone:
        students, opt_state = jax.tree.map(lambda a: a[None], students), jax.tree.map(
            lambda a: a[None] if a.ndim else a, opt_state)
    return students, opt_state, outs["loss"].mean(axis=0), (outs if hook is not None else {})


def theory_link(plan: Plan, cfg: Config, students0, theta0, teacher, x0, n: int | None = None) -> dict[str, np.ndarray]:
    """Leading order of Theorem 1 for each student at its init, per seed: ``[S, K]`` arrays.

    ``dtheta_S`` is minus the gradient of the student's mean imitation loss on its first batch ``x0
    [S, B, 784]`` at its initial parameters ``students0 [S, K, ...]`` (:func:`theory.student_update`);
    the teacher moved by ``theta_T - theta_0``. Returns their inner product and cosine, for the first
    ``n`` seeds (default all).
    """
    losses = [s.imitation_loss(cfg) for s in plan.students]
    n_seeds = x0.shape[0] if n is None else n
    inner, cos = np.zeros((n_seeds, len(losses))), np.zeros((n_seeds, len(losses)))
    for s in range(n_seeds):
        t0, t = jax.tree.map(lambda a: a[s], theta0), jax.tree.map(lambda a: a[s], teacher)
        disp = optax.tree.sub(t, t0)
        for k, loss in enumerate(losses):
            update = theory.student_update(apply, jax.tree.map(lambda a: a[s, k], students0), t, x0[s], loss)
            inner[s, k], cos[s, k] = float(theory.inner(update, disp)), float(theory.cosine(update, disp))
    return {"inner": inner, "cosine": cos}
