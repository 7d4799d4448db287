"""The sampled-token (hard-label) student of Theorem 1.

Instead of the teacher's soft distribution ``p = softmax(z_S)``, the student sees a label
``c ~ p`` per example (as an LM student sees the teacher's sampled tokens) and minimises
``-log q_c`` with ``q = softmax(y_S)``. Since ``E_c[e_c] = p``, the expected gradient in y,
``q - E_c[e_c] = q - p``, is exactly the soft-label cross-entropy gradient, so the expected
step is the soft-label ``dtheta_S`` of eq. (S) and Theorem 1 holds in expectation. A single
sample is noisy: :func:`samples_for_positive` says how many samples make the inner product
positive with a given probability.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from statistics import NormalDist
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from theory.core import Apply, Inputs, Params, _mean_over, batches
from theory.losses import softmax_ce


def _labels(key, z_subset, n_draws):
    """``[n_draws, ...]`` labels drawn from ``softmax(z_subset)`` (indices into the subset)."""
    return jax.random.categorical(key, z_subset, axis=-1, shape=(n_draws,) + z_subset.shape[:-1])


@partial(jax.jit, static_argnums=(0, 5, 6))
def _sampled_grad_sum(f, params_s, params_t, x, key, indices, n_draws):
    sel = softmax_ce(indices).select
    c = _labels(key, jax.lax.stop_gradient(sel(f(params_t, x))), n_draws)

    def total(p):
        log_q = jax.nn.log_softmax(sel(f(p, x)), axis=-1)
        return -jnp.sum(jnp.take_along_axis(log_q[None], c[..., None], axis=-1)) / n_draws

    return jax.grad(total)(params_s), c[0].size


def sampled_student_update(f: Apply, params_student: Params, params_teacher: Params, xs: Inputs,
                           key: jax.Array, indices: Sequence[int] | None = None, n_draws: int = 1) -> Params:
    """Hard-label ``dtheta_S``: ``-grad mean_{x, draws} [-log softmax(y_S)_c]``, ``c ~ softmax(z_S)``.

    An unbiased estimator of :func:`theory.student_update` with ``softmax_ce(indices)``.
    ``n_draws`` labels are drawn per example; batch b uses ``fold_in(key, b)``.
    """
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    idx = softmax_ce(indices).indices
    mean_grad, _ = _mean_over(
        enumerate(batches(xs)),
        lambda bx: _sampled_grad_sum(f, params_student, params_teacher, bx[1], jax.random.fold_in(key, bx[0]), idx,
                                     n_draws))
    return optax.tree.scale(-1.0, mean_grad)


@partial(jax.jit, static_argnums=(0, 6, 7))
def _per_sample(f, params_s, params_t, direction, x, key, indices, n_draws):
    loss = softmax_ce(indices)
    z = loss.select(f(params_t, x))
    y, u = jax.jvp(lambda p: f(p, x), (params_s,), (direction,))
    q, us = jax.nn.softmax(loss.select(y), axis=-1), loss.select(u)
    c = _labels(key, z, n_draws)
    # -(q - e_c) . u  =  u_c - q . u
    return jnp.take_along_axis(us[None], c[..., None], axis=-1)[..., 0] - jnp.sum(q * us, axis=-1)[None]


def per_sample_inner_products(f: Apply, params_student: Params, params_teacher: Params, direction: Params,
                              xs: Inputs, key: jax.Array, indices: Sequence[int] | None = None,
                              n_draws: int = 1) -> jax.Array:
    """Each sampled label's contribution to ``dtheta_S . direction``, flattened: ``[n_draws * examples]``.

    Their mean is the hard-label student's inner product with ``direction`` (one jvp per
    batch); their expectation is the soft-label inner product.
    """
    idx = softmax_ce(indices).indices
    parts = [_per_sample(f, params_student, params_teacher, direction, x, jax.random.fold_in(key, b), idx, n_draws)
             for b, x in enumerate(batches(xs))]
    if not parts:
        raise ValueError("xs holds no inputs")
    return jnp.concatenate([p.reshape(-1) for p in parts])


class SampleSize(NamedTuple):
    """How many sampled labels make ``P(mean inner product > 0) >= confidence``.

    n           the number of samples (math.inf if the mean is not positive; None if the
                bootstrap grid never reached the confidence)
    mean, std   of the per-sample inner products
    method      "clt" or "bootstrap"
    confidence  the target probability
    """

    n: float | int | None
    mean: float
    std: float
    method: str
    confidence: float


def samples_for_positive(values: jax.Array | np.ndarray, confidence: float = 0.95, method: str = "clt",
                         key: jax.Array | None = None, n_boot: int = 2000,
                         grid: Sequence[int] | None = None) -> SampleSize:
    """Samples needed for the hard-label inner product to be positive with probability ``confidence``.

    "clt": ``n = ceil((Phi^-1(confidence) * std / mean)^2)`` from the normal approximation
    of the mean of n i.i.d. per-sample values. "bootstrap": for each n of ``grid`` (default
    powers of 2 up to 16 x the number of values) resample n values with replacement
    ``n_boot`` times and return the smallest n whose resampled means are positive in at
    least ``confidence`` of draws.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size < 2:
        raise ValueError("need at least two per-sample values")
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
    mean, std = float(v.mean()), float(v.std(ddof=1))
    if method == "clt":
        if mean <= 0:
            return SampleSize(math.inf, mean, std, method, confidence)
        z = NormalDist().inv_cdf(confidence)
        return SampleSize(max(1, math.ceil((z * std / mean) ** 2)), mean, std, method, confidence)
    if method != "bootstrap":
        raise ValueError(f"method must be 'clt' or 'bootstrap', got {method!r}")
    if key is None:
        raise ValueError("the bootstrap needs a PRNG key")
    if grid is None:
        grid = [2 ** i for i in range(int(math.log2(16 * v.size)) + 1)]
    seed = int(jax.random.randint(key, (), 0, 2 ** 31 - 1))
    rng = np.random.default_rng(seed)
    for n in grid:
        means = np.empty(n_boot)
        for j in range(n_boot):
            means[j] = v[rng.integers(0, v.size, size=n)].mean()
        if np.mean(means > 0) >= confidence:
            return SampleSize(int(n), mean, std, method, confidence)
    return SampleSize(None, mean, std, method, confidence)


def sign_curve(values: jax.Array | np.ndarray, grid: Sequence[int], n_boot: int, seed: int) -> list[float]:
    """Bootstrap ``P(mean of n resampled values > 0)`` for each n of ``grid``: how the sign of the
    hard-label inner product firms up with the number of samples (the curve behind
    :func:`samples_for_positive`'s bootstrap answer). ``values [N]``; returns ``[len(grid)]``.
    """
    rng = np.random.default_rng(seed)
    v = np.asarray(values, np.float64).reshape(-1)
    out = []
    for n in grid:
        # one vectorised draw while it fits in memory (2**24 indices), else row by row: same stream
        means = v[rng.integers(0, v.size, (n_boot, n))].mean(axis=1) if n * n_boot <= 2 ** 24 else \
            np.asarray([v[rng.integers(0, v.size, n)].mean() for _ in range(n_boot)])
        out.append(float(np.mean(means > 0)))
    return out
