"""The LM training loss (the pure-function view of a model is ``theory.pure``, re-exported here)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


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
