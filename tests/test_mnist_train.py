"""mnist_aux training pieces: each fast path against a slow reference, on tiny shapes.

No real data: a small random "training set" stands in for MNIST.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

import theory
from mnist_aux import engine, experiment, train
from mnist_aux.configs import Config, paper
from mnist_aux.data import Dataset
from mnist_aux.model import apply

# float32 comparisons near the rounding floor: .ci/run also runs them under an older ISA (AVX)
pytestmark = pytest.mark.numerics

TINY = Config(hidden=16, lr=1e-3, batch_size=256, teacher_epochs=2, distill_epochs=2, n_train=1_000, n_noise=700)


def tree_allclose(a, b, rtol=1e-5, atol=1e-6):
    return all(np.allclose(x, y, rtol=rtol, atol=atol) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def fake_data():
    rng = np.random.default_rng(0)
    # Labels depend on the pixels, so the teacher has something to learn.
    train_x = rng.integers(0, 256, (60_000, 784), dtype=np.uint8)
    test_x = rng.integers(0, 256, (10_000, 784), dtype=np.uint8)
    label = lambda x: (x[:, :10].astype(np.int32).argmax(1)).astype(np.int32)  # noqa: E731
    return Dataset(train_x, label(train_x), test_x, label(test_x), {"dataset": "synthetic"})


@given(n=st.integers(2, 300), seed=st.integers(0, 2**31 - 1))
def test_derangement_is_a_permutation_without_fixed_points(n, seed):
    perm = train.derangement(n, seed)
    assert sorted(perm.tolist()) == list(range(n))
    assert not np.any(perm == np.arange(n))


def test_derangement_rejects_one_model():
    with pytest.raises(ValueError):
        train.derangement(1)


def test_flops_match_the_issue():
    f = train.flops_per_seed(paper())
    assert f["nominal"] == pytest.approx(3.07e12, rel=2e-3)
    assert f["exact"] == pytest.approx(2.47e12, rel=2e-3)
    assert f["ours"] < f["exact"]


@pytest.mark.parametrize("impl", ["rbg", "threefry2x32"])
def test_noise_batch_is_a_function_of_seed_and_batch(impl):
    k = train.seed_keys(3, impl)
    a, b = train.noise_batch(k.noise, 5, 64), train.noise_batch(k.noise, 5, 64)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (64, 784) and a.dtype == jnp.float32
    assert float(a.min()) >= -1.0 and float(a.max()) < 1.0
    assert not np.array_equal(a, train.noise_batch(k.noise, 6, 64))
    assert not np.array_equal(a, train.noise_batch(train.seed_keys(4, impl).noise, 5, 64))


def test_noise_is_uniform_and_uses_both_threefry_words():
    x = np.asarray(train.noise_batch(train.seed_keys(0, "threefry2x32").noise, 0, 1024)).ravel()
    assert abs(x.mean()) < 0.005 and abs(x.std() - 3**-0.5) < 0.002
    assert np.histogram(x, bins=8, range=(-1, 1))[0].min() > 0.98 * x.size / 8
    half = x.size // 2
    assert np.corrcoef(x[:half], x[half:])[0, 1] < 0.01  # the two words of a hash are not copies


def test_every_epoch_visits_the_same_noise_batches_in_a_new_order():
    k = train.seed_keys(0, "threefry2x32")
    orders = [np.asarray(train.noise_order(k.order, e, 58)) for e in range(3)]
    for o in orders:
        assert sorted(o.tolist()) == list(range(58))
    assert not np.array_equal(orders[0], orders[1])


def _kl(y, z):
    """KL(softmax z || softmax y) per example, written out."""
    log_p, log_q = jax.nn.log_softmax(z, axis=-1), jax.nn.log_softmax(y, axis=-1)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def _distill_epoch_reference(cfg, student, opt_state, teacher, keys, epoch, logits):
    """Slow reference for ONE student: a Python loop over the batches, each drawn by (seed, batch index)."""
    opt = optax.adam(cfg.lr)
    n_full, tail = train.batch_sizes(cfg.n_noise, cfg.batch_size)
    plan = [(int(b), cfg.batch_size) for b in train.noise_order(keys.order, epoch, n_full)]
    plan += [(n_full, tail)] if tail else []
    cut = (lambda y: y[:, 10:]) if logits == "aux" else (lambda y: y)
    for b, size in plan:
        x = train.noise_batch(keys.noise, b, size)
        grads = jax.grad(lambda p: _kl(cut(apply(p, x)), cut(apply(teacher, x))).mean())(student)
        updates, opt_state = opt.update(grads, opt_state, student)
        student = optax.apply_updates(student, updates)
    return student, opt_state


@pytest.mark.slow
def test_distill_epoch_equals_a_loop_over_seed_batch_noise():
    """The engine's epoch of Figure 10's four stacked students = each student alone in a plain loop."""
    cfg = TINY
    plan = experiment.plan(cfg)
    keys = train.seed_keys(1, cfg.prng_impl)
    theta0 = train.init_reference(cfg, keys.init)
    teacher = train.init_reference(cfg, train.seed_keys(2, cfg.prng_impl).init)
    students = engine.init_students(plan, theta0, train.init_reference(cfg, train.seed_keys(9, cfg.prng_impl).init))
    fast = (students, engine.optimizer(plan).init(students))
    refs = [(s, optax.adam(cfg.lr).init(s)) for s in (jax.tree.map(lambda a: a[k], students) for k in range(4))]
    for epoch in range(2):  # the second epoch must reuse the first epoch's noise batches
        fast = jax.jit(engine.distill_epoch, static_argnums=(0, 1))(plan, cfg, *fast, teacher, keys, epoch)[:2]
        refs = [_distill_epoch_reference(cfg, *ref, teacher, keys, epoch, s.logits) for ref, s in zip(refs, plan.students)]
    # Adam divides by sqrt(v): float32 rounding in a near-zero gradient moves a weight by up
    # to ~lr per step, so the tolerance is a small fraction of one step (lr = 1e-3).
    for k, (ref, _) in enumerate(refs):
        assert tree_allclose(jax.tree.map(lambda a: a[k], fast[0]), ref, rtol=1e-4, atol=5e-5), experiment.STUDENTS[k]


def test_distill_gradient_is_theory_student_update():
    """The engine's fused 4-student loss gives each student the gradient theory.student_update negates."""
    cfg = TINY
    keys = train.seed_keys(0, cfg.prng_impl)
    theta0 = train.init_reference(cfg, keys.init)
    cross = train.init_reference(cfg, train.seed_keys(1, cfg.prng_impl).init)
    teacher = jax.tree.map(lambda a, n: a + 0.05 * n, theta0,
                           train.init_reference(cfg, train.seed_keys(2, cfg.prng_impl).init))
    x = train.noise_batch(keys.noise, 0, 128)
    plan = experiment.plan(cfg)
    students = engine.init_students(plan, theta0, cross)
    grads = jax.grad(lambda s: engine.objective(plan, cfg, s, x, apply(teacher, x), None, 0)[0])(students)
    losses = {"aux": theory.softmax_kl(cfg.aux_indices), "all": theory.softmax_kl(None)}
    for k, (init, loss) in enumerate([(theta0, "aux"), (cross, "aux"), (theta0, "all"), (cross, "all")]):
        update = theory.student_update(apply, init, teacher, x, losses[loss])
        mine = jax.tree.map(lambda g: -g[k], grads)
        assert tree_allclose(mine, update, rtol=1e-4, atol=1e-7), experiment.STUDENTS[k]


