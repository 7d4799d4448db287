"""Building blocks shared by the three decoder families: norms, RoPE, attention, KV cache.

Norms, RoPE tables and the attention softmax run in float32 for float32 / bf16 models
(as transformers does) and in float64 for float64 models (for tight theory tests).

Shapes: ``B`` batch, ``T`` new tokens this call, ``S`` key slots (``T`` without a cache,
the cache size with one), ``H`` query heads, ``K`` key/value heads (``H = K * G``), ``D``
head dim. Every formula matches the Hugging Face PyTorch implementation it replaces, so
that float32 logits agree to ~1e-6 (tests/test_llm_parity.py).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

# Hugging Face activation names -> functions. "gelu" is the exact erf form (Pythia);
# "gelu_new" / "gelu_pytorch_tanh" are the tanh approximation (GPT-2).
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}

# Masked attention scores. Finite (not -inf) so that a query with no visible key (a
# left-padding position) gets a uniform softmax instead of NaN; its output is never used.
_MASKED = -1e30


def upcast(dtype) -> jnp.dtype:
    """The dtype norms, RoPE and softmax run in: float32, or ``dtype`` itself if wider."""
    return jnp.dtype(dtype) if jnp.finfo(dtype).bits >= 32 else jnp.dtype(jnp.float32)


def check_activation(name: str) -> str:
    """``name`` if it is a supported Hugging Face activation, else ValueError."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return name


