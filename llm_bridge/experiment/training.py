"""The one masked next-token loss and the one training loop of the LM experiments.

:func:`token_nll` is the loss everything reduces: each target token's negative log-likelihood
and its weight. :func:`mean_loss` (a batch's mean over its target tokens: the students',
teachers' and bases' objective), :func:`per_sequence_loss` (the projection's per-row losses)
and the chat rows' loss are its reductions. :func:`fit` is the one optimisation loop: a
``lax.scan`` of one optimizer over batches; :func:`train` and :func:`train_soft` run it vmapped
over a stack of models (hard and soft labels), :func:`fit_frozen` on the trainable part of one
NNX module with the rest frozen (LoRA adapters, or every parameter of a chat model).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import theory

OPTIMIZERS = {"adam": optax.adam, "sgd": optax.sgd}


def optimizer(name: str, lr: float) -> optax.GradientTransformation:
    """Adam (optax defaults: betas 0.9 / 0.999, eps 1e-8) or plain SGD at rate ``lr``."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[name](lr)


def token_nll(logits: jax.Array, tokens: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """``(nll, w) [B, T - 1]``: the negative log-likelihood of each target ``tokens[:, t + 1]`` given
    ``logits[:, t]`` (float32, or float64 for a float64 model) and its weight ``mask[:, t + 1]``
    (every target counts without a mask)."""
    dtype = jnp.float64 if logits.dtype == jnp.float64 else jnp.float32
    nll = optax.losses.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(dtype), tokens[:, 1:])
    w = jnp.ones_like(nll) if mask is None else mask[:, 1:].astype(dtype)
    return nll, w


def mean_loss(logits: jax.Array, tokens: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """The mean of :func:`token_nll` over the batch's target tokens (0 for a batch without targets).

    ``logits [B, T, V]``, ``tokens [B, T]`` int, ``mask [B, T]`` on the *target* tokens. Without a
    mask this is ``transformers``' ``model(tokens, labels=tokens).loss``.
    """
    nll, w = token_nll(logits, tokens, mask)
    return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0)


next_token_loss = mean_loss  # the public name (llm_bridge.next_token_loss)


def per_sequence_loss(f, params, tokens, mask, total: bool = False):
    """``[B]``: each row's mean :func:`token_nll` over its target tokens (0 for a row without targets);
    with ``total``, the sum (the sequence's negative log-likelihood)."""
    nll, w = token_nll(f(params, tokens), tokens, mask)
    if total:
        return jnp.sum(nll * w, axis=1)
    return jnp.sum(nll * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)


class PureModel:
    """One model structure seen as ``f(params, tokens) -> logits``, and ``model(params)`` to rebuild the module."""

    _APPLY: dict = {}  # graphdef -> f: one function object per structure, so jitted loops compile once

    def __init__(self, model: nnx.Module):
        self.graphdef, params, self.rest = nnx.split(model, nnx.Param, ...)
        self.template = params

    @property
    def f(self):
        if jax.tree.leaves(self.rest):
            return partial(_apply_with_rest, self.graphdef, self.rest)
        return PureModel._APPLY.setdefault(self.graphdef, partial(_apply, self.graphdef))

    def model(self, params) -> nnx.Module:
        return nnx.merge(self.graphdef, params, self.rest)


def _apply(graphdef, params, tokens):
    return nnx.merge(graphdef, params)(tokens)


def _apply_with_rest(graphdef, rest, params, tokens):
    return nnx.merge(graphdef, params, rest)(tokens)


