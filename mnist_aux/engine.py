"""The student engine: every student the package trains, K per seed, many seeds at once.

Figure 10's four students (:mod:`mnist_aux.experiment`), the K students of a dissection or sweep
point (:mod:`mnist_aux.dissect`) and the alignment runs (:mod:`mnist_aux.alignment`) are arms of
this one engine. An arm is a :class:`Student`: where it starts (:data:`INITS_HELP`), which logits it
imitates, its loss and that loss's reduction over the batch, its optimizer and its rate. A run is a
:class:`Plan`: K students, the distillation inputs they all see (:mod:`mnist_aux.inputs`) and
optionally a :class:`Hook` that acts on every step of every student (the alignment's projections,
penalty and per-step measurements).

One seed's K students are one stack ``[K, ...]``. They see the same input batch and the same
teacher outputs (computed once per batch); their forward pass is one ``vmap`` over the stack (the
first layer of all K is one matmul); the gradient of the SUM of their losses gives each student its
own gradient; one optax transformation (Adam's scaling or SGD's identity, then each student's rate)
updates the stack. :func:`distill_epoch` is the one distillation epoch.

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
from typing import Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import theory
from mnist_aux import inputs, train
from mnist_aux.configs import Config
from mnist_aux.data import Dataset
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
    devices = list(devices or jax.devices())
    mesh = jax.make_mesh((len(devices),), ("seeds",), (jax.sharding.AxisType.Auto,), devices=devices)
    per_seed, replicated = NamedSharding(mesh, P("seeds")), NamedSharding(mesh, P())
    n_chunks, chunk = chunking(len(seeds), seeds_per_chunk, len(devices))
    test_x, test_y = (jax.device_put(a, replicated) for a in (data.test_x, data.test_y))
    if teachers is None:
        train_x = jax.device_put(data.train_x[: cfg.n_train], replicated)
        train_y = jax.device_put(data.train_y[: cfg.n_train], replicated)
    extra = {}
    if images is not None:
        extra["images"] = jax.device_put(images, replicated)
    if shared is not None:
        extra["shared"] = jax.device_put(shared, replicated)
    images = extra.get("images")

    programs = Programs(cfg, plan)
    phase_seconds = {"setup": 0.0, "teacher": 0.0, "distill": 0.0, "eval": 0.0, "theory_cosines": 0.0}
    teacher_work = train.flops_per_seed(cfg.replace(distill_epochs=0))["ours"] if teachers is None else 0
    work = {"teacher": teacher_work, "distill": train.flops_per_seed(cfg)["ours"] - teacher_work}
    per_epoch = {phase: 100.0 * w / sum(work.values()) / n_chunks / max(epochs, 1)
                 for (phase, w), epochs in zip(work.items(), (cfg.teacher_epochs, cfg.distill_epochs))}

    def timed(phase, name, *args):
        t0 = time.perf_counter()
        out = jax.block_until_ready(programs(name, *args))
        phase_seconds[phase] += time.perf_counter() - t0
        return out

    def status(text):
        if bar is not None:
            bar.set_postfix_str(f"chunk {c + 1}/{n_chunks} {text}")

    out = {"accuracy": [], "loss_by_epoch": [], "teacher_loss": [], "inner": [], "cosine": [], "epoch_accuracy": [],
           "series": []}
    for c in range(n_chunks):
        idx = list(range(c * chunk, min((c + 1) * chunk, len(seeds))))
        n_real = len(idx)
        idx += [idx[-1]] * (chunk - n_real)  # pad to the compiled shape; padded results dropped
        s_arr = jax.device_put(np.asarray([seeds[i] for i in idx], np.int32), per_seed)
        p_arr = None if partners is None else jax.device_put(np.asarray([partners[i] for i in idx], np.int32), per_seed)
        if references is None:
            keys, theta0, students = timed("setup", "start", s_arr, p_arr)
        else:
            keys, theta0 = jax.device_put(jax.tree.map(lambda a: a[np.asarray(idx)], references), per_seed)
            students = timed("setup", "students", theta0, None, keys.init)
        if teachers is None:
            teacher = jax.tree.map(jnp.copy, theta0)
            opt_state = timed("setup", "opt_init", teacher)
            losses = []
            for epoch in range(cfg.teacher_epochs):
                status(f"teacher epoch {epoch + 1}/{cfg.teacher_epochs}")
                teacher, opt_state, loss = timed("teacher", "teacher_epoch", teacher, opt_state, keys.shuffle,
                                                 np.int32(epoch), train_x, train_y)
                losses.append(host(loss))
                if bar is not None:
                    bar.update(per_epoch["teacher"])
            out["teacher_loss"].append(np.stack(losses, 1)[:n_real] if losses else np.zeros((n_real, 0)))
        else:
            teacher = jax.device_put(jax.tree.map(lambda a: a[np.asarray(idx)], teachers), per_seed)

        if link:
            status("theory cosines")
            x0 = timed("theory_cosines", "first_batch", keys, images)
            t0 = time.perf_counter()
            args = (students, theta0, teacher, x0)
            if jax.process_count() > 1:  # the per-seed loop indexes seeds other hosts hold
                args = host(args)
            chunk_link = theory_link(plan, cfg, *args, n_real)
            phase_seconds["theory_cosines"] += time.perf_counter() - t0
            out["inner"].append(chunk_link["inner"])
            out["cosine"].append(chunk_link["cosine"])
            del x0

        opt_state = timed("setup", "student_opt_init", students)
        step_extra = dict(extra, **({"reference": theta0} if plan.hook is not None and plan.hook.needs_reference
                                    else {}))
        accs = [host(timed("eval", "accuracy", students, test_x, test_y))[:n_real]] if epoch_accuracy else []
        losses, series = [], []
        for epoch in range(cfg.distill_epochs):
            status(f"distill epoch {epoch + 1}/{cfg.distill_epochs}")
            students, opt_state, loss, steps = timed("distill", "distill_epoch", students, opt_state, teacher, keys,
                                                     np.int32(epoch), *([step_extra] if step_extra else []))
            losses.append(host(loss)[:n_real])
            series.append({k: v[:n_real] for k, v in host(steps).items()})
            if epoch_accuracy:
                accs.append(host(timed("eval", "accuracy", students, test_x, test_y))[:n_real])
            if on_epoch is not None:
                on_epoch(epoch, losses[-1], series[-1], accs[-1] if epoch_accuracy else None)
            if bar is not None:
                bar.update(per_epoch["distill"])
        del opt_state
        status("evaluation")
        models = timed("eval", "stack", theta0, teacher, students)  # [S, 2 + K, ...]
        out["accuracy"].append(host(timed("eval", "accuracy", models, test_x, test_y))[:n_real])
        out["loss_by_epoch"].append(np.stack(losses, 1) if losses else np.zeros((n_real, 0, len(plan.students))))
        if epoch_accuracy:
            out["epoch_accuracy"].append(np.stack(accs, 1))
        if series and series[0]:
            out["series"].append({k: np.concatenate([s[k] for s in series], axis=1) for k in series[0]})
        del models, students, teacher, theta0

    joined = {k: np.concatenate(v) if v else None for k, v in out.items() if k != "series"}
    return Outcome(
        accuracy=joined["accuracy"], loss_by_epoch=joined["loss_by_epoch"], teacher_loss=joined["teacher_loss"],
        inner=joined["inner"], cosine=joined["cosine"], epoch_accuracy=joined["epoch_accuracy"],
        series={k: np.concatenate([s[k] for s in out["series"]]) for k in out["series"][0]} if out["series"] else {},
        timing={"compile_seconds": programs.compile_seconds, "phase_seconds": phase_seconds, "n_chunks": n_chunks,
                "seeds_per_chunk": chunk})
