"""Theorem 1 / Lemma 1 of the paper (Appendix C) on any pure ``f(params, x)``.

Setting. Teacher and student start at ``theta0``. The teacher moves to
``theta_T = theta0 + eps * dtheta_T`` (any direction; e.g. ``-grad L_T(theta0)``). The
student takes one gradient step on an imitation loss of the teacher's outputs:

    dtheta_S = - grad_theta E_x[ L_S(f(theta, x), f(theta_T, x)) ]  at theta = theta0.   (eq. S)

Lemma 1: ``dtheta_S . dtheta_T = eps * A + O(eps^2)`` with

    A = E_x[ (J dtheta_T)^T M (J dtheta_T) ] >= 0,   J = d f(theta0, x) / d theta,      (eq. A)

and M the loss's output curvature (:mod:`theory.losses`). ``J dtheta_T`` is one forward-mode
product (``jax.jvp``); J is never materialised, so the same code runs on LM-sized models.
The inner product itself also needs only a jvp:
``<grad_theta L_S, v> = <dL_S/dy, J v>`` (:func:`inner_product_jvp`).

Conventions. ``f(params, x)`` is batched: ``x`` is one batch, ``f`` returns ``[..., k]``
and every leading position counts as one example (rows of an MLP batch; tokens of an LM
batch). ``xs`` is either one array batch or an iterable of batches (a list, a generator,
a sampler); expectations are means over all examples of all batches. ``f`` and ``loss``
are static arguments of ``jax.jit``: pass the same function object each time to avoid
recompiling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from theory.losses import ImitationLoss

Params = Any
Apply = Callable[[Params, jax.Array], jax.Array]
Inputs = jax.Array | Iterable[jax.Array]


def batches(xs: Inputs) -> Iterable[jax.Array]:
    """One array -> that single batch; anything else is iterated as a stream of batches."""
    if hasattr(xs, "shape"):
        return (xs,)
    return xs


def inner(a: Params, b: Params) -> jax.Array:
    """Euclidean inner product of two parameter pytrees (``optax.tree.vdot``)."""
    return optax.tree.vdot(a, b)


def cosine(a: Params, b: Params) -> jax.Array:
    """Cosine of the angle between two parameter pytrees; nan if either is zero."""
    return optax.tree.vdot(a, b) / (optax.tree.norm(a) * optax.tree.norm(b))


def teacher_params(params0: Params, dtheta_T: Params, eps: float) -> Params:
    """``theta_T = theta0 + eps * dtheta_T``."""
    return optax.tree.add_scale(params0, eps, dtheta_T)


def teacher_direction(loss_T: Callable[[Params], jax.Array], params0: Params) -> Params:
    """``dtheta_T = -grad L_T(theta0)`` for a scalar teacher loss ``L_T(params)``."""
    return optax.tree.scale(-1.0, jax.grad(loss_T)(params0))


def _count(out: jax.Array) -> int:
    """Number of examples in an output ``[..., k]``: every leading position is one."""
    return out.size // out.shape[-1]


@partial(jax.jit, static_argnums=(0, 4))
def _imitation_grad_sum(f, params_s, params_t, x, loss):
    """``sum_x grad_theta L_S(f(theta, x), f(theta_T, x))`` at ``theta = params_s``."""
    z = jax.lax.stop_gradient(f(params_t, x))
    return jax.grad(lambda p: jnp.sum(loss.value(f(p, x), z)))(params_s), _count(z)


@partial(jax.jit, static_argnums=(0, 4))
def _quad_sum(f, params0, direction, x, loss):
    """``sum_x (J v)^T M (J v)`` with ``J v`` from one jvp at ``params0``."""
    z, u = jax.jvp(lambda p: f(p, x), (params0,), (direction,))
    return jnp.sum(loss.quad(z, u)), _count(z)


@partial(jax.jit, static_argnums=(0, 5))
def _inner_sum(f, params_s, params_t, direction, x, loss):
    """``-sum_x <dL_S/dy, J v>`` at the student's parameters: one jvp and one forward."""
    z = f(params_t, x)
    y, u = jax.jvp(lambda p: f(p, x), (params_s,), (direction,))
    return -jnp.sum(loss.grad_y(y, z) * u), _count(z)


