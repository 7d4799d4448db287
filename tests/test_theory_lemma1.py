"""Properties of Theorem 1 / Lemma 1 on hypothesis-drawn networks, inputs, losses and teachers."""

from functools import partial
from itertools import takewhile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from jax.flatten_util import ravel_pytree

import theory
from strategies import Arch, apply_fn, cases, examples, init_params, make_inputs, smooth_along

pytestmark = pytest.mark.usefixtures("x64")


@partial(jax.jit, static_argnums=(0, 4))
def _brute_force_A(f, params0, dtheta_T, x, loss):
    flat0, unravel = ravel_pytree(params0)
    v, _ = ravel_pytree(dtheta_T)
    jac = jax.jacfwd(lambda w: f(unravel(w), x))(flat0)                    # [n, k, P]
    u = jac @ v                                                           # [n, k]
    z = f(params0, x)
    dl_dy = jax.grad(lambda y, zz: loss.value(y[None], zz[None])[0], argnums=0)
    m = -jax.vmap(jax.jacfwd(dl_dy, argnums=1))(z, z)                     # [n, k, k]
    terms = jnp.einsum("nk,nkl,nl->n", u, m, u)
    scale = jnp.mean(jnp.einsum("nk,nkl,nl->n", jnp.abs(u), jnp.abs(m), jnp.abs(u)))
    return jnp.mean(terms), scale


def brute_force_A(case):
    """A from a materialised Jacobian (jax.jacfwd) and an autodiff M = -d2 L / dy dz at y = z."""
    return _brute_force_A(case.f, case.params0, case.dtheta_T, case.x, case.loss)


@given(cases())
@pytest.mark.property
@settings(max_examples=examples(30))
def test_jvp_A_equals_materialised_jacobian(case):
    a = theory.lemma1_coefficient(case.f, case.params0, case.dtheta_T, case.x, case.loss)
    a_ref, scale = brute_force_A(case)
    assert abs(a - a_ref) <= 1e-10 * max(abs(a_ref), scale, 1e-300), case.description
    check_sign_at_small_eps(case, float(a))


@partial(jax.jit, static_argnums=0)
def _jvp_sq(f, params0, dtheta_T, x):
    _, u = jax.jvp(lambda p: f(p, x), (params0,), (dtheta_T,))
    return jnp.mean(jnp.sum(u * u, axis=-1))


def a_is_substantial(case, a):
    """A well above rounding: compared with |J dtheta_T|^2 (the largest A could be, up to M's scale).

    Also asserts Lemma 1's A >= 0 (M is positive semi-definite), up to float64 rounding.
    """
    scale = float(_jvp_sq(case.f, case.params0, case.dtheta_T, case.x))
    assert a >= -1e-12 * max(scale, 1.0), (case.description, a)
    return a > 1e-6 * scale


def theil_sen_slope(x, y):
    """Median of pairwise slopes: a line fit that one non-asymptotic point cannot drag."""
    i, j = np.triu_indices(len(x), k=1)
    return float(np.median((y[j] - y[i]) / (x[j] - x[i])))


EPS = np.logspace(-6, -1, 11)


@given(cases())
@pytest.mark.property
@settings(max_examples=examples(25))
def test_inner_over_eps_converges_to_A_at_first_order(case):
    a = float(theory.lemma1_coefficient(case.f, case.params0, case.dtheta_T, case.x, case.loss))
    check_sign_at_small_eps(case, a)
    if not a_is_substantial(case, a):
        return  # the "= 0" branch is tested on purpose below
    eps_grid = np.asarray(list(takewhile(lambda e: smooth_along(case, e), EPS)))  # ReLU: stop at the first kink
    errs = []
    for eps in eps_grid:
        d_s = theory.student_update(case.f, case.params0, theory.teacher_params(case.params0, case.dtheta_T, eps),
                                    case.x, case.loss)
        errs.append(abs(float(theory.inner(d_s, case.dtheta_T)) / eps - a) / a)
    errs = np.asarray(errs)
    if errs.max() < 1e-9:
        return  # f is affine along dtheta_T here (e.g. dead ReLUs): the relation is exact
    # fit where the error is above float64 rounding (~1e-16 / eps relative)
    keep = errs > 1e-9
    if keep.sum() < 4:
        return  # a kink within eps < 1e-4: too few smooth points to fit a slope
    slope = theil_sen_slope(np.log(eps_grid[keep]), np.log(errs[keep]))
    assert 0.8 <= slope <= 1.2, (case.description, slope, errs)


