"""GPT-2 (Radford et al. 2019) in Flax NNX, parameter-compatible with ``GPT2LMHeadModel``.

Pre-LayerNorm blocks, learned absolute positions, gelu_new MLP, and (by default) an LM
head tied to the token embedding: logits are ``wte.attend(h) = h @ wte^T``, so the one
embedding parameter receives the gradient of both uses. Module names follow the Hugging
Face keys (``h.{i}.attn.c_attn`` ...) so that the table in :mod:`llm_bridge.checkpoint`
reads as an identity map; dropout is not implemented (every forward is deterministic).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from llm_bridge import layers


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """The config.json fields GPT-2 uses. ``extra`` keeps every other field for saving."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = True
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    model_type = "gpt2"
    architecture = "GPT2LMHeadModel"

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not a multiple of n_head={self.n_head}")
        layers.check_activation(self.activation_function)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> GPT2Config:
        """Read a GPT-2 config.json dict; refuse settings whose computation is not implemented."""
        cfg = dict(cfg)
        if cfg.pop("model_type", "gpt2") != "gpt2":
            raise ValueError("not a GPT-2 config")
        if cfg.pop("add_cross_attention", False):
            raise ValueError("add_cross_attention=True (encoder-decoder GPT-2) is not supported")
        fields = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: cfg.pop(k) for k in list(cfg) if k in fields}
        cfg.pop("architectures", None)
        return cls(**kwargs, extra=cfg)

    def to_hf(self) -> dict[str, Any]:
        """A config.json dict that ``transformers.GPT2LMHeadModel.from_pretrained`` reads back."""
        out = dict(self.extra)
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        out.update(model_type=self.model_type, architectures=[self.architecture])
        return out


class Attention(nnx.Module):
    """Causal multi-head self-attention with GPT-2's fused ``c_attn`` ([q | k | v] columns)."""

    def __init__(self, cfg: GPT2Config, layer_idx: int, *, dtype, rngs: nnx.Rngs):
        self.c_attn = nnx.Linear(cfg.n_embd, 3 * cfg.n_embd, param_dtype=dtype, rngs=rngs)
        self.c_proj = nnx.Linear(cfg.n_embd, cfg.n_embd, param_dtype=dtype, rngs=rngs)
        self.n_head = cfg.n_head
        scale = cfg.head_dim ** -0.5 if cfg.scale_attn_weights else 1.0
        self.scale = scale / (layer_idx + 1) if cfg.scale_attn_by_inverse_layer_idx else scale

    def __call__(self, x: jax.Array, ctx: layers.Context, cached=None):
        """``x [B, T, E] -> ([B, T, E], (k, v))``; ``cached`` is this layer's KV cache or None."""
        b, t, e = x.shape
        qkv = self.c_attn(x).reshape(b, t, 3, self.n_head, e // self.n_head)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        k, v = layers.write_kv(cached, k, v, ctx.index)
        return self.c_proj(layers.attend(q, k, v, ctx.allowed, self.scale)), (k, v)


class MLP(nnx.Module):
    """``c_proj(act(c_fc(x)))``."""

    def __init__(self, cfg: GPT2Config, *, dtype, rngs: nnx.Rngs):
        self.c_fc = nnx.Linear(cfg.n_embd, cfg.inner, param_dtype=dtype, rngs=rngs)
        self.c_proj = nnx.Linear(cfg.inner, cfg.n_embd, param_dtype=dtype, rngs=rngs)
        self.activation = cfg.activation_function

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.c_proj(layers.ACTIVATIONS[self.activation](self.c_fc(x)))


class Block(nnx.Module):
    """``x + attn(ln_1(x))``, then ``+ mlp(ln_2(.))``."""

    def __init__(self, cfg: GPT2Config, layer_idx: int, *, dtype, rngs: nnx.Rngs):
        self.ln_1 = layers.LayerNorm(cfg.n_embd, cfg.layer_norm_epsilon, dtype=dtype)
        self.attn = Attention(cfg, layer_idx, dtype=dtype, rngs=rngs)
        self.ln_2 = layers.LayerNorm(cfg.n_embd, cfg.layer_norm_epsilon, dtype=dtype)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x, ctx, cached=None):
        a, kv = self.attn(self.ln_1(x), ctx, cached)
        x = x + a
        return x + self.mlp(self.ln_2(x)), kv


class GPT2(nnx.Module):
    """GPT-2 language model: ``tokens [B, T] int -> logits [B, T, vocab_size]``."""

    def __init__(self, cfg: GPT2Config, *, dtype=jnp.float32, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        self.config = cfg
        self.wte = nnx.Embed(cfg.vocab_size, cfg.n_embd, param_dtype=dtype, embedding_init=init, rngs=rngs)
        self.wpe = nnx.Embed(cfg.n_positions, cfg.n_embd, param_dtype=dtype, embedding_init=init, rngs=rngs)
        self.h = nnx.List([Block(cfg, i, dtype=dtype, rngs=rngs) for i in range(cfg.n_layer)])
        self.ln_f = layers.LayerNorm(cfg.n_embd, cfg.layer_norm_epsilon, dtype=dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = nnx.Linear(cfg.n_embd, cfg.vocab_size, use_bias=False, param_dtype=dtype, rngs=rngs)

    def __call__(self, tokens: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Logits ``[B, T, V]`` of every position; ``mask [B, T]`` marks real tokens (default all)."""
        return self.forward(tokens, mask)[0]

    def forward(self, tokens, mask=None, cache: layers.KVCache | None = None):
        """``(logits [B, T, V], cache)``: extends ``cache`` by the ``T`` tokens when one is given."""
        mask = jnp.ones(tokens.shape, bool) if mask is None else mask
        ctx = layers.context(mask, cache)
        x = self.wte(tokens) + self.wpe(ctx.positions)
        ks, vs = [], []
        for i, block in enumerate(self.h):
            x, (k, v) = block(x, ctx, None if cache is None else (cache.k[i], cache.v[i]))
            ks.append(k)
            vs.append(v)
        x = self.ln_f(x)
        logits = self.wte.attend(x) if self.config.tie_word_embeddings else self.lm_head(x)
        return logits, (None if cache is None else layers.advance(cache, mask, ks, vs))

    def init_cache(self, batch: int, slots: int) -> layers.KVCache:
        """An empty KV cache for ``batch`` rows of up to ``slots`` tokens (prompt + generated)."""
        if slots > self.config.n_positions:
            raise ValueError(f"{slots} tokens exceed GPT-2's n_positions={self.config.n_positions}")
        return layers.KVCache.empty(self.config.n_layer, batch, slots, self.config.n_head,
                                    self.config.head_dim, self.wte.embedding.dtype)