def _mean_over(xs: Inputs, per_batch_sum):
    """Mean over every example of ``xs`` of a per-batch ``(sum, count)``; returns (mean, n)."""
    total, n = None, 0
    for x in batches(xs):
        s, count = per_batch_sum(x)
        total = s if total is None else optax.tree.add(total, s)
        n += int(count)
    if n == 0:
        raise ValueError("xs holds no inputs")
    return optax.tree.scale(1.0 / n, total), n


def student_update(f: Apply, params_student: Params, params_teacher: Params, xs: Inputs,
                   loss: ImitationLoss) -> Params:
    """``dtheta_S`` of eq. (S): minus the gradient of the mean imitation loss, exactly.

    The gradient is taken at ``params_student`` (``theta0`` for the shared-init student, any
    other ``theta0'`` for the different-init contrast) against fixed teacher outputs
    ``f(params_teacher, x)``.
    """
    mean_grad, _ = _mean_over(xs, lambda x: _imitation_grad_sum(f, params_student, params_teacher, x, loss))
    return optax.tree.scale(-1.0, mean_grad)


def lemma1_coefficient(f: Apply, params0: Params, dtheta_T: Params, xs: Inputs,
                       loss: ImitationLoss) -> jax.Array:
    """``A`` of eq. (A): ``E_x[(J dtheta_T)^T M (J dtheta_T)]``, one jvp per batch, no Jacobian."""
    a, _ = _mean_over(xs, lambda x: _quad_sum(f, params0, dtheta_T, x, loss))
    return a


def inner_product_jvp(f: Apply, params_student: Params, params_teacher: Params, direction: Params,
                      xs: Inputs, loss: ImitationLoss) -> jax.Array:
    """``dtheta_S . direction`` without forming ``dtheta_S``: ``-E_x <dL_S/dy, J direction>``.

    Costs one jvp and one teacher forward per batch (no backward pass), so it is the
    cheap way to measure the projection on large models. Equals
    ``inner(student_update(...), direction)`` up to rounding.
    """
    v, _ = _mean_over(xs, lambda x: _inner_sum(f, params_student, params_teacher, direction, x, loss))
    return v


class Projection(NamedTuple):
    """The quantities of Theorem 1 for one teacher step (all float scalars).

    inner          dtheta_S . dtheta_T (exact, eq. S)
    cosine         cos(dtheta_S, dtheta_T)
    A              Lemma-1 coefficient at theta0 (eq. A); eps * A is the first-order prediction
    ratio          inner / (eps * A): -> 1 as eps -> 0 for the shared-init student
    norm_student   |dtheta_S|
    norm_teacher   |dtheta_T|
    eps            the teacher's step size
    n_examples     number of examples the expectations averaged over
    """

    inner: jax.Array
    cosine: jax.Array
    A: jax.Array
    ratio: jax.Array
    norm_student: jax.Array
    norm_teacher: jax.Array
    eps: float
    n_examples: int

    def as_dict(self) -> dict[str, float]:
        """Plain Python floats, for JSON result files."""
        return {k: float(v) for k, v in self._asdict().items()}


def projection(f: Apply, params0: Params, dtheta_T: Params, eps: float, xs: Inputs,
               loss: ImitationLoss, student_init: Params | None = None) -> Projection:
    """Theorem 1 in one pass over ``xs``: the student's step, its projection on the teacher's.

    The teacher is ``theta0 + eps * dtheta_T``. The student starts at ``student_init``
    (default ``theta0``: shared initialisation). With a different init the Lemma-1
    guarantee does not apply; ``A`` is still reported at ``theta0`` for comparison.
    """
    params_t = teacher_params(params0, dtheta_T, eps)
    params_s = params0 if student_init is None else student_init

    def sums(x):
        g, count = _imitation_grad_sum(f, params_s, params_t, x, loss)
        return (g, _quad_sum(f, params0, dtheta_T, x, loss)[0]), count

    (mean_grad, a), n = _mean_over(xs, sums)
    d_s = optax.tree.scale(-1.0, mean_grad)
    ip = inner(d_s, dtheta_T)
    norm_s, norm_t = optax.tree.norm(d_s), optax.tree.norm(dtheta_T)
    return Projection(inner=ip, cosine=ip / (norm_s * norm_t), A=a, ratio=ip / (eps * a),
                      norm_student=norm_s, norm_teacher=norm_t, eps=float(eps), n_examples=n)
