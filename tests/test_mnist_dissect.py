"""The MNIST dissection tools: students of any kind, inputs, the projection ablation, sweep resume.

Runs on a tiny configuration (a few hundred steps in all) so the whole file takes well
under a minute; what it checks is mechanism, not the paper's numbers (those are in
results/ and the README, with their commands).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import mnist_dir
from hypothesis import given
from hypothesis import strategies as st

from mnist_aux import alignment, data, dissect, experiment, inputs, sweeps, teachers, train
from mnist_aux.configs import Config
from mnist_aux.model import apply

# float32 comparisons near the rounding floor: .ci/run also runs them under an older ISA (AVX)
pytestmark = pytest.mark.numerics

TINY = Config(hidden=32, lr=1e-3, batch_size=64, teacher_epochs=1, n_train=1024, distill_epochs=3, n_noise=640)
needs_mnist = pytest.mark.skipif(mnist_dir() is None, reason="no offline MNIST copy ($SUBLIMINAL_MNIST_DIR)")


@pytest.fixture(scope="module")
def mnist():
    return data.load("mnist", mnist_dir(), allow_download=False)


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch):
    """Default caches (results/cache/teachers, results/sweeps) resolve against the working directory."""
    monkeypatch.chdir(tmp_path)


# ------------------------------------------------------------------- projection


def _tree(key, scale=1.0):
    k1, k2 = jax.random.split(key)
    return {"a": scale * jax.random.normal(k1, (300, 40)), "b": {"c": jax.random.normal(k2, (57,))}}


@given(st.integers(0, 10_000), st.floats(1e-3, 1e3))
def test_project_out_leaves_an_orthogonal_update(seed, along):
    """float32, ~12k parameters, the update mostly along d: residual cosine below 1e-6."""
    kd, ku = jax.random.split(jax.random.key(seed))
    d = _tree(kd)
    u = jax.tree.map(lambda a, b: along * a + b, d, _tree(ku, 0.01))
    p = alignment.project_out(u, d)
    from theory import cosine, inner
    assert abs(float(cosine(p, d))) < 1e-6
    # only the component along d is removed: p = u - c d with c = <u,d>/<d,d>
    c = float(inner(u, d) / inner(d, d))
    np.testing.assert_allclose(p["a"], u["a"] - c * d["a"], rtol=1e-4, atol=1e-4 * abs(c))


def test_project_out_of_zero_direction_is_identity():
    u = _tree(jax.random.key(0))
    p = alignment.project_out(u, jax.tree.map(jnp.zeros_like, u))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(u)))


@pytest.mark.slow
@needs_mnist
def test_trait_projection_in_training_is_orthogonal_and_still_distills(mnist):
    """Every step of the 'trait' arm: |cos(update, trait gradient)| < 1e-6; the KL still falls."""
    res = alignment.run(TINY.replace(lr=1e-2), range(2), mnist, arms=("none", "trait", "displacement"), log_every=1, progress=False)
    for arm in ("trait", "displacement"):
        r = res["results"][arm]
        assert r["max_residual_cos"] < 1e-6, arm
        kl = np.asarray(r["series"]["kl"])  # 10 steps per epoch on the same 10 noise batches
        assert kl[:, -10:].mean() < 0.7 * kl[:, :10].mean(), arm  # distillation loss still falls
    trait = np.asarray(res["results"]["trait"]["series"]["cos_trait"])
    assert np.abs(trait).max() < 1e-6
    none = np.asarray(res["results"]["none"]["series"]["cos_trait"])
    assert np.abs(none).max() > 1e-3  # without the projection the update has a trait component


# --------------------------------------------------------------------- students


def test_student_inits():
    keys = jax.random.split(jax.random.key(0), 3)
    t0, tc = (train.init_reference(TINY, k) for k in keys[:2])
    same = dissect.student_init("sigma", 0.0, t0, tc, keys[2])
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(t0)))
    moved = dissect.student_init("sigma", 0.5, t0, tc, keys[2])
    ratio = float(jnp.std(moved["fc1"]["kernel"] - t0["fc1"]["kernel"]) / jnp.std(t0["fc1"]["kernel"]))
    assert ratio == pytest.approx(0.5, rel=0.05)
    assert np.array_equal(moved["fc1"]["bias"], t0["fc1"]["bias"])  # zero-initialised biases have no spread
    hidden = dissect.student_init("cross_hidden", 0.0, t0, tc, keys[2])
    assert np.array_equal(hidden["fc1"]["kernel"], tc["fc1"]["kernel"]) and np.array_equal(hidden["out"]["kernel"], t0["out"]["kernel"])
    head = dissect.student_init("cross_head", 0.0, t0, tc, keys[2])
    assert np.array_equal(head["fc2"]["kernel"], t0["fc2"]["kernel"]) and np.array_equal(head["out"]["kernel"], tc["out"]["kernel"])


@pytest.mark.parametrize("bad", ["sigma=-1", "sigma=x", "sigma=S", "twin", ""])
def test_bad_inits_are_refused(bad):
    with pytest.raises(ValueError, match="init"):
        dissect.parse_init(bad)


@pytest.mark.parametrize("field,value", [("loss", "l1"), ("reduction", "sum"), ("optimizer", "lion"),
                                         ("inputs", "cifar"), ("logits", "some"), ("lr", 0.0)])
def test_bad_distill_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        dissect.Distill(**{field: value})


def test_batchmean_is_the_batch_sum():
    key = jax.random.key(1)
    params = train.init_reference(TINY, key)
    x = jax.random.uniform(key, (64, 784), minval=-1, maxval=1)
    z = jax.random.normal(key, (64, 13))
    y = apply(params, x)
    for loss in dissect.LOSSES:
        mean, total = (s.reduce(s.per_example(TINY, y, z)) for s in (dissect.Distill(loss=loss).student(),
                       dissect.Distill(loss=loss, reduction="batchmean").student()))
        assert float(total) == pytest.approx(64 * float(mean), rel=1e-5)


def test_mse_averages_over_the_imitated_logits():
    loss = dissect.Distill(loss="mse").imitation_loss(TINY)
    y, z = jnp.zeros((1, 13)), jnp.zeros((1, 13)).at[0, 11].set(3.0).at[0, 4].set(100.0)
    assert float(loss.value(y, z)[0]) == pytest.approx(9.0 / 3)  # digit logit 4 is not imitated


@pytest.mark.parametrize("kind", ["uniform", "gaussian", "blurred", "lowrank"])
def test_synthetic_inputs_have_the_uniform_noise_scale(kind):
    keys = train.seed_keys(0, "threefry2x32")
    x = np.asarray(inputs.batch(kind, TINY, keys, 3, 4096))
    assert x.shape == (4096, 784)
    assert float(np.sqrt((x**2).mean())) == pytest.approx(inputs.INPUT_STD, rel=0.05)
    again = np.asarray(inputs.batch(kind, TINY, keys, 3, 4096))
    assert np.array_equal(x, again)  # batch b is the same array every epoch
    neighbour = np.corrcoef(x.reshape(-1, 28, 28)[:, 10:18, 10:17].ravel(), x.reshape(-1, 28, 28)[:, 10:18, 11:18].ravel())[0, 1]
    if kind == "blurred":
        assert neighbour > 0.8  # spatially correlated
    elif kind != "lowrank":
        assert abs(neighbour) < 0.05
    if kind == "lowrank":
        assert np.linalg.matrix_rank(x[:200], tol=1e-3) == inputs.LOWRANK_DIM


@needs_mnist
def test_image_inputs_are_normalised_training_images(mnist):
    keys = train.seed_keys(0, "threefry2x32")
    x = np.asarray(inputs.batch("mnist", TINY, keys, 1, 64, jnp.asarray(mnist.train_x[:256])))
    rows = data.normalize(mnist.train_x[:256])
    nearest = np.abs(x[:, None, :] - rows[None]).max(axis=-1).min(axis=1)
    assert nearest.max() < 1e-6  # every input is one of the images, normalised


@pytest.mark.slow
@needs_mnist
def test_shared_student_is_figure_10s_aux_student(mnist):
    """Same seed, same noise, same batches: the dissect 'shared' student reproduces the
    Figure-10 aux-only student's first-epoch loss (up to float32 summation order)."""
    fig10 = experiment.run(TINY, range(2), mnist, progress=False)
    ours = dissect.run(TINY, dissect.Distill(lr=TINY.lr), ["shared", "cross"], range(2), mnist, teacher_cache=None)
    np.testing.assert_allclose(ours["teacher_accuracy"], fig10["accuracy"]["teacher"], atol=1e-4)
    for k, name in enumerate(("student_aux", "cross_aux")):
        fig_first = np.asarray(fig10["losses"]["student_kl"])[:, 0, experiment.STUDENTS.index(name)]
        np.testing.assert_allclose(np.asarray(ours["students"][k]["loss_by_epoch"])[:, 0], fig_first, rtol=1e-3)
    # the theory link at step 0 agrees with Figure 10's cosines
    np.testing.assert_allclose(ours["students"][0]["theory_cosine"], fig10["theory_cosine"]["student_aux"], rtol=1e-3, atol=1e-6)


