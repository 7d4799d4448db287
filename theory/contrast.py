"""The different-initialisation contrast (paper section 5 / Theorem 1's hypothesis).

Theorem 1 needs the student to start where the teacher started. With ``theta0' != theta0``
the student's imitation step is taken at another point, and ``dtheta_S . dtheta_T`` has no
sign guarantee. Pass ``student_init`` to :func:`theory.projection` to measure it; this
module makes the initialisations: an independent draw is just the model's initialiser with
another seed, and :func:`perturbed_init` dials continuously between the two.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from theory.core import Params


def perturbed_init(params0: Params, sigma: float, key: jax.Array) -> Params:
    """``theta0' = theta0 + sigma * std(leaf) * N(0, I)`` leaf by leaf.

    ``std(leaf)`` is the empirical standard deviation of each parameter array, so sigma = 1
    perturbs every weight matrix by noise as large as its own initial spread; leaves with
    zero spread (e.g. zero-initialised biases) are left unchanged. sigma = 0 gives theta0.
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    noise = optax.tree.random_like(key, params0, jax.random.normal)
    return jax.tree.map(lambda p, n: p + sigma * jnp.std(p) * n, params0, noise)