def check_sign_at_small_eps(case, a, eps=1e-5):
    """Theorem 1 at small eps: dtheta_S . dtheta_T >= 0, and = eps * A to 1% when A is not ~0."""
    d_s = theory.student_update(case.f, case.params0, theory.teacher_params(case.params0, case.dtheta_T, eps),
                                case.x, case.loss)
    ip = float(theory.inner(d_s, case.dtheta_T))
    assert ip >= 0, case.description
    if a_is_substantial(case, a):
        assert ip > 0 and abs(ip / (eps * a) - 1) < 1e-2, case.description
    return d_s


# The sign property is checked on every drawn case of the tests below that call
# check_sign_at_small_eps: 110 + 30 + 25 + 25 + 10 = 200 cases per CI run.
@given(cases())
@pytest.mark.property
@settings(max_examples=examples(110))
def test_inner_product_nonnegative_at_small_eps(case):
    a = float(theory.lemma1_coefficient(case.f, case.params0, case.dtheta_T, case.x, case.loss))
    check_sign_at_small_eps(case, a)


@given(cases(teacher_kinds=("gradient",)))
@pytest.mark.property
@settings(max_examples=examples(25))
def test_teacher_loss_decreases_along_student_step(case):
    a = float(theory.lemma1_coefficient(case.f, case.params0, case.dtheta_T, case.x, case.loss))
    d_s = check_sign_at_small_eps(case, a, eps=1e-4)
    if not a_is_substantial(case, a):
        return
    norm = float(jax.numpy.sqrt(theory.inner(d_s, d_s)))
    alphas = [s / norm for s in (1e-6, 1e-5)]
    change = theory.teacher_loss_change(case.loss_T, case.params0, d_s, alphas)
    assert np.all(np.asarray(change) < 0), (case.description, change)


def test_jvp_inner_product_equals_exact_gradient_inner_product():
    arch = Arch(3, (5, 5), 4, "gelu")
    f, p0 = apply_fn(arch), init_params(arch, 7)
    p_t = init_params(arch, 8)
    x = make_inputs("gaussian", 6, 3, 1)
    for loss in (theory.mse(), theory.weighted_mse([1, 2], [0, 3]), theory.softmax_kl([1, 2, 3])):
        v = jax.tree.map(jnp.ones_like, p0)
        exact = theory.inner(theory.student_update(f, p0, p_t, x, loss), v)
        fast = theory.inner_product_jvp(f, p0, p_t, v, x, loss)
        np.testing.assert_allclose(fast, exact, rtol=1e-12)


def test_batches_stream_equals_one_array():
    arch = Arch(2, (8,), 3, "tanh")
    f, p0 = apply_fn(arch), init_params(arch, 3)
    x = make_inputs("uniform", 12, 2, 5)
    d_t = jax.tree.map(jnp.ones_like, p0)
    one = theory.projection(f, p0, d_t, 1e-3, x, theory.softmax_ce())
    stream = theory.projection(f, p0, d_t, 1e-3, (x[i:i + 5] for i in range(0, 12, 5)), theory.softmax_ce())
    for k in ("inner", "cosine", "A", "ratio"):
        np.testing.assert_allclose(getattr(stream, k), getattr(one, k), rtol=1e-12)
    assert stream.n_examples == one.n_examples == 12


def test_zero_branch_detected_when_teacher_moves_only_unobserved_outputs():
    """A teacher step that changes only the last layer's rows for outputs the loss never sees."""
    arch = Arch(3, (5, 5), 6, "relu")
    f, p0 = apply_fn(arch), init_params(arch, 11)
    x = make_inputs("gaussian", 8, 3, 2)
    loss = theory.softmax_kl([3, 4, 5])                 # the student imitates outputs 3..5 only
    d_t = jax.tree.map(jnp.zeros_like, p0)
    head = d_t["layers"][2]
    head["kernel"][...] = head["kernel"][...].at[:, :3].set(1.0)   # moves outputs 0..2 only
    head["bias"][...] = head["bias"][...].at[:3].set(1.0)
    assert theory.theorem1_branch(f, p0, d_t, x, loss) == "zero"
    for eps in (1e-6, 1e-2, 1.0, 1e3):
        ip = theory.inner(theory.student_update(f, p0, theory.teacher_params(p0, d_t, eps), x, loss), d_t)
        assert float(ip) == 0.0
    # the same step observed through all outputs is in the positive branch
    assert theory.theorem1_branch(f, p0, d_t, x, theory.softmax_kl()) == "positive"


@given(cases())
@pytest.mark.property
@settings(max_examples=examples(10))
def test_branch_is_never_violated_for_shared_init(case):
    assert theory.theorem1_branch(case.f, case.params0, case.dtheta_T, case.x, case.loss) in ("zero", "positive")
    check_sign_at_small_eps(case, float(theory.lemma1_coefficient(case.f, case.params0, case.dtheta_T, case.x,
                                                                   case.loss)))
