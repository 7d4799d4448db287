"""The student engine against a plain reference, entry point by entry point (tiny preset, synthetic data).

Figure 10's run (``experiment.run``), a sweep point (``sweeps.Context.point`` -> ``dissect.run``) and
the alignment runs (``alignment.run``) all train their students with :mod:`mnist_aux.engine`. Each is
checked here against an independent reference written below: ONE student of ONE seed at a time, a plain
Python loop over the same batches (the seed's keys, batch indices and epoch order: whole batches in
``train.noise_order``, then the tail), the loss written out, and an optax update per step.

Exact equality where the computation is the same: the cross-model pairing, and a sweep point's teacher
losses (engine and reference read the same ``teachers.trained``, whose teachers the reference students
learn from). Everything the engine computes in another order than the reference (K students in one
stacked ``vmap``, the steps in one ``lax.scan``, all seeds in one program) is compared to a tolerance well
above float32 rounding as Adam amplifies it along a run, far below what a wrong logit slice, loss,
reduction or rate changes (``test_the_tolerances_catch_a_wrong_student``).
The engine's numbers are pinned to the code before the engines were merged (issue 25) bit for bit by a
one-time comparison, docs/mnist_aux.md; this file keeps them right without stored numbers.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import theory
from mnist_aux import alignment, dissect, engine, experiment, inputs, sweeps, teachers, train
from mnist_aux.configs import PRESETS
from mnist_aux.data import Dataset, normalize
from mnist_aux.model import apply

# float32 comparisons near the rounding floor: .ci/run also runs them under an older ISA (AVX)
pytestmark = [pytest.mark.numerics, pytest.mark.slow]  # about 110 s at load ~7: the slow tier

TINY = PRESETS["tiny"]()  # 32 wide, 1,024 training images, 10 distillation steps per epoch, 3 epochs
SEEDS = [0, 1]
# Tolerances. Adam turns float32 rounding in near-zero gradient components into steps of about the rate, so
# the engine and the reference drift apart along a run: by 5e-3 relative in the mean loss of an aux-only
# student of seed 1 after 30 steps (1e-6 to 3e-5 for the others), 2 of 1,000 test images, and 6e-4 in the
# liminal arm's cosines (its penalty's gradient at theta_0 is rounding alone). A wrong logit slice, loss,
# reduction or rate moves them far more (the last test).
LOSS_RTOL, ACC_ATOL, COS_ATOL = 2e-2, 5e-3, 5e-3


@pytest.fixture(scope="module")
def fake():
    """1,024 training and 1,000 test images whose label is the brightest of the first ten pixels."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1024, 784), dtype=np.uint8)
    t = rng.integers(0, 256, (1000, 784), dtype=np.uint8)
    label = lambda a: a[:, :10].argmax(1).astype(np.int32)  # noqa: E731
    return Dataset(x, label(x), t, label(t), {"dataset": "synthetic"})


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default caches resolve against the working directory


# ------------------------------------------------------------------------------ the reference


def kl(y, z):
    """KL(softmax z || softmax y) per example, written out."""
    log_p, log_q = jax.nn.log_softmax(z, axis=-1), jax.nn.log_softmax(y, axis=-1)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def imitation(student, y, z):
    """The batch loss of one student: its logits, its loss, its reduction."""
    if student.logits == "aux":
        y, z = y[:, 10:], z[:, 10:]
    per_example = kl(y, z) if student.loss == "kl" else jnp.mean((y - z) ** 2, axis=-1)
    return per_example.sum() if student.reduction == "batchmean" else per_example.mean()


def batches(cfg, keys, epoch):
    """``(batch index, size)`` in the order an epoch visits them."""
    n_full, tail = train.batch_sizes(cfg.n_noise, cfg.batch_size)
    return [(int(b), cfg.batch_size) for b in train.noise_order(keys.order, epoch, n_full)] + (
        [(n_full, tail)] if tail else [])


