"""Pure, per-seed pieces of the experiment: keys, inits, the epoch skeleton, teacher training, accuracy.

Every function here describes ONE seed; :mod:`mnist_aux.engine` runs them for many seeds at
once with ``jax.vmap`` (the seed axis) inside ``jax.jit``. Shapes below omit that seed axis.
An epoch is one ``lax.scan`` over its full batches plus one step on the last, smaller batch
(60,000 = 58 x 1024 + 608), as the official script's loader does. The students and their
distillation epoch are :mod:`mnist_aux.engine`'s.

Noise. Each model's noise set is the fixed set of ``n_noise`` images of the official
script, but never stored: batch ``b`` is drawn from ``fold_in(noise_key, b)``, so it is
the same array every epoch; each epoch visits the full batches in a fresh order (the
official loader reshuffles the fixed set every epoch; we reshuffle whole batches).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.extend.random import threefry2x32_p

from mnist_aux.configs import DIGITS, Config
from mnist_aux.data import normalize
from mnist_aux.model import apply, init_params


class SeedKeys(NamedTuple):
    """The named keys of one seed, split once from ``jax.random.key(seed)``."""

    init: jax.Array  # the reference initialisation theta_0
    shuffle: jax.Array  # the teacher's per-epoch permutation of the training set
    noise: jax.Array  # noise batch b = uniform(fold_in(noise, b))
    order: jax.Array  # the per-epoch order of the noise batches


def seed_keys(seed: int | jax.Array, impl: str) -> SeedKeys:
    """The keys of ``seed`` under the PRNG implementation ``impl`` (see ``Config.prng_impl``)."""
    return SeedKeys(*jax.random.split(jax.random.key(seed, impl=impl), 4))


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` with no fixed point (rejection sampling).

    ``perm[i]`` is the model whose initialisation the cross-model student of model ``i``
    starts from. The official script uses ``torch.randperm``, which leaves a model paired
    with its own init (a "cross-model" student that is really a shared-init one) in about
    one of every ``n`` models on average; a derangement never does.
    """
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 models, got {n}")
    rng = np.random.default_rng([0x5EED, seed, n])
    while True:  # accepted with probability ~1/e, so a few tries
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def batch_sizes(n: int, batch_size: int) -> tuple[int, int]:
    """``(full batches, size of the last partial batch or 0)`` for ``n`` examples."""
    return n // batch_size, n % batch_size


def noise_batch(noise_key: jax.Array, b: jax.Array | int, size: int) -> jax.Array:
    """Noise batch ``b`` of one model: ``[size, 784]`` uniform in [-1, 1), the same every epoch.

    Counter-mode threefry2x32 on ``fold_in(noise_key, b)``, using BOTH 32-bit words of each
    hash: half the hashing of ``jax.random.uniform``, whose (partitionable) threefry hashes
    once per word and XORs the two halves. Exact under ``vmap`` like any threefry draw. The
    bits become floats as in ``jax.random.uniform`` (23 mantissa bits). With an ``rbg`` key
    (benchmarks only) it is ``jax.random.uniform``.
    """
    key = jax.random.fold_in(noise_key, b)
    if jax.random.key_impl(key) != jax.random.key_impl(jax.random.key(0, impl="threefry2x32")):
        return jax.random.uniform(key, (size, 784), jnp.float32, -1.0, 1.0)
    half = size * 784 // 2  # size * 784 is even
    k = jax.random.key_data(key)
    bits = jnp.concatenate(threefry2x32_p.bind(k[0], k[1], jnp.zeros(half, jnp.uint32),
                                               jax.lax.iota(jnp.uint32, half)))
    unit = jax.lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32) - 1.0  # [0, 1)
    return (2.0 * unit - 1.0).reshape(size, 784)


def noise_order(order_key: jax.Array, epoch: int | jax.Array, n_full: int) -> jax.Array:
    """The order in which epoch ``epoch`` visits the full noise batches: ``[n_full]`` int32."""
    return jax.random.permutation(jax.random.fold_in(order_key, epoch), n_full)


def scan_epoch(step, carry, batches, tail_batch, batch_size: int, tail: int):
    """The skeleton of every epoch: ``step`` over the full batches, then once on the tail.

    ``step(carry, batch, size) -> (carry, out)`` with ``size`` static; ``batches`` has one
    full batch per leading index (``lax.scan`` over them), ``tail_batch`` is the last,
    smaller batch of ``tail`` examples (no step when ``tail`` is 0). Returns ``(carry, outs)``
    with the tail's ``out`` appended to the scanned ones along the first axis.
    """
    carry, outs = jax.lax.scan(lambda c, b: step(c, b, batch_size), carry, batches)
    if tail:
        carry, last = step(carry, tail_batch, tail)
        outs = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), outs, last)
    return carry, outs


def noise_epoch(step, carry, cfg: Config, keys: SeedKeys, epoch):
    """One distillation epoch over a seed's fixed input set: :func:`scan_epoch` with the batch
    indices of :func:`noise_order` (full batches in a fresh order), then the tail batch
    ``n_full``. ``step(carry, b, size)`` draws batch ``b`` itself."""
    n_full, tail = batch_sizes(cfg.n_noise, cfg.batch_size)
    return scan_epoch(step, carry, noise_order(keys.order, epoch, n_full), n_full, cfg.batch_size, tail)