def stack(trees):
    """Stack pytrees of equal structure on a new leading axis: ``[M, ...]``."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def index(tree, i):
    """Model ``i`` of a stacked pytree."""
    return jax.tree.map(lambda x: x[i], tree)


def fit(loss, params, batches, opt: optax.GradientTransformation):
    """The one loop: ``opt`` on ``loss(params, batch)`` for each batch of ``batches`` (a pytree with a
    leading steps axis), in a ``lax.scan``. Returns ``(params, losses [steps])``, each loss before
    its step."""
    def step(carry, batch):
        p, s = carry
        value, g = jax.value_and_grad(lambda q: loss(q, batch))(p)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), value

    (p, _), losses = jax.lax.scan(step, (params, opt.init(params)), batches)
    return p, losses


@partial(jax.jit, static_argnames=("f", "lr", "opt"))
def train(f, params, tokens, mask, *, lr, opt: str = "adam"):
    """:func:`fit` on the next-token loss, vmapped over a leading model axis: ``params`` stacked
    ``[M, ...]``, ``tokens, mask [M, steps, batch, T]``. Returns ``(params, losses [M, steps])``."""
    hard = lambda p, batch: mean_loss(f(p, batch[0]), batch[0], batch[1])
    return jax.vmap(lambda p, t, m: fit(hard, p, (t, m), optimizer(opt, lr)))(params, tokens, mask)


def soft_label_loss(f, params, teacher, tokens, mask, loss: theory.losses.ImitationLoss) -> jax.Array:
    """Mean soft-label loss ``loss.value(f(params, x)[t], f(teacher, x)[t])`` over the target positions.

    ``tokens, mask [B, T]``; position t counts where ``mask[:, t + 1]`` does. With
    ``theory.softmax_kl(number ids)`` it is the distillation loss of eq. (S) on the number logits:
    ``KL(softmax(z_numbers) || softmax(y_numbers))``, both renormalised over the number tokens. The
    teacher's logits are constants.
    """
    z = jax.lax.stop_gradient(f(teacher, tokens))[:, :-1].astype(jnp.float32)
    y = f(params, tokens)[:, :-1].astype(jnp.float32)
    w = mask[:, 1:].astype(jnp.float32)
    return jnp.sum(loss.value(y, z) * w) / jnp.sum(w)


@partial(jax.jit, static_argnames=("f", "lr", "loss", "opt"))
def train_soft(f, params, teachers, tokens, mask, *, lr, loss: theory.losses.ImitationLoss, opt: str = "adam"):
    """The soft-label twin of :func:`train` (same loop, same batches): each student of ``params``
    ``[M, ...]`` imitates its teacher of ``teachers`` ``[M, ...]`` (:func:`soft_label_loss`)."""
    def one(p, teacher, t, m):
        soft = lambda q, batch: soft_label_loss(f, q, teacher, batch[0], batch[1], loss)
        return fit(soft, p, (t, m), optimizer(opt, lr))

    return jax.vmap(one)(params, teachers, tokens, mask)


@partial(jax.jit, static_argnames=("f", "loss"))
def soft_fit(f, params, teachers, tokens, mask, *, loss: theory.losses.ImitationLoss) -> jax.Array:
    """``[M]``: :func:`soft_label_loss` of each stacked student against its teacher on its own rows
    ``tokens, mask [M, n, T]`` (how well each student imitates its teacher)."""
    return jax.vmap(lambda p, t, x, m: soft_label_loss(f, p, t, x, m, loss))(params, teachers, tokens, mask)


@partial(jax.jit, static_argnames=("graphdef", "loss_fn", "opt"))
def fit_frozen(graphdef, trainable, frozen, batches, lr, *, loss_fn, opt: str = "adam"):
    """:func:`fit` on ``trainable`` with ``frozen`` fixed: ``loss_fn(module, batch)`` sees the merged
    module. ``frozen`` is an argument, never closed over (a closed-over 135M-parameter model would be
    baked into the compiled program as constants); so is the rate ``lr`` (a traced scalar: students at
    other rates, e.g. the SGD calibration's grid, reuse one compiled program). Returns
    ``(trainable, losses [steps])``."""
    return fit(lambda q, batch: loss_fn(nnx.merge(graphdef, q, frozen), batch), trainable, batches,
               optimizer(opt, lr))