def project(tree, d):
    """``tree`` minus its component along ``d``, twice."""
    for _ in range(2):
        tree = jax.tree.map(lambda a, b: a - optax.tree.vdot(tree, d) / optax.tree.vdot(d, d) * b, tree, d)
    return tree


def optimizer(student):
    return optax.adam(student.lr) if student.optimizer == "adam" else optax.sgd(student.lr)


@functools.cache
def reference_step(student, arm=None, liminal_weight=1.0):
    """One step of one student, jitted (one compilation per kind of student)."""
    opt = optimizer(student)

    @jax.jit
    def step(params, state, x, epoch, teacher, theta0, probe):
        z = apply(teacher, x)

        def loss_fn(p):
            y = apply(p, x)
            loss = imitation(student, y, z)
            if arm == "liminal":
                return loss + jnp.where(epoch == 0, liminal_weight, 0.0) * kl(y, apply(theta0, x)).mean(), loss
            return loss, loss

        (_, loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        record = {"kl": loss}
        if arm is None:
            updates, state = opt.update(grads, state, params)
        else:
            g = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(apply(p, probe[0])[:, :10],
                                                                                   probe[1]).mean())(params)
            disp = jax.tree.map(lambda a, b: a - b, teacher, theta0)
            against = {"trait": g, "displacement": disp}.get(arm)
            if against is not None:
                grads = project(grads, against)
            updates, state = opt.update(grads, state, params)
            if against is not None:
                updates = project(updates, against)
            record["cos_trait"] = theory.cosine(updates, jax.tree.map(jnp.negative, g))
            record["cos_disp"] = theory.cosine(updates, disp)
        return optax.apply_updates(params, updates), state, record

    return step


def reference_student(cfg, student, params, teacher, keys, kind="uniform", images=None, arm=None, theta0=None,
                      probe=None, liminal_weight=1.0):
    """One student of one seed, step by step. Returns (per-epoch mean loss, final params, per-step records)."""
    step = reference_step(dataclasses.replace(student, init="shared"), arm, liminal_weight)  # its start: params
    state = optimizer(student).init(params)
    epochs, records = [], []
    for epoch in range(cfg.distill_epochs):
        losses = []
        for b, size in batches(cfg, keys, epoch):
            x = inputs.batch(kind, cfg, keys, b, size, images)
            params, state, record = step(params, state, x, epoch, teacher, theta0, probe)
            losses.append(float(record["kl"]))
            records.append({k: float(v) for k, v in record.items()})
        epochs.append(np.mean(losses))
    return np.asarray(epochs), params, records


@jax.jit
def _accuracy(params, test_x, test_y):
    return train.accuracy(jax.tree.map(lambda a: a[None], params), test_x, test_y)[0]


def accuracy(params, data):
    return float(_accuracy(params, data.test_x, data.test_y))


_teacher_epoch = jax.jit(train.teacher_epoch, static_argnums=0)


def reference_teacher(cfg, keys, theta0, data):
    """The teacher of one seed trained alone (``train.teacher_epoch``, unchanged by the engine)."""
    params, state = theta0, train.optimizer(cfg).init(theta0)
    x, y = jnp.asarray(data.train_x[: cfg.n_train]), jnp.asarray(data.train_y[: cfg.n_train])
    for epoch in range(cfg.teacher_epochs):
        params, state, _ = _teacher_epoch(cfg, params, state, keys.shuffle, epoch, x, y)
    return params


def seed_start(cfg, seed):
    keys = train.seed_keys(seed, cfg.prng_impl)
    return keys, train.init_reference(cfg, keys.init)


# ------------------------------------------------------------------------------ the entry points


