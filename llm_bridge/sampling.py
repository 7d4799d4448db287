"""Autoregressive sampling with a KV cache: one prefill, then one cached token per step.

The whole loop is one ``jax.jit`` (a ``lax.scan`` over steps), compiled once per model
structure, ``(batch, prompt length)``, ``max_new_tokens``, greedy-or-not and ``eos_id``
(the temperature and the prompts themselves are traced, so changing them does not recompile).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def generate(model: nnx.Module, prompts: jax.Array, max_new_tokens: int, *, mask: jax.Array | None = None,
             temperature: float = 0.0, key: jax.Array | None = None, eos_id: int | None = None) -> jax.Array:
    """``max_new_tokens`` tokens continuing each prompt: ``prompts [B, T] -> [B, max_new_tokens]``.

    temperature  0 picks the argmax (greedy, what ``transformers``' ``generate(do_sample=False)``
                 does); > 0 samples from ``softmax(logits / temperature)`` and needs ``key``
    mask         ``[B, T]`` True on real prompt tokens; prompts of different lengths must be
                 *left*-padded (positions count real tokens only, as in transformers)
    eos_id       once a row emits it, the row continues with ``eos_id`` only
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature > 0 and key is None:
        raise ValueError("sampling with temperature > 0 needs a PRNG key")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    prompts = jnp.asarray(prompts)
    mask = jnp.ones(prompts.shape, bool) if mask is None else jnp.asarray(mask, bool)
    if not isinstance(mask, jax.core.Tracer) and not np.all(np.asarray(mask)[:, -1]):
        raise ValueError("every prompt must end with a real token: pad on the left")
    key = jax.random.key(0) if key is None else key
    graphdef, state = nnx.split(model)
    return _generate(graphdef, state, prompts, mask, key, jnp.float32(temperature),
                     max_new_tokens=max_new_tokens, greedy=temperature == 0, eos_id=eos_id)


@partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "greedy", "eos_id"))
def _generate(graphdef, state, prompts, mask, key, temperature, *, max_new_tokens, greedy, eos_id):
    model = nnx.merge(graphdef, state)
    b, t = prompts.shape
    keys = jax.random.split(key, max_new_tokens)

    def pick(logits, k):
        if greedy:
            return jnp.argmax(logits, axis=-1).astype(prompts.dtype)
        return jax.random.categorical(k, logits.astype(jnp.float32) / temperature, axis=-1).astype(prompts.dtype)

    logits, cache = model.forward(prompts, mask, model.init_cache(b, t + max_new_tokens))
    first = pick(logits[:, -1], keys[0])

    def step(carry, k):
        tok, cache, done = carry
        if eos_id is not None:
            done = done | (tok == eos_id)
        logits, cache = model.forward(tok[:, None], None, cache)
        nxt = pick(logits[:, 0], k)
        if eos_id is not None:
            nxt = jnp.where(done, eos_id, nxt)
        return (nxt, cache, done), tok

    (last, _, _), toks = jax.lax.scan(step, (first, cache, jnp.zeros((b,), bool)), keys[1:])
    return jnp.concatenate([toks.T, last[:, None]], axis=1)