class LayerNorm(nnx.Module):
    """``torch.nn.LayerNorm``: ``w * (x - mean) / sqrt(var + eps) + b``, biased variance
    ``mean((x - mean)^2)``, computed in at least float32. ``x [..., features] -> [..., features]``.
    """

    def __init__(self, features: int, eps: float, *, dtype=jnp.float32):
        self.weight = nnx.Param(jnp.ones((features,), dtype))
        self.bias = nnx.Param(jnp.zeros((features,), dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(upcast(x.dtype))
        centred = xf - jnp.mean(xf, axis=-1, keepdims=True)
        normed = centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + self.eps)
        return (normed * self.weight[...] + self.bias[...]).astype(x.dtype)


class RMSNorm(nnx.Module):
    """Llama RMSNorm: ``w * (x * rsqrt(mean(x^2) + eps))``, the normalisation in float32.

    ``x [..., features] -> [..., features]``; the normalised value is cast back to the input
    dtype before the weight multiplies it, as in ``LlamaRMSNorm``.
    """

    def __init__(self, features: int, eps: float, *, dtype=jnp.float32):
        self.weight = nnx.Param(jnp.ones((features,), dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(upcast(x.dtype))
        normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * normed.astype(x.dtype)


def rope_tables(positions: jax.Array, rotary_dim: int, theta: float,
                dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """cos, sin ``[B, T, rotary_dim]`` of rotary embedding (Su et al. 2021) at integer positions.

    Frequencies ``theta^(-2i / rotary_dim)`` for ``i < rotary_dim / 2``, each repeated in both
    halves (the "split-half" layout of Llama and GPT-NeoX, not the interleaved one).
    Computed in ``dtype``: float32 for float32 / bf16 models, as transformers does.
    """
    inv_freq = 1.0 / (theta ** (jnp.arange(0, rotary_dim, 2, dtype=dtype) / rotary_dim))
    freqs = positions.astype(dtype)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate the first ``cos.shape[-1]`` dims of each head: ``x [B, T, H, D] -> [B, T, H, D]``.

    Dims past the rotary ones pass through (GPT-NeoX "partial rotary", rotary_pct < 1).
    """
    r = cos.shape[-1]
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    x_rot, x_pass = x[..., :r], x[..., r:]
    x1, x2 = x_rot[..., : r // 2], x_rot[..., r // 2:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return jnp.concatenate([x_rot * cos + rotated * sin, x_pass], axis=-1)


def rope_from_hf(cfg: dict, *, theta_keys: tuple[str, ...], default_theta: float,
                 fraction_keys: tuple[str, ...] = (), default_fraction: float = 1.0) -> tuple[float, float]:
    """``(rope_theta, rotary fraction)`` read (and removed) from a config.json dict.

    Understands both spellings: transformers < 5 (``rope_theta`` / ``rotary_emb_base``,
    ``rotary_pct``, ``rope_scaling``) and transformers >= 5 (``rope_parameters``). Only plain
    RoPE is implemented: any ``rope_scaling`` / ``rope_type`` other than "default" (linear,
    dynamic, yarn, llama3, longrope, ...) is refused with ValueError, never ignored.
    """
    theta, fraction = default_theta, default_fraction
    for key in theta_keys:
        if cfg.get(key) is not None:
            theta = float(cfg.pop(key))
        cfg.pop(key, None)
    for key in fraction_keys:
        if cfg.get(key) is not None:
            fraction = float(cfg.pop(key))
        cfg.pop(key, None)
    for key in ("rope_scaling", "rope_parameters"):
        params = cfg.pop(key, None)
        if params is None:
            continue
        params = dict(params)
        kind = params.pop("rope_type", params.pop("type", "default"))
        if kind != "default":
            raise ValueError(f"{key} of type {kind!r} is not implemented (only plain RoPE, "
                             f"rope_type 'default'); refusing to load a model that would compute "
                             f"different positions")
        if params.get("rope_theta") is not None:
            theta = float(params.pop("rope_theta"))
        if params.get("partial_rotary_factor") is not None:
            fraction = float(params.pop("partial_rotary_factor"))
        params = {k: v for k, v in params.items() if v is not None}
        if params:
            raise ValueError(f"{key} has settings this bridge does not implement: {sorted(params)}")
    return theta, fraction


class KVCache(NamedTuple):
    """Keys and values of every layer in ``S`` fixed slots, for sampling one token at a time.

    k, v      tuple over layers of ``[B, S, K, D]``
    valid     ``[B, S]`` bool: the slot holds a real token (not padding, not yet written)
    next_pos  ``[B]`` int32: position id the next real token of each row receives
    index     ``[]`` int32: first unwritten slot (rows share it; padding keeps them aligned)
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    valid: jax.Array
    next_pos: jax.Array
    index: jax.Array

    @classmethod
    def empty(cls, layers: int, batch: int, slots: int, kv_heads: int, head_dim: int, dtype) -> KVCache:
        """An all-empty cache of ``slots`` slots."""
        zeros = tuple(jnp.zeros((batch, slots, kv_heads, head_dim), dtype) for _ in range(layers))
        return cls(k=zeros, v=zeros, valid=jnp.zeros((batch, slots), bool),
                   next_pos=jnp.zeros((batch,), jnp.int32), index=jnp.zeros((), jnp.int32))


class Context(NamedTuple):
    """What every layer needs to know about one call, computed once per forward.

    positions  ``[B, T]`` int32 position ids of the new tokens
    allowed    ``[B, T, S]`` bool: query t may attend to key slot s (causal and not padding)
    index      ``[]`` int32 slot of the first new token (0 without a cache)
    """

    positions: jax.Array
    allowed: jax.Array
    index: jax.Array


def context(mask: jax.Array, cache: KVCache | None) -> Context:
    """Positions and the attention pattern of ``T`` new tokens with ``mask [B, T]`` (True = real).

    Position ids count real tokens only (``cumsum(mask) - 1``, what transformers computes
    from an attention mask), so a left-padded prompt gets the same ids as an unpadded one.
    Without a cache the keys are the new tokens; with one, the cache's slots.
    """
    mask = mask.astype(bool)
    counts = jnp.cumsum(mask, axis=1, dtype=jnp.int32)
    t = mask.shape[1]
    if cache is None:
        positions = jnp.maximum(counts - 1, 0)
        query_slot, key_valid, index = jnp.arange(t, dtype=jnp.int32), mask, jnp.zeros((), jnp.int32)
    else:
        positions = jnp.maximum(cache.next_pos[:, None] + counts - 1, 0)
        index = cache.index
        key_valid = jax.lax.dynamic_update_slice(cache.valid, mask, (jnp.zeros_like(index), index))
        query_slot = index + jnp.arange(t, dtype=jnp.int32)
    key_slot = jnp.arange(key_valid.shape[1], dtype=jnp.int32)
    causal = key_slot[None, :] <= query_slot[:, None]
    return Context(positions=positions, allowed=causal[None] & key_valid[:, None, :], index=index)


def tokenwise(f, x: jax.Array) -> jax.Array:
    """``f`` (a map of each token's vector, such as a projection or an MLP) on ``x [..., D]`` seen as one
    ``[N, D]`` matrix, the leading axes restored: the same function (float rounding may differ). On XLA's
    CPU backend the backward pass of a projection of 3-D activations transposes them through slow copies
    (a SmolLM2 MLP's gradient at [8, 192] tokens took 1.7x as long as on the same tokens flattened)."""
    y = f(x.reshape(math.prod(x.shape[:-1]), x.shape[-1]))
    return y.reshape(x.shape[:-1] + y.shape[-1:])


def at_positions(x: jax.Array, at: jax.Array | None) -> jax.Array:
    """``x [B, T, D]`` at the positions ``at [B, K]`` (``[B, K, D]``), or all of ``x`` when ``at`` is None:
    a model computes its final norm and LM head only where logits are read (a student's loss reads its
    few reply tokens of each row, a sampler's prefill the last position, a cached prefix none)."""
    return x if at is None else jnp.take_along_axis(x, at[..., None], axis=1)


def advance(cache: KVCache, mask: jax.Array, k: list[jax.Array], v: list[jax.Array]) -> KVCache:
    """The cache after writing ``T`` new tokens (``mask [B, T]``) whose per-layer K/V are ``k, v``."""
    mask = mask.astype(bool)
    valid = jax.lax.dynamic_update_slice(cache.valid, mask, (jnp.zeros_like(cache.index), cache.index))
    return KVCache(k=tuple(k), v=tuple(v), valid=valid,
                   next_pos=cache.next_pos + jnp.sum(mask, axis=1, dtype=jnp.int32),
                   index=cache.index + mask.shape[1])


def write_kv(cached: tuple[jax.Array, jax.Array] | None, k: jax.Array, v: jax.Array,
             index: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys and values to attend over: the new ``k, v [B, T, K, D]`` alone, or written into the
    cache's ``[B, S, K, D]`` arrays at slot ``index`` (the result is also the updated cache)."""
    if cached is None:
        return k, v
    ck, cv = cached
    zero = jnp.zeros_like(index)  # all start indices must share one integer dtype
    return (jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (zero, index, zero, zero)),
            jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (zero, index, zero, zero)))


def attend(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array, scale: float) -> jax.Array:
    """Grouped-query softmax attention: ``q [B, T, H, D], k, v [B, S, K, D] -> [B, T, H * D]``.

    Query head ``h`` reads key/value head ``h // G`` (``G = H / K``); the grouping is a
    reshape of the queries, so K/V are never repeated in memory. Scores are
    ``scale * q . k`` and the softmax runs in at least float32.
    """
    b, t, h, d = q.shape
    kv_heads = k.shape[2]
    qg = q.reshape(b, t, kv_heads, h // kv_heads, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k)
    scores = scores.astype(upcast(scores.dtype)) * scale
    scores = jnp.where(allowed[:, None, None, :, :], scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h * v.shape[-1])
