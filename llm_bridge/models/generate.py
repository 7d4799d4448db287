"""Autoregressive sampling with a KV cache: one prefill, then one cached token per step.

The whole loop is one ``jax.jit`` (a ``lax.scan`` over steps), compiled once per model
structure, ``(batch, prompt length)``, ``max_new_tokens``, greedy-or-not and the set of end
tokens (the temperature and the prompts themselves are traced, so changing them does not
recompile).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def generate(model: nnx.Module, prompts: jax.Array, max_new_tokens: int, *, mask: jax.Array | None = None,
             temperature: float = 0.0, key: jax.Array | None = None,
             eos_id: int | Iterable[int] | None = None) -> jax.Array:
    """``max_new_tokens`` tokens continuing each prompt: ``prompts [B, T] -> [B, max_new_tokens]``.

    temperature  0 picks the argmax (greedy, what ``transformers``' ``generate(do_sample=False)``
                 does); > 0 samples from ``softmax(logits / temperature)`` and needs ``key``
    mask         ``[B, T]`` True on real prompt tokens; prompts of different lengths must be
                 *left*-padded (positions count real tokens only, as in transformers)
    eos_id       one end token or several (a chat checkpoint's ``eos_token_id`` list, e.g. Llama 3's
                 ``<|end_of_text|>``, ``<|eom_id|>``, ``<|eot_id|>``): once a row emits any of them it
                 is finished and repeats that token to the end
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
    ids = () if eos_id is None else (eos_id,) if isinstance(eos_id, (int, np.integer)) else eos_id
    stop = tuple(sorted({int(i) for i in ids}))  # static: hashable, and one compilation for any order
    key = jax.random.key(0) if key is None else key
    graphdef, state = nnx.split(model)
    return _generate(graphdef, state, prompts, mask, key, jnp.float32(temperature),
                     max_new_tokens=max_new_tokens, greedy=temperature == 0, stop=stop)


@partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "greedy", "stop"))
def _generate(graphdef, state, prompts, mask, key, temperature, *, max_new_tokens, greedy, stop):
    model = nnx.merge(graphdef, state)
    b, t = prompts.shape
    keys = jax.random.split(key, max_new_tokens)

    def pick(logits, k):
        if greedy:
            return jnp.argmax(logits, axis=-1).astype(prompts.dtype)
        return jax.random.categorical(k, logits.astype(jnp.float32) / temperature, axis=-1).astype(prompts.dtype)

    logits, cache = model.forward(prompts, mask, model.init_cache(b, t + max_new_tokens))
    first = pick(logits[:, -1], keys[0])
    stop_ids = jnp.asarray(stop, prompts.dtype)

    def step(carry, k):
        tok, cache = carry
        logits, cache = model.forward(tok[:, None], None, cache)
        nxt = pick(logits[:, 0], k)
        if stop:  # a finished row repeats its end token, so its last token alone says it is finished
            nxt = jnp.where(jnp.isin(tok, stop_ids), tok, nxt)
        return (nxt, cache), tok

    (last, _), toks = jax.lax.scan(step, (first, cache), keys[1:])
    return jnp.concatenate([toks.T, last[:, None]], axis=1)