# ------------------------------------------------------------------------ sweeps


@pytest.mark.slow
@needs_mnist
def test_sweep_resumes_after_interrupt(mnist, tmp_path, monkeypatch):
    """Interrupt a sweep in its third point; the rerun computes only the missing points and
    assembles the same numbers as an uninterrupted run."""
    monkeypatch.setitem(sweeps.PRESETS, "tiny", lambda: TINY)
    real_run, calls = dissect.run, []

    def flaky(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run(*args, **kwargs)

    monkeypatch.setattr(dissect, "run", flaky)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        sweeps.run_sweep("heads", mnist, preset="tiny", n_seeds=2, cache=cache, progress=False)
    assert len(list(cache.glob("*.json"))) == 2  # the two finished points, written atomically
    assert not list(cache.glob("*.tmp"))
    monkeypatch.setattr(dissect, "run", real_run)
    resumed = sweeps.run_sweep("heads", mnist, preset="tiny", n_seeds=2, cache=cache, progress=False)
    assert resumed["points_computed"] == 1
    fresh = sweeps.run_sweep("heads", mnist, preset="tiny", n_seeds=2, cache=tmp_path / "fresh", progress=False)
    assert fresh["points_computed"] == 3
    for a, b in zip(resumed["points"], fresh["points"]):
        assert a["key"] == b["key"]
        assert [s["accuracy"] for s in a["students"]] == [s["accuracy"] for s in b["students"]]
    # the cache-only mode used by paper_figs --quick refuses to compute
    with pytest.raises(sweeps.MissingPoint):
        sweeps.run_sweep("heads", mnist, preset="tiny", n_seeds=3, cache=cache, progress=False, cache_only=True)
    entry = json.loads(next(cache.glob("*.json")).read_text())
    assert set(entry) == {"key", "point", "result"} and entry["point"]["seeds"] == [0, 1]


def test_unknown_sweep_and_preset_are_refused():
    with pytest.raises(ValueError, match="unknown sweep"):
        sweeps.run_sweep("colour", None)
    with pytest.raises(ValueError, match="unknown preset"):
        sweeps.run_sweep("width", None, preset="huge")


# ----------------------------------------------------------------- teacher cache


def _fake_data():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1024, 784), dtype=np.uint8)
    y = x[:, :10].argmax(1).astype(np.int32)
    return data.Dataset(x, y, x[:500], y[:500], {"dataset": "synthetic"})