def test_sliced_aux_kl_matches_theory_subset_loss():
    """``Config.aux_slice`` and ``Config.aux_indices`` are the same logits; the students' loss sees only them."""
    y, z = jax.random.normal(jax.random.key(0), (2, 32, 13))
    cfg = TINY
    assert cfg.aux_indices == (10, 11, 12) and y[..., cfg.aux_slice].shape == (32, 3)
    np.testing.assert_allclose(theory.softmax_kl().value(y[..., cfg.aux_slice], z[..., cfg.aux_slice]),
                               theory.softmax_kl(cfg.aux_indices).value(y, z), rtol=1e-5, atol=1e-7)
    student = engine.Student(logits="aux")
    np.testing.assert_allclose(student.per_example(cfg, y, z), theory.softmax_kl().value(y[:, 10:], z[:, 10:]),
                               rtol=1e-5, atol=1e-7)
    assert np.array_equal(student.per_example(cfg, y, z.at[:, :10].add(5.0)), student.per_example(cfg, y, z))


def test_accuracy_matches_numpy():
    cfg = TINY
    params = jax.vmap(lambda k: train.init_reference(cfg, k))(jax.random.split(jax.random.key(0), 3))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1000, 784), dtype=np.uint8)
    y = rng.integers(0, 10, 1000).astype(np.int32)
    got = train.accuracy(params, x, y, eval_batch=250)
    for k in range(3):
        p = jax.tree.map(lambda a: a[k], params)
        logits = np.asarray(apply(p, (x.astype(np.float32) / 255 - 0.5) / 0.5))
        assert got[k] == pytest.approx(np.mean(logits[:, :10].argmax(1) == y), abs=1e-6)


