"""The theorem's consequence for the teacher's loss, and where it stops holding.

Theorem 1: if ``dtheta_T = -grad L_T(theta0)`` then ``dtheta_S . dtheta_T > 0`` means the
student's step is a descent direction for ``L_T``, so ``L_T(theta0 + alpha dtheta_S) <
L_T(theta0)`` for small ``alpha``; the guarantee is first order in ``eps``. These functions
measure the loss change on a grid of ``alpha`` and *search* for the smallest ``eps`` at which
the inner product or the loss decrease fails, rather than assuming either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from theory.core import Apply, Inputs, Params, inner, lemma1_coefficient, student_update, teacher_params
from theory.losses import ImitationLoss


def teacher_loss_change(loss_T: Callable[[Params], jax.Array], params0: Params, direction: Params,
                        alphas: Sequence[float]) -> jax.Array:
    """``L_T(theta0 + alpha * direction) - L_T(theta0)`` for each alpha: ``[len(alphas)]``."""
    base = loss_T(params0)
    return jnp.stack([loss_T(optax.tree.add_scale(params0, a, direction)) - base for a in alphas])


class EpsSearch(NamedTuple):
    """Result of :func:`smallest_failing_eps`.

    eps_fail   smallest eps found at which the criterion fails (None: held on the whole grid)
    eps_hold   largest eps below eps_fail at which it held (None: failed at the first eps)
    criterion  "inner" (dtheta_S . dtheta_T > 0) or "loss" (L_T decreases along dtheta_S)
    grid       the eps grid scanned, ``[n]``
    inner      dtheta_S . dtheta_T at each grid eps, ``[n]``
    loss_change  L_T(theta0 + step * dtheta_S / |dtheta_S|) - L_T(theta0) at each grid eps
                 (nan when no ``loss_T`` was given), ``[n]``
    """

    eps_fail: float | None
    eps_hold: float | None
    criterion: str | None
    grid: np.ndarray
    inner: np.ndarray
    loss_change: np.ndarray


def _check(f, params0, dtheta_T, xs, loss, loss_T, step, eps):
    d_s = student_update(f, params0, teacher_params(params0, dtheta_T, eps), xs, loss)
    ip = float(inner(d_s, dtheta_T))
    if loss_T is None:
        return ip, float("nan")
    norm = float(optax.tree.norm(d_s))
    if norm == 0.0:
        return ip, 0.0
    return ip, float(teacher_loss_change(loss_T, params0, d_s, [step / norm])[0])


def _fails(ip: float, dl: float) -> str | None:
    if not ip > 0:
        return "inner"
    if dl >= 0:  # nan (no loss_T) compares False
        return "loss"
    return None


def smallest_failing_eps(f: Apply, params0: Params, dtheta_T: Params, xs: Inputs, loss: ImitationLoss,
                         loss_T: Callable[[Params], jax.Array] | None = None, step: float = 1e-3,
                         eps_grid: Sequence[float] | None = None, refine: int = 30) -> EpsSearch:
    """Scan ``eps`` upward, then bisect (in log eps) to the first failure of Theorem 1's claims.

    At each eps the student's exact step ``dtheta_S`` (eq. S) is computed; the claim fails
    when ``dtheta_S . dtheta_T <= 0`` or, with ``loss_T``, when a step of length ``step``
    along ``dtheta_S`` does not lower ``L_T``. Failure need not be monotone in eps: the
    result is the first failure on the grid, refined between it and the grid point below.
    Use :func:`theorem1_branch` first: in the "zero" branch everything fails trivially.
    """
    grid = np.asarray(np.geomspace(1e-6, 1e3, 37) if eps_grid is None else eps_grid, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or np.any(grid <= 0) or np.any(np.diff(grid) <= 0):
        raise ValueError("eps_grid must be a non-empty increasing sequence of positive numbers")
    ips, dls = np.full(grid.size, np.nan), np.full(grid.size, np.nan)
    for i, eps in enumerate(grid):
        ips[i], dls[i] = _check(f, params0, dtheta_T, xs, loss, loss_T, step, eps)
        criterion = _fails(ips[i], dls[i])
        if criterion is None:
            continue
        if i == 0:
            return EpsSearch(float(eps), None, criterion, grid, ips, dls)
        lo, hi = np.log(grid[i - 1]), np.log(eps)
        for _ in range(refine):
            mid = 0.5 * (lo + hi)
            c = _fails(*_check(f, params0, dtheta_T, xs, loss, loss_T, step, float(np.exp(mid))))
            if c is None:
                lo = mid
            else:
                hi, criterion = mid, c
        return EpsSearch(float(np.exp(hi)), float(np.exp(lo)), criterion, grid, ips, dls)
    return EpsSearch(None, None, None, grid, ips, dls)


def theorem1_branch(f: Apply, params0: Params, dtheta_T: Params, xs: Inputs, loss: ImitationLoss,
                    eps_grid: Sequence[float] = (1e-4, 1e-2, 1.0), rtol: float = 1e-12) -> str:
    """Which branch of Theorem 1 a teacher step falls in: ``"zero"``, ``"positive"`` or ``"violated"``.

    "zero": ``A = 0`` and ``dtheta_S . dtheta_T = 0`` at every eps of the grid (the teacher's
    step does not move the imitated outputs on these inputs, so the student receives no
    signal). "positive": ``A > 0`` and the inner product is positive at the smallest eps.
    "violated": anything else (which Lemma 1 says cannot happen for a shared init).
    Zero is judged relative to ``|dtheta_T|^2`` times the output scale, with ``rtol``.
    """
    a = float(lemma1_coefficient(f, params0, dtheta_T, xs, loss))
    ips = [float(inner(student_update(f, params0, teacher_params(params0, dtheta_T, e), xs, loss), dtheta_T))
           for e in eps_grid]
    scale = float(optax.tree.norm(dtheta_T)) ** 2
    tol = rtol * max(scale, np.finfo(np.float32).tiny)
    if abs(a) <= tol and all(abs(v) <= tol * max(e, 1.0) for v, e in zip(ips, eps_grid)):
        return "zero"
    if a > tol and ips[0] > 0:
        return "positive"
    return "violated"