def first_batch_index(cfg: Config, keys: SeedKeys) -> tuple[jax.Array | int, int]:
    """``(b, size)`` of the first batch the students see (epoch 0, first in order)."""
    n_full, tail = batch_sizes(cfg.n_noise, cfg.batch_size)
    if n_full == 0:
        return 0, tail
    return noise_order(keys.order, 0, n_full)[0], cfg.batch_size


def optimizer(cfg: Config) -> optax.GradientTransformation:
    """The teacher's Adam as in the official script (torch defaults: betas 0.9/0.999, eps 1e-8)."""
    return optax.adam(cfg.lr)


# ----------------------------------------------------------------------------- teacher


def teacher_loss(params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean cross-entropy on the 10 digit logits only: ``x [B, 784], y [B] -> scalar``."""
    logits = apply(params, x)[..., :DIGITS]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def teacher_epoch(cfg: Config, params, opt_state, shuffle_key, epoch, train_x, train_y):
    """One epoch of teacher training on a fresh permutation of the first ``n_train`` images.

    ``train_x`` uint8 ``[n_train, 784]`` and ``train_y`` ``[n_train]`` are shared by all seeds.
    Returns ``(params, opt_state, mean loss)``.
    """
    opt = optimizer(cfg)
    n_full, tail = batch_sizes(cfg.n_train, cfg.batch_size)
    perm = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), cfg.n_train)

    def step(carry, idx, size):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(teacher_loss)(params, normalize(train_x[idx]), train_y[idx])
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    full = perm[: n_full * cfg.batch_size].reshape(n_full, -1)
    carry, losses = scan_epoch(step, (params, opt_state), full, perm[n_full * cfg.batch_size:], cfg.batch_size, tail)
    return *carry, losses.mean()


# ---------------------------------------------------------------------------- metrics


def accuracy(params, test_x: jax.Array, test_y: jax.Array, eval_batch: int = 500) -> jax.Array:
    """Test accuracy from the 10 digit logits, for a stack of models ``[K, ...] -> [K]``.

    ``test_x`` uint8 ``[n, 784]`` (n divisible by ``eval_batch``) is shared by every model,
    so each chunk's first layer is one matmul for all K models.
    """
    n = test_x.shape[0]
    xs = test_x.reshape(n // eval_batch, eval_batch, 784)
    ys = test_y.reshape(n // eval_batch, eval_batch)

    def chunk(xy):
        x, y = xy
        logits = jax.vmap(apply, in_axes=(0, None))(params, normalize(x))[..., :DIGITS]
        return jnp.sum(jnp.argmax(logits, axis=-1) == y[None], axis=-1)

    return jax.lax.map(chunk, (xs, ys)).sum(axis=0) / n


def init_reference(cfg: Config, init_key: jax.Array):
    """The reference (shared) initialisation theta_0 of one seed."""
    return init_params(init_key, 784, cfg.hidden, cfg.n_out, depth=cfg.depth, init_scheme=cfg.init_scheme)


def references(cfg: Config, seeds: jax.Array):
    """``(keys, theta0)`` of every seed in ``seeds [S]``: its :class:`SeedKeys` and its
    reference init theta_0, vmapped over seeds."""
    keys = jax.vmap(partial(seed_keys, impl=cfg.prng_impl))(seeds)
    return keys, jax.vmap(partial(init_reference, cfg))(keys.init)


def setup(cfg: Config, seeds: jax.Array, partner_seeds: jax.Array | None = None):
    """Per-seed keys and the two initialisations, vmapped over ``seeds [S]``.

    Returns ``(keys, theta0, theta0_cross)``: each seed's :class:`SeedKeys`, its reference
    init theta_0 and the reference init of its cross-model partner ``partner_seeds[i]``
    (drawn from that seed's own init key, so it IS the partner's theta_0; None without partners).
    """
    keys, theta0 = references(cfg, seeds)
    return keys, theta0, None if partner_seeds is None else references(cfg, partner_seeds)[1]


def teacher_epochs(cfg: Config, params, opt_state, shuffle_keys, epoch, train_x, train_y):
    """:func:`teacher_epoch` vmapped over seeds (``params``, ``opt_state``, ``shuffle_keys``
    have a seed axis; the training set is shared)."""
    return jax.vmap(partial(teacher_epoch, cfg), in_axes=(0, 0, 0, None, None, None))(
        params, opt_state, shuffle_keys, epoch, train_x, train_y)


# ------------------------------------------------------------------------------- cost


def flops_per_seed(cfg: Config) -> dict:
    """Floating-point operations per seed, counting a multiply-add as 2.

    ``nominal``: forward 1x, backward 2x, the teacher's forward recomputed for each of the
    4 distillations (the official script's work). ``exact``: without the first layer's
    input gradient, which nothing needs. ``ours``: ``exact`` with the teacher's forward on
    each noise batch computed once for all 4 students (what this package runs).
    ``eval``: the 6 x 10,000 test-image forward passes, not included in the others.
    """
    d, h, o = 784, cfg.hidden, cfg.n_out
    fwd = 2 * (d * h + (cfg.depth - 1) * h * h + h * o)
    first_dx = 2 * d * h
    teacher_samples = cfg.teacher_epochs * cfg.n_train
    student_samples = 4 * cfg.distill_epochs * cfg.n_noise
    nominal = 3 * fwd * (teacher_samples + student_samples) + fwd * student_samples
    exact = nominal - first_dx * (teacher_samples + student_samples)
    ours = exact - fwd * student_samples * 3 // 4
    return {"nominal": nominal, "exact": exact, "ours": ours, "eval": 6 * 10_000 * fwd}
