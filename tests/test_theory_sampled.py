"""The sampled-token (hard-label) student: unbiased, and how many samples its sign needs."""

import math

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import theory
from strategies import Arch, apply_fn, init_params, make_inputs, make_teacher

pytestmark = pytest.mark.usefixtures("x64")


@pytest.fixture(params=[(None, "tanh", 0), ((0, 2, 3), "relu", 1), ((1, 2), "softplus", 2)])
def setting(request):
    indices, activation, seed = request.param
    arch = Arch(3, (6, 6), 4, activation)
    f, p0 = apply_fn(arch), init_params(arch, seed)
    d_t, _ = make_teacher("gradient", f, p0, arch, seed)
    x = make_inputs("gaussian", 5, 3, seed)
    return f, p0, theory.teacher_params(p0, d_t, 0.5), d_t, x, indices


def test_sampled_gradient_is_unbiased(setting):
    f, p0, p_t, _, x, indices = setting
    soft, _ = ravel_pytree(theory.student_update(f, p0, p_t, x, theory.softmax_ce(indices)))
    n = 400
    draws = np.stack([ravel_pytree(theory.sampled_student_update(f, p0, p_t, x, jax.random.key(i), indices))[0]
                      for i in range(n)])
    mean, se = draws.mean(0), draws.std(0, ddof=1) / math.sqrt(n)
    # every coordinate within 5 standard errors (a coordinate with zero variance must match exactly)
    assert np.all(np.abs(mean - np.asarray(soft)) <= 5 * se + 1e-12)
    # and the estimator is not trivially the soft gradient: single draws do vary
    assert se.max() > 0


def test_per_sample_inner_products_average_to_soft_inner_product(setting):
    f, p0, p_t, d_t, x, indices = setting
    values = theory.per_sample_inner_products(f, p0, p_t, d_t, x, jax.random.key(0), indices, n_draws=4000)
    assert values.shape == (4000 * 5,)
    soft = float(theory.inner(theory.student_update(f, p0, p_t, x, theory.softmax_ce(indices)), d_t))
    se = float(values.std()) / math.sqrt(values.size)
    assert abs(float(values.mean()) - soft) <= 5 * se


def test_sampled_update_matches_its_per_sample_inner_products(setting):
    f, p0, p_t, d_t, x, indices = setting
    key = jax.random.key(3)
    update = theory.sampled_student_update(f, p0, p_t, x, key, indices, n_draws=7)
    values = theory.per_sample_inner_products(f, p0, p_t, d_t, x, key, indices, n_draws=7)
    np.testing.assert_allclose(float(theory.inner(update, d_t)), float(values.mean()), rtol=1e-10)


def test_clt_sample_size_gives_the_requested_probability():
    rng = np.random.default_rng(0)
    values = rng.normal(0.05, 1.0, 20000)
    res = theory.samples_for_positive(values, confidence=0.95)
    assert res.method == "clt" and 500 < res.n < 1800      # (1.645 / 0.05)^2 = 1082 for the true law
    means = np.array([rng.choice(values, res.n).mean() for _ in range(2000)])
    assert abs(np.mean(means > 0) - 0.95) < 0.02
    grid = np.unique(np.geomspace(100, 10000, 41).astype(int))
    boot = theory.samples_for_positive(values, confidence=0.95, method="bootstrap", key=jax.random.key(0),
                                       n_boot=1000, grid=grid)
    assert res.n / 1.5 <= boot.n <= 1.5 * res.n


def test_sample_size_is_infinite_for_a_non_positive_mean_and_validates_input():
    assert theory.samples_for_positive(-np.abs(np.random.default_rng(1).normal(size=100))).n == math.inf
    with pytest.raises(ValueError, match="two"):
        theory.samples_for_positive(np.ones(1))
    with pytest.raises(ValueError, match="method"):
        theory.samples_for_positive(np.ones(5), method="magic")
