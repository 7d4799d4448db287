"""LM training loops: next-token (hard-label) and soft-label distillation, vmapped over models.

Shared by the tiny-LM experiment (:mod:`llm_bridge.tiny`) and the checkpoint experiment
(:mod:`llm_bridge.hf_experiment`). A model family is seen as a pure
``f(params, tokens) -> logits`` (:class:`Family`); several models of one family are trained at
once by stacking their parameters on a leading axis (:func:`stack`) and vmapping one scan.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import theory


def next_token_loss(logits: jax.Array, tokens: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean cross-entropy of predicting ``tokens[:, t + 1]`` from ``logits[:, t]``.

    ``logits [B, T, V]``, ``tokens [B, T]`` int; ``mask [B, T]`` (optional) weighs each
    *target* token (e.g. 1 on completion tokens, 0 on prompt and padding). Without a mask
    this is ``transformers``' ``model(tokens, labels=tokens).loss``.
    """
    dtype = jnp.float64 if logits.dtype == jnp.float64 else jnp.float32
    nll = optax.losses.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(dtype), tokens[:, 1:])
    w = jnp.ones_like(nll) if mask is None else mask[:, 1:].astype(dtype)
    return jnp.sum(nll * w) / jnp.sum(w)


_APPLY: dict = {}  # graphdef -> f(params, tokens): one function object per model structure


def _apply(graphdef, params, tokens):
    return nnx.merge(graphdef, params)(tokens)


def _apply_with_rest(graphdef, rest, params, tokens):
    return nnx.merge(graphdef, params, rest)(tokens)


class Family:
    """One model structure: ``f(params, tokens) -> logits`` plus ``model(params)`` to rebuild an NNX module."""

    def __init__(self, model: nnx.Module):
        self.graphdef, params, self.rest = nnx.split(model, nnx.Param, ...)
        self.template = params

    @property
    def f(self):
        """``f(params, tokens) -> logits``. For a module without non-parameter state the same function
        object is returned for every family of equal structure, so jitted loops that take ``f`` as a
        static argument compile once per structure, not once per :class:`Family`."""
        if jax.tree.leaves(self.rest):
            return partial(_apply_with_rest, self.graphdef, self.rest)
        return _APPLY.setdefault(self.graphdef, partial(_apply, self.graphdef))

    def model(self, params) -> nnx.Module:
        return nnx.merge(self.graphdef, params, self.rest)


def stack(trees):
    """Stack pytrees of equal structure on a new leading axis: ``[M, ...]``."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def index(tree, i):
    """Model ``i`` of a stacked pytree."""
    return jax.tree.map(lambda x: x[i], tree)


@partial(jax.jit, static_argnames=("f", "lr"))
def train(f, params, tokens, mask, *, lr):
    """Adam on the next-token loss, vmapped over a leading model axis.

    ``params`` stacked ``[M, ...]``; ``tokens, mask [M, steps, batch, T]`` (mask marks the
    *target* tokens that count). Returns ``(params, losses [M, steps])``.
    """
    opt = optax.adam(lr)

    def one(p, toks, msk):
        def step(carry, batch):
            p, s = carry
            loss, g = jax.value_and_grad(lambda q: next_token_loss(f(q, batch[0]), batch[0], batch[1]))(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss

        (p, _), losses = jax.lax.scan(step, (p, opt.init(p)), (toks, msk))
        return p, losses

    return jax.vmap(one)(params, tokens, mask)


def soft_label_loss(f, params, teacher, tokens, mask, loss: theory.losses.ImitationLoss) -> jax.Array:
    """Mean soft-label loss ``loss.value(f(params, x)[t], f(teacher, x)[t])`` over the target positions.

    ``tokens, mask [B, T]``; position t counts where ``mask[:, t + 1]`` does (the position that
    predicts a target token, as in :func:`llm_bridge.functional.next_token_loss`). With
    ``theory.softmax_kl(vocab.number_ids)`` it is the distillation loss of eq. (S) on the
    number logits: ``KL(softmax(z_numbers) || softmax(y_numbers))``, both renormalised over
    the number tokens. The teacher's logits are constants.
    """
    z = jax.lax.stop_gradient(f(teacher, tokens))[:, :-1].astype(jnp.float32)
    y = f(params, tokens)[:, :-1].astype(jnp.float32)
    w = mask[:, 1:].astype(jnp.float32)
    return jnp.sum(loss.value(y, z) * w) / jnp.sum(w)


@partial(jax.jit, static_argnames=("f", "lr", "loss"))
def train_soft(f, params, teachers, tokens, mask, *, lr, loss: theory.losses.ImitationLoss):
    """Adam on :func:`soft_label_loss` (soft-label distillation), vmapped over a leading model axis.

    The soft-label twin of :func:`train` (same optimizer, same batches): student ``params``
    and ``teachers`` stacked ``[M, ...]``; ``tokens, mask [M, steps, batch, T]``; the teacher
    labels every counted position of the rows (its logits on the same rows, one forward per
    step). Returns ``(params, losses [M, steps])``, each loss before its step.
    """
    opt = optax.adam(lr)

    def one(p, teacher, toks, msk):
        def step(carry, batch):
            p, s = carry
            value, g = jax.value_and_grad(soft_label_loss, argnums=1)(f, p, teacher, batch[0], batch[1], loss)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), value

        (p, _), losses = jax.lax.scan(step, (p, opt.init(p)), (toks, msk))
        return p, losses

    return jax.vmap(one)(params, teachers, tokens, mask)


@partial(jax.jit, static_argnames=("f", "loss"))
def soft_fit(f, params, teachers, tokens, mask, *, loss: theory.losses.ImitationLoss) -> jax.Array:
    """``[M]``: :func:`soft_label_loss` of each stacked student ``[M, ...]`` against its teacher on
    its own rows ``tokens, mask [M, n, T]`` (how well each student imitates its teacher)."""
    return jax.vmap(lambda p, t, x, m: soft_label_loss(f, p, t, x, m, loss))(params, teachers, tokens, mask)
