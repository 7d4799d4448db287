"""Imitation losses: closed forms against autodiff, and M = -d2 L / dy dz at y = z."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import theory
from strategies import LOSS_KINDS, examples, make_loss, subsets

pytestmark = pytest.mark.usefixtures("x64")


@st.composite
def loss_and_outputs(draw):
    k = draw(st.integers(2, 7))
    kind = draw(st.sampled_from(LOSS_KINDS))
    seed = draw(st.integers(0, 2**16))
    loss = make_loss(kind, k, draw(subsets(k)), seed)
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([0.1, 1.0, 10.0]))
    y, z, u = (jnp.asarray(scale * rng.normal(size=(3, k))) for _ in range(3))
    return loss, y, z, u


@given(loss_and_outputs())
@pytest.mark.property
@settings(max_examples=examples(25))
def test_closed_form_gradient_matches_autodiff(case):
    loss, y, z, _ = case
    auto = jax.grad(lambda yy: jnp.sum(loss.value(yy, z)))(y)
    np.testing.assert_allclose(loss.grad_y(y, z), auto, rtol=1e-10, atol=1e-12)


@given(loss_and_outputs())
@pytest.mark.property
@settings(max_examples=examples(25))
def test_curvature_is_minus_mixed_second_derivative_and_quad_matches(case):
    loss, _, z, u = case
    dl_dy = jax.grad(lambda y1, z1: loss.value(y1[None], z1[None])[0], argnums=0)
    m_auto = -jax.vmap(jax.jacfwd(dl_dy, argnums=1))(z, z)
    m = loss.curvature(z)
    np.testing.assert_allclose(m, m_auto, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(loss.quad(z, u), jnp.einsum("bi,bij,bj->b", u, m, u), rtol=1e-10, atol=1e-12)
    # M is positive semi-definite: every imitation loss is minimised at y = z
    assert np.all(np.linalg.eigvalsh(np.asarray(m)) >= -1e-12)


@given(loss_and_outputs())
@pytest.mark.property
@settings(max_examples=examples(20))
def test_loss_is_minimised_at_teacher_outputs(case):
    loss, _, z, _ = case
    np.testing.assert_allclose(loss.grad_y(z, z), 0.0, atol=1e-12)


def test_kl_is_cross_entropy_minus_teacher_entropy():
    rng = np.random.default_rng(0)
    y, z = jnp.asarray(rng.normal(size=(4, 5))), jnp.asarray(rng.normal(size=(4, 5)))
    p = jax.nn.softmax(z[:, 1:4])
    entropy = -jnp.sum(p * jnp.log(p), axis=-1)
    np.testing.assert_allclose(theory.softmax_kl([1, 2, 3]).value(y, z),
                               theory.softmax_ce([1, 2, 3]).value(y, z) - entropy, rtol=1e-12)
    np.testing.assert_allclose(theory.softmax_kl().value(z, z), 0.0, atol=1e-12)


@pytest.mark.parametrize("bad, message", [
    (lambda: theory.softmax_ce([]), "at least one"),
    (lambda: theory.softmax_ce([1, 1]), "distinct"),
    (lambda: theory.mse([-1]), "non-negative"),
    (lambda: theory.weighted_mse([1.0, 0.0]), "> 0"),
    (lambda: theory.weighted_mse([1.0, 2.0], [0, 1, 2]), "2 weights for 3 indices"),
    (lambda: theory.softmax_ce([5]).value(jnp.zeros((2, 3)), jnp.zeros((2, 3))), "out of range"),
])
def test_bad_arguments_raise_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        bad()
