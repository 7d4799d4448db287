"""The distillation inputs of the dissection: what the students see instead of Figure 10's noise.

Every synthetic distribution has the per-pixel standard deviation of uniform[-1, 1),
:data:`INPUT_STD` = 1/sqrt(3), so scale is not a confound. Batch ``b`` of a seed is a pure
function of its noise key and ``b`` (``fold_in(keys.noise, b)``), so it is the same array
every epoch, as Figure 10's noise (:func:`mnist_aux.train.noise_batch`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from mnist_aux import train
from mnist_aux.configs import DISTRIBUTIONS, IMAGES, INPUTS, MOMENTS, STRUCTURED, UNIFORM_BLURS, Config  # noqa: F401
from mnist_aux.data import normalize

INPUT_STD = 3 ** -0.5  # the per-pixel std of uniform[-1, 1); every synthetic input matches it
BLUR_SIGMA = 2.0  # pixels, the Gaussian kernel of the "blurred" inputs
LOWRANK_DIM = 16  # dimension of the "lowrank" inputs' subspace (fixed per seed)


def _blur_matrix(n: int = 28, sigma: float = BLUR_SIGMA) -> np.ndarray:
    i = np.arange(n)
    g = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
    return (g / g.sum(axis=1, keepdims=True)).astype(np.float32)


def moments(images: np.ndarray) -> np.ndarray:
    """``[2, 784]`` float32: per-pixel mean and std of normalised ``images`` (uint8 ``[n, 784]``),
    the statistics the ``uniform_mnist_*`` inputs match (float64 sums, so exact to float32)."""
    x = normalize(np.asarray(images)).astype(np.float64)
    return np.stack([x.mean(axis=0), x.std(axis=0)]).astype(np.float32)


def batch(kind: str, cfg: Config, keys: train.SeedKeys, b, size: int, images=None) -> jax.Array:
    """Batch ``b`` of one seed's distillation inputs of kind ``kind``: ``[size, 784]``.

    ``uniform`` is Figure 10's noise (:func:`mnist_aux.train.noise_batch`). ``gaussian``:
    N(0, INPUT_STD^2) pixels. ``blurred``: gaussian noise smoothed by a separable Gaussian
    kernel of ``BLUR_SIGMA`` pixels, each pixel rescaled back to std INPUT_STD (spatially
    correlated). ``lowrank``: ``U z`` in a fixed random ``LOWRANK_DIM``-dimensional subspace
    of the seed (``U`` orthonormal), scaled so the mean pixel variance is INPUT_STD^2.
    ``mnist`` / ``fashion_mnist``: real training images ``images`` (uint8 ``[n, 784]``),
    batch ``b`` of a fixed per-seed permutation, normalised like the teacher's inputs.

    Structured uniform noise, each a transform of Figure 10's uniform batch ``b`` (so it
    pairs with the ``uniform`` point seed by seed): ``uniform_blur<L>``: smoothed by a
    separable Gaussian kernel of ``L`` pixels (correlation length), each pixel rescaled back
    to std INPUT_STD; ``uniform_mnist_moments``: affinely mapped to the normalised training
    images' overall pixel mean and std; ``uniform_mnist_pixel``: to each pixel's own mean and
    std (``images`` is then :func:`moments`' ``[2, 784]`` array; constant border pixels stay
    constant).
    """
    if kind == "uniform":
        return train.noise_batch(keys.noise, b, size)
    if kind in STRUCTURED:
        u = train.noise_batch(keys.noise, b, size)  # uniform[-1, 1), std INPUT_STD
        if kind.startswith("uniform_blur"):
            g = jnp.asarray(_blur_matrix(sigma=float(kind.removeprefix("uniform_blur"))))
            pixel_std = jnp.outer(jnp.linalg.norm(g, axis=1), jnp.linalg.norm(g, axis=1))
            return (jnp.einsum("ij,bjk,lk->bil", g, u.reshape(size, 28, 28), g) / pixel_std).reshape(size, 784)
        mean, std = images[0], images[1]
        if kind == "uniform_mnist_moments":  # overall: the pixel-averaged mean and the pooled std
            mean_all = mean.mean()
            mean, std = mean_all, jnp.sqrt(jnp.mean(std**2 + mean**2) - mean_all**2)
        return mean + std * u / INPUT_STD
    key = jax.random.fold_in(keys.noise, b)
    if kind == "gaussian":
        return INPUT_STD * jax.random.normal(key, (size, 784))
    if kind == "blurred":
        g = jnp.asarray(_blur_matrix())
        z = jax.random.normal(key, (size, 28, 28))
        pixel_std = jnp.outer(jnp.linalg.norm(g, axis=1), jnp.linalg.norm(g, axis=1))
        x = jnp.einsum("ij,bjk,lk->bil", g, z, g) / pixel_std
        return INPUT_STD * x.reshape(size, 784)
    if kind == "lowrank":
        basis_key = jax.random.fold_in(keys.noise, 2**32 - 1)  # never a batch index
        u, _ = jnp.linalg.qr(jax.random.normal(basis_key, (784, LOWRANK_DIM)))
        z = jax.random.normal(key, (size, LOWRANK_DIM)) * INPUT_STD * math.sqrt(784 / LOWRANK_DIM)
        return z @ u.T
    # real images: a fixed permutation per seed, batch b is a contiguous block of it
    perm = jax.random.permutation(jax.random.fold_in(keys.noise, 2**32 - 2), images.shape[0])
    idx = jax.lax.dynamic_slice_in_dim(perm, b * cfg.batch_size, size)
    return normalize(images[idx])


def first_batch(kind: str, cfg: Config, keys: train.SeedKeys, images=None) -> jax.Array:
    """The first batch the students see (epoch 0, first in order)."""
    b, size = train.first_batch_index(cfg, keys)
    return batch(kind, cfg, keys, b, size, images)