def test_a_broken_teacher_cache_entry_is_retrained_with_a_warning(tmp_path, capsys):
    cfg = TINY.replace(hidden=8)
    fresh, losses, info = teachers.trained(cfg, [0, 1], _fake_data(), cache=tmp_path)
    assert info["hit"] is False
    (entry,) = tmp_path.glob("*.npz")
    assert entry.stem == teachers.key(cfg, [0, 1], _fake_data()) and not list(tmp_path.glob(".*"))  # no temporary left
    again, _, info = teachers.trained(cfg, [0, 1], _fake_data(), cache=tmp_path)
    assert info["hit"] is True
    entry.write_bytes(entry.read_bytes()[:300])  # truncated
    retrained, _, info = teachers.trained(cfg, [0, 1], _fake_data(), cache=tmp_path)
    assert info["hit"] is False and "broken teacher cache entry" in capsys.readouterr().err
    for a, b, c in zip(jax.tree.leaves(fresh), jax.tree.leaves(again), jax.tree.leaves(retrained)):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    assert teachers.trained(cfg, [0, 1], _fake_data(), cache=tmp_path)[2]["hit"] is True  # rewritten whole


def test_sigma_students_are_theory_perturbed_init_bit_for_bit():
    """The sigma sweep's students come from theory.perturbed_init: the same numbers as the
    per-leaf draw the committed sigma sweep used (split the key per leaf, p + s * std(p) * N)."""
    def old(sigma, theta0, key):
        leaves, treedef = jax.tree.flatten(theta0)
        keys = jax.random.split(key, len(leaves))
        return jax.tree.unflatten(treedef, [p + sigma * jnp.std(p) * jax.random.normal(k, p.shape, p.dtype)
                                            for p, k in zip(leaves, keys)])

    seeds = jnp.arange(2)
    theta0 = jax.vmap(lambda s: train.init_reference(TINY, train.seed_keys(s, TINY.prng_impl).init))(seeds)
    keys = jax.vmap(lambda s: jax.random.fold_in(train.seed_keys(s, TINY.prng_impl).init, 0x51A))(seeds)
    new = jax.vmap(lambda t, k: dissect.student_init("sigma", 0.4, t, t, k))(theta0, keys)
    ref = jax.vmap(lambda t, k: old(0.4, t, k))(theta0, keys)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ref)))
