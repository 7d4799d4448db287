"""The pure-function view of a model that the theory core needs, and the LM training loss."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def pure(model: nnx.Module) -> tuple[Callable[[nnx.State, jax.Array], jax.Array], nnx.State]:
    """``(f, params)`` with ``f(params, tokens [B, T]) -> logits [B, T, V]`` pure.

    ``params`` is the model's ``nnx.Param`` state (a pytree; ``optax.tree`` and ``jax.jvp``
    work on it directly). Same contract as ``theory.pure``: every ``[b, t]`` position is one
    example of ``f``'s output. Call once and reuse ``f``: it is a static ``jax.jit`` argument.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def f(p, tokens):
        return nnx.merge(graphdef, p, rest)(tokens)

    return f, params


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