def test_figure10_students_are_each_a_plain_loop(fake):
    """experiment.run's six arms per seed = a teacher and four students trained one by one.

    The reference students learn from the sweeps' teachers (``teachers.trained``: Figure 10's
    teacher epochs, all seeds in one program), each seed's teacher within rounding of the one
    trained alone (checked by its accuracy).
    """
    r = experiment.run(TINY, SEEDS, fake, progress=False)
    assert r["cross_init_seed"] == [SEEDS[p] for p in train.derangement(len(SEEDS), 0)]
    trained, losses, _ = teachers.trained(TINY, SEEDS, fake, cache=None)
    np.testing.assert_allclose(r["losses"]["teacher_ce"], losses, rtol=LOSS_RTOL)
    for i, seed in enumerate(SEEDS):
        keys, theta0 = seed_start(TINY, seed)
        cross = seed_start(TINY, r["cross_init_seed"][i])[1]
        teacher = jax.tree.map(lambda a: a[i], trained)
        assert r["accuracy"]["reference"][i] == pytest.approx(accuracy(theta0, fake), abs=ACC_ATOL)
        assert r["accuracy"]["teacher"][i] == pytest.approx(accuracy(reference_teacher(TINY, keys, theta0, fake), fake),
                                                           abs=ACC_ATOL)
        x0 = train.noise_batch(keys.noise, *train.first_batch_index(TINY, keys))
        for k, (name, (init, logits)) in enumerate(experiment.FIG10.items()):
            student = engine.Student(init=init, logits=logits, lr=TINY.lr)
            start = theta0 if init == "shared" else cross
            epochs, params, _ = reference_student(TINY, student, start, teacher, keys)
            np.testing.assert_allclose(np.asarray(r["losses"]["student_kl"])[i, :, k], epochs, rtol=LOSS_RTOL,
                                       err_msg=name)
            assert r["accuracy"][name][i] == pytest.approx(accuracy(params, fake), abs=ACC_ATOL), name
            loss = theory.softmax_kl(TINY.aux_indices if logits == "aux" else None)
            cos = theory.cosine(theory.student_update(apply, start, teacher, x0, loss), optax.tree.sub(teacher, theta0))
            assert r["theory_cosine"][name][i] == pytest.approx(float(cos), rel=1e-4, abs=1e-6), name


POINTS = [  # (distillation setting, inits, rates): every loss, reduction, optimizer, init and a structured input
    (dissect.Distill(loss="mse", reduction="batchmean", optimizer="sgd", lr=1e-4),
     ("shared", "sigma=0.3", "cross_head"), (1e-4, 3e-4, 2e-4)),
    (dissect.Distill(logits="all", inputs="uniform_blur2", lr=TINY.lr), ("cross_hidden", "shared"), None),
]


@pytest.mark.parametrize("spec,inits,lrs", POINTS, ids=["mse-batchmean-sgd", "kl-all-blurred-adam"])
def test_sweep_point_students_are_each_a_plain_loop(fake, tmp_path, spec, inits, lrs):
    """A sweep point (sweeps -> dissect.run) per seed and student = that student alone in a plain loop."""
    ctx = sweeps.Context(TINY, tuple(SEEDS), fake, cache=tmp_path / "sweeps", teacher_cache=tmp_path / "teachers")
    r = ctx.point(sweeps.Point("p", "p", TINY, spec, inits, lrs=lrs))
    trained, losses, _ = teachers.trained(TINY, SEEDS, fake, cache=None)
    np.testing.assert_array_equal(r["teacher_ce_by_epoch"], losses)  # the same program on the same data
    for i, seed in enumerate(SEEDS):
        keys, theta0 = seed_start(TINY, seed)
        cross = seed_start(TINY, r["cross_init_seed"][i])[1]
        teacher = jax.tree.map(lambda a: a[i], trained)
        assert r["teacher_accuracy"][i] == pytest.approx(accuracy(teacher, fake), abs=ACC_ATOL)
        salt = jax.random.split(jax.random.fold_in(keys.init, engine.SIGMA_SALT), len(inits))
        for k, init in enumerate(inits):
            student = spec.student(init, None if lrs is None else lrs[k])
            kind, sigma = engine.parse_init(init)
            start = engine.student_init(kind, sigma, theta0, cross, salt[k])
            epochs, params, _ = reference_student(TINY, student, start, teacher, keys, spec.inputs)
            s = r["students"][k]
            np.testing.assert_allclose(np.asarray(s["loss_by_epoch"])[i], epochs, rtol=LOSS_RTOL, err_msg=init)
            assert s["accuracy"][i] == pytest.approx(accuracy(params, fake), abs=ACC_ATOL), init


