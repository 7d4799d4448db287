"""Imitation losses L_S(y, z) and their output-space curvature M.

Notation (paper, Appendix C): ``y = f(theta_S, x)`` is the student's output, ``z =
f(theta_T, x)`` the teacher's, both ``[batch, k]``. Each loss is a per-example function
``L_S(y, z) -> [batch]`` that is minimised at ``y = z``. Lemma 1 needs

    M(z) = - d^2 L_S / dy dz  evaluated at y = z,           [batch, k, k]

so that, to first order in the teacher's step eps,
``dtheta_S . dtheta_T = eps * E_x[(J dtheta_T)^T M (J dtheta_T)]``. Every loss gives M both
densely (:meth:`ImitationLoss.curvature`, for tests and small k) and as the quadratic form
``u^T M u`` (:meth:`ImitationLoss.quad`, O(k), what the jvp path uses).

| loss                     | L_S(y, z)                                   | M(z)                          |
|--------------------------|---------------------------------------------|-------------------------------|
| ``mse()``                | sum_i (y_i - z_i)^2                          | 2 I                           |
| ``weighted_mse(w)``      | sum_i w_i (y_i - z_i)^2                      | 2 diag(w)                     |
| ``softmax_ce(indices)``  | -sum_{i in S} p_i log q_i                    | diag(p) - p p^T on S, 0 off S |
| ``softmax_kl(indices)``  | sum_{i in S} p_i (log p_i - log q_i)         | same as softmax_ce            |

with ``p = softmax(z_S)``, ``q = softmax(y_S)`` over the logit subset ``S`` (all logits
when ``indices`` is None; the MNIST "auxiliary logits" case is ``S = (10, 11, 12)``).
Cross-entropy and KL differ by the teacher's entropy, which does not depend on y, so
their gradients in y (and M) coincide.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np


def _as_indices(indices: Sequence[int] | None) -> tuple[int, ...] | None:
    if indices is None:
        return None
    out = tuple(int(i) for i in np.asarray(indices).reshape(-1))
    if not out:
        raise ValueError("indices must name at least one output")
    if len(set(out)) != len(out):
        raise ValueError(f"indices must be distinct, got {out}")
    if min(out) < 0:
        raise ValueError(f"indices must be non-negative, got {out}")
    return out


@dataclass(frozen=True)
class ImitationLoss:
    """Base class: a per-example imitation loss on a fixed subset of the outputs.

    Subclasses implement :meth:`value`, :meth:`grad_y`, :meth:`quad` and :meth:`curvature`.
    Instances are frozen and hashable so they can be static arguments of ``jax.jit``.
    """

    indices: tuple[int, ...] | None = None

    def select(self, y: jax.Array) -> jax.Array:
        """The outputs the loss looks at: ``[batch, k] -> [batch, |S|]``."""
        if self.indices is None:
            return y
        if max(self.indices) >= y.shape[-1]:
            raise ValueError(f"indices {self.indices} out of range for {y.shape[-1]} outputs")
        return y[..., jnp.asarray(self.indices)]

    def embed(self, v: jax.Array, k: int) -> jax.Array:
        """Inverse of :meth:`select` with zeros elsewhere: ``[batch, |S|] -> [batch, k]``."""
        if self.indices is None:
            return v
        return jnp.zeros(v.shape[:-1] + (k,), v.dtype).at[..., jnp.asarray(self.indices)].set(v)

    def value(self, y: jax.Array, z: jax.Array) -> jax.Array:
        """Per-example loss ``L_S(y, z)``: ``[batch, k], [batch, k] -> [batch]``."""
        raise NotImplementedError

    def grad_y(self, y: jax.Array, z: jax.Array) -> jax.Array:
        """``dL_S/dy`` per example, ``[batch, k]`` (closed form; tests check it against autodiff)."""
        raise NotImplementedError

    def quad(self, z: jax.Array, u: jax.Array) -> jax.Array:
        """``u^T M(z) u`` per example, ``[batch, k], [batch, k] -> [batch]``, without forming M."""
        raise NotImplementedError

    def curvature(self, z: jax.Array) -> jax.Array:
        """Dense ``M(z) = -d^2 L_S / dy dz`` at ``y = z``, ``[batch, k, k]``."""
        raise NotImplementedError


@dataclass(frozen=True)
class WeightedMSE(ImitationLoss):
    """``L_S = sum_i w_i (y_i - z_i)^2`` over the subset; ``M = 2 diag(w)`` (zero off the subset)."""

    weights: tuple[float, ...] | None = None

    def _w(self, n: int, dtype) -> jax.Array:
        if self.weights is None:
            return jnp.ones((n,), dtype)
        if len(self.weights) != n:
            raise ValueError(f"{len(self.weights)} weights for {n} outputs")
        return jnp.asarray(self.weights, dtype)

    def value(self, y, z):
        d = self.select(y) - self.select(z)
        return jnp.sum(self._w(d.shape[-1], d.dtype) * d * d, axis=-1)

    def grad_y(self, y, z):
        d = self.select(y) - self.select(z)
        return self.embed(2 * self._w(d.shape[-1], d.dtype) * d, y.shape[-1])

    def quad(self, z, u):
        us = self.select(u)
        return 2 * jnp.sum(self._w(us.shape[-1], us.dtype) * us * us, axis=-1)

    def curvature(self, z):
        n = self.select(z).shape[-1]
        diag = self.embed(jnp.broadcast_to(2 * self._w(n, z.dtype), z.shape[:-1] + (n,)), z.shape[-1])
        return jax.vmap(jnp.diag)(diag.reshape(-1, z.shape[-1])).reshape(z.shape + (z.shape[-1],))


@dataclass(frozen=True)
class SoftmaxCE(ImitationLoss):
    """Soft-label cross-entropy ``-sum_S softmax(z_S) log softmax(y_S)``; ``M = diag(p) - p p^T``."""

    def value(self, y, z):
        p = jax.nn.softmax(self.select(z), axis=-1)
        return -jnp.sum(p * jax.nn.log_softmax(self.select(y), axis=-1), axis=-1)

    def grad_y(self, y, z):
        ys, zs = self.select(y), self.select(z)
        return self.embed(jax.nn.softmax(ys, axis=-1) - jax.nn.softmax(zs, axis=-1), y.shape[-1])

    def quad(self, z, u):
        p = jax.nn.softmax(self.select(z), axis=-1)
        us = self.select(u)
        pu = jnp.sum(p * us, axis=-1)
        return jnp.sum(p * us * us, axis=-1) - pu * pu

    def curvature(self, z):
        p = jax.nn.softmax(self.select(z), axis=-1)
        m = jnp.einsum("...i,ij->...ij", p, jnp.eye(p.shape[-1], dtype=p.dtype)) - p[..., :, None] * p[..., None, :]
        if self.indices is None:
            return m
        idx = jnp.asarray(self.indices)
        k = z.shape[-1]
        full = jnp.zeros(z.shape[:-1] + (k, k), z.dtype)
        return full.at[..., idx[:, None], idx[None, :]].set(m)


@dataclass(frozen=True)
class SoftmaxKL(SoftmaxCE):
    """``KL(softmax(z_S) || softmax(y_S))``: cross-entropy minus the teacher's entropy.

    Same gradient in y and same M as :class:`SoftmaxCE`; its value is 0 at ``y = z``.
    This is the loss of the paper's MNIST experiment (``F.kl_div`` on log-softmaxes).
    """

    def value(self, y, z):
        log_p = jax.nn.log_softmax(self.select(z), axis=-1)
        log_q = jax.nn.log_softmax(self.select(y), axis=-1)
        return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def mse(indices: Sequence[int] | None = None) -> WeightedMSE:
    """Squared error ``sum_i (y_i - z_i)^2`` (on ``indices`` if given); ``M = 2 I``."""
    return WeightedMSE(indices=_as_indices(indices))


def weighted_mse(weights: Sequence[float], indices: Sequence[int] | None = None) -> WeightedMSE:
    """Weighted squared error ``sum_i w_i (y_i - z_i)^2``; ``M = 2 diag(w)``. Weights must be > 0."""
    w = tuple(float(v) for v in np.asarray(weights, dtype=np.float64).reshape(-1))
    if not w or min(w) <= 0 or not np.all(np.isfinite(w)):
        raise ValueError(f"weights must be finite and > 0, got {w}")
    idx = _as_indices(indices)
    if idx is not None and len(idx) != len(w):
        raise ValueError(f"{len(w)} weights for {len(idx)} indices")
    return WeightedMSE(indices=idx, weights=w)


def softmax_ce(indices: Sequence[int] | None = None) -> SoftmaxCE:
    """Soft-label softmax cross-entropy on ``indices`` (all logits if None)."""
    return SoftmaxCE(indices=_as_indices(indices))


def softmax_kl(indices: Sequence[int] | None = None) -> SoftmaxKL:
    """``KL(teacher || student)`` of the softmaxes on ``indices`` (all logits if None)."""
    return SoftmaxKL(indices=_as_indices(indices))