@pytest.fixture(scope="module")
def joint(fake_data):
    """Seeds 0, 1, 2 trained together in one chunk."""
    return experiment.run(TINY, [0, 1, 2], fake_data, seeds_per_chunk=3, progress=False, command="test")


@pytest.mark.slow
def test_vmap_over_seeds_equals_a_loop_over_seeds(fake_data, joint):
    """Seeds trained together give each seed's numbers as when it is trained alone.

    Alone = a chunk of one seed (vmap of size 1, same per-seed program) paired with the same
    cross-model init as in the joint run.
    """
    seeds = [0, 1, 2]
    partners = joint["cross_init_seed"]
    for i, s in enumerate(seeds):
        keys = train.seed_keys(s, TINY.prng_impl)
        theta0 = train.init_reference(TINY, keys.init)
        teacher, opt_state = theta0, train.optimizer(TINY).init(theta0)
        tx, ty = jnp.asarray(fake_data.train_x[: TINY.n_train]), jnp.asarray(fake_data.train_y[: TINY.n_train])
        for e in range(TINY.teacher_epochs):
            teacher, opt_state, _ = jax.jit(train.teacher_epoch, static_argnums=0)(
                TINY, teacher, opt_state, keys.shuffle, e, tx, ty)
        cross = train.init_reference(TINY, train.seed_keys(partners[i], TINY.prng_impl).init)
        plan = experiment.plan(TINY)
        students = engine.init_students(plan, theta0, cross)
        opt_state = engine.optimizer(plan).init(students)
        for e in range(TINY.distill_epochs):
            students, opt_state, _, _ = jax.jit(engine.distill_epoch, static_argnums=(0, 1))(
                plan, TINY, students, opt_state, teacher, keys, e)
        models = jax.tree.map(lambda *a: jnp.stack(a), theta0, teacher,
                              *[jax.tree.map(lambda a: a[k], students) for k in range(4)])
        acc = train.accuracy(models, fake_data.test_x, fake_data.test_y)
        for k, arm in enumerate(("reference", "teacher") + experiment.STUDENTS):
            assert joint["accuracy"][arm][i] == pytest.approx(float(acc[k]), abs=2e-4), (s, arm)


@pytest.mark.slow
def test_chunking_and_padding_do_not_change_numbers(fake_data, joint):
    whole = joint
    chunks = experiment.run(TINY, [0, 1, 2], fake_data, seeds_per_chunk=2, progress=False)  # 2 chunks, 1 padded
    assert whole["timing"]["n_chunks"] == 1 and chunks["timing"]["n_chunks"] == 2
    for group in ("accuracy", "theory_cosine"):
        for name, values in whole[group].items():
            np.testing.assert_allclose(values, chunks[group][name], rtol=1e-5, atol=2e-4, err_msg=name)


@pytest.mark.slow
def test_results_format(joint):
    r = joint
    assert r["seeds"] == [0, 1, 2] and sorted(r["cross_init_seed"]) == [0, 1, 2]
    assert all(p != s for s, p in zip(r["seeds"], r["cross_init_seed"]))
    assert r["arms"] == list(experiment.ARMS) and r["command"] == "test"
    for arm in experiment.ARMS:
        assert len(r["accuracy"][arm]) == 3
        s = r["summary"][arm]
        assert s["ci95"][0] <= s["mean"] <= s["ci95"][1]
    assert set(r["theory_cosine"]) == set(experiment.COSINE_LABELS)
    assert r["config"] == TINY.to_dict() and r["data"] == {"dataset": "synthetic"}
    assert r["timing"]["peak_rss_gib"] > 0 and r["versions"]["jax"] == jax.__version__


def test_chunking_is_balanced_and_device_aligned():
    assert experiment.chunking(100, 50, 1) == (2, 50)
    assert experiment.chunking(100, 40, 1) == (3, 34)
    assert experiment.chunking(5, 50, 2) == (1, 6)
    assert experiment.chunking(7, 3, 2) == (3, 4)