def test_alignment_arms_are_each_a_plain_loop(fake):
    """alignment.run per arm and seed: every step's loss and both cosines = the plain loop's, the
    projected arms orthogonal to what they project out."""
    r = alignment.run(TINY, SEEDS, fake, arms=("trait", "liminal"), log_every=1, liminal_weight=0.5,
                      teacher_cache=None, progress=False)
    trained = teachers.trained(TINY, SEEDS, fake, cache=None)[0]
    probe = (normalize(jnp.asarray(fake.train_x[-alignment.PROBE:])), jnp.asarray(fake.train_y[-alignment.PROBE:]))
    for arm, res in r["results"].items():
        for i, seed in enumerate(SEEDS):
            keys, theta0 = seed_start(TINY, seed)
            teacher = jax.tree.map(lambda a: a[i], trained)
            _, params, records = reference_student(TINY, engine.Student(lr=TINY.lr), theta0, teacher, keys, arm=arm,
                                                   theta0=theta0, probe=probe, liminal_weight=0.5)
            for name in ("kl", "cos_trait", "cos_disp"):
                ref = np.asarray([rec[name] for rec in records])
                tol = {"rtol": LOSS_RTOL} if name == "kl" else {"atol": COS_ATOL}
                np.testing.assert_allclose(res["series"][name][i], ref, **tol, err_msg=f"{arm} {name}")
            assert res["final_accuracy"][i] == pytest.approx(accuracy(params, fake), abs=ACC_ATOL), arm
        if arm != "liminal":
            assert res["max_residual_cos"] < 1e-6


def test_the_tolerances_catch_a_wrong_student(fake):
    """The loss tolerance is far below what another logit slice, loss, reduction or rate changes."""
    keys, theta0 = seed_start(TINY, 1)
    teacher = jax.tree.map(lambda a: a[1], teachers.trained(TINY, SEEDS, fake, cache=None)[0])
    right = engine.Student(lr=TINY.lr)
    loss = reference_student(TINY, right, theta0, teacher, keys)[0]
    for field, value in (("logits", "all"), ("loss", "mse"), ("reduction", "batchmean"), ("lr", TINY.lr / 2)):
        wrong = reference_student(TINY, dataclasses.replace(right, **{field: value}), theta0, teacher, keys)[0]
        assert np.abs(wrong / loss - 1).max() > 5 * LOSS_RTOL, field


def test_a_mixed_stack_trains_each_student_as_the_plain_loop():
    """Students of other logits, losses, reductions, optimizers and rates in one stack (the loss and the
    optimizer split it into stretches) each learn as the plain loop."""
    keys, theta0 = seed_start(TINY, 0)
    teacher = jax.tree.map(lambda a: 1.2 * a, seed_start(TINY, 5)[1])  # any fixed network to imitate
    mixed = (engine.Student(lr=1e-3), engine.Student(logits="all", loss="mse", reduction="batchmean", optimizer="sgd",
                                                     lr=1e-5), engine.Student(optimizer="sgd", lr=0.3))
    epoch = jax.jit(engine.distill_epoch, static_argnums=(0, 1))

    def losses(plan):
        students = engine.init_students(plan, theta0, theta0)
        state, out = engine.optimizer(plan).init(students), []
        for e in range(TINY.distill_epochs):
            students, state, loss, _ = epoch(plan, TINY, students, state, teacher, keys, e)
            out.append(loss)
        return np.stack(out)  # [epochs, K]

    together = losses(engine.Plan(mixed))
    for k, student in enumerate(mixed):
        np.testing.assert_allclose(together[:, k], reference_student(TINY, student, theta0, teacher, keys)[0],
                                   rtol=LOSS_RTOL, err_msg=str(student))
