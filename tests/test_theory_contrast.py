"""Different initialisation: no sign guarantee, and the eps search."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import theory
from strategies import Arch, apply_fn, init_params, make_inputs, make_teacher

pytestmark = pytest.mark.usefixtures("x64")

ARCH = Arch(3, (8, 8), 5, "tanh")


def _projection(seed, student_init):
    f, p0 = apply_fn(ARCH), init_params(ARCH, seed)
    d_t, _ = make_teacher("gradient", f, p0, ARCH, seed)
    x = make_inputs("uniform", 16, 3, seed)
    return theory.projection(f, p0, d_t, 1e-3, x, theory.softmax_kl(), student_init=student_init(p0, seed))


def test_independent_init_takes_both_signs_while_shared_init_is_always_positive():
    shared = [float(_projection(s, lambda p, s: p).inner) for s in range(24)]
    independent = [float(_projection(s, lambda p, s: init_params(ARCH, 1000 + s)).inner) for s in range(24)]
    assert min(shared) > 0
    assert min(independent) < 0 < max(independent)


def test_perturbed_init_dials_between_shared_and_independent():
    p0 = init_params(ARCH, 0)
    same = theory.perturbed_init(p0, 0.0, jax.random.key(0))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), same, p0))
    far = theory.perturbed_init(p0, 1.0, jax.random.key(0))
    for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(far)):
        if a.size >= 24:  # enough entries for the empirical std of the noise to be near its own
            np.testing.assert_allclose(jnp.std(b - a), jnp.std(a), rtol=0.3)
    cos_small = np.mean([float(_projection(s, lambda p, s: theory.perturbed_init(p, 0.01, jax.random.key(s))).cosine)
                         for s in range(8)])
    cos_large = np.mean([float(_projection(s, lambda p, s: theory.perturbed_init(p, 1.0, jax.random.key(s))).cosine)
                         for s in range(8)])
    assert cos_small > cos_large
    with pytest.raises(ValueError, match="sigma"):
        theory.perturbed_init(p0, -1.0, jax.random.key(0))


def test_eps_search_reports_a_verified_failure_or_none():
    """Search a small pool of teachers; every reported failure is re-checked at its endpoints."""
    found = 0
    for seed in range(6):
        arch = Arch(2, (4,), 3, "tanh")
        f, p0 = apply_fn(arch), init_params(arch, seed)
        d_t, loss_T = make_teacher("gradient", f, p0, arch, seed)
        x = make_inputs("gaussian", 6, 2, seed)
        loss = theory.mse()
        res = theory.smallest_failing_eps(f, p0, d_t, x, loss, loss_T=loss_T, eps_grid=np.geomspace(1e-4, 1e3, 15),
                                          refine=12)
        if res.eps_fail is None:
            assert np.all(res.inner > 0)
            continue
        found += 1
        ip_fail = theory.inner(theory.student_update(f, p0, theory.teacher_params(p0, d_t, res.eps_fail), x, loss), d_t)
        ip_hold = theory.inner(theory.student_update(f, p0, theory.teacher_params(p0, d_t, res.eps_hold), x, loss), d_t)
        assert float(ip_hold) > 0
        if res.criterion == "inner":
            assert float(ip_fail) <= 0
        assert res.eps_hold < res.eps_fail <= res.eps_hold * 1.01
    assert found >= 1, "no teacher in the pool broke the first-order guarantee at large eps"


def test_eps_search_rejects_bad_grids():
    arch = Arch(2, (4,), 3, "tanh")
    f, p0 = apply_fn(arch), init_params(arch, 0)
    with pytest.raises(ValueError, match="increasing"):
        theory.smallest_failing_eps(f, p0, p0, make_inputs("uniform", 2, 2, 0), theory.mse(), eps_grid=[1.0, 0.5])
