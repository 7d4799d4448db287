"""The Llama family (Llama, TinyLlama, SmolLM2, Qwen2 / Qwen2.5) in Flax NNX.

Matches ``LlamaForCausalLM`` and ``Qwen2ForCausalLM``: pre-RMSNorm blocks (normalisation
in float32), split-half RoPE over the whole head with ``rope_theta`` from the config,
grouped-query attention (``num_key_value_heads`` K/V heads shared by groups of query heads,
never copied), SwiGLU MLP ``down(silu(gate(x)) * up(x))``, tied or untied LM head. Qwen2
differs only by biases on the q/k/v projections (not on o_proj); Llama may have biases on
all four attention projections (``attention_bias``) and on the MLP (``mlp_bias``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from llm_bridge import layers


ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}  # model_type -> transformers class


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """The config.json fields of Llama / Qwen2 (``model_type`` picks which). ``extra`` keeps the rest."""

    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if self.model_type not in ARCHITECTURES:
            raise ValueError(f"model_type {self.model_type!r} is not one of {sorted(ARCHITECTURES)}")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act={self.hidden_act!r}: the Llama family here implements SwiGLU with silu only")
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.kv_heads}")
        if self.dim % 2:
            raise ValueError(f"head_dim={self.dim} must be even for split-half RoPE")
        if self.model_type == "qwen2" and (self.attention_bias or self.mlp_bias):
            raise ValueError("Qwen2 has fixed biases (q/k/v only); attention_bias / mlp_bias do not apply")

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def dim(self) -> int:
        """Per-head dim: ``head_dim`` if given, else ``hidden_size // num_attention_heads``."""
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def architecture(self) -> str:
        return ARCHITECTURES[self.model_type]

    @property
    def qkv_bias(self) -> bool:
        return self.model_type == "qwen2" or self.attention_bias

    @property
    def o_bias(self) -> bool:
        return self.model_type == "llama" and self.attention_bias

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> LlamaConfig:
        """Read a Llama / Qwen2 config.json dict (either transformers spelling).

        Refused: RoPE scaling of any kind, interleaved or multimodal RoPE, Qwen2
        sliding-window attention, activations other than silu. ``pretraining_tp`` only
        reorders a matmul in PyTorch and is kept as-is.
        """
        cfg = dict(cfg)
        model_type = cfg.pop("model_type", "llama")
        theta, fraction = layers.rope_from_hf(cfg, theta_keys=("rope_theta",), default_theta=10000.0,
                                              fraction_keys=("partial_rotary_factor",))
        if fraction != 1.0:
            raise ValueError(f"partial_rotary_factor={fraction}: the Llama family rotates whole heads")
        for flag, what in (("rope_interleaved", "interleaved RoPE"), ("use_mrope", "multimodal RoPE")):
            if cfg.get(flag):
                raise ValueError(f"{flag}=True ({what}) is not implemented; only split-half RoPE is")
        if model_type == "qwen2":
            if cfg.pop("use_sliding_window", False):
                raise ValueError("use_sliding_window=True (sliding-window attention) is not implemented")
            kinds = set(cfg.pop("layer_types", None) or ["full_attention"])
            if kinds != {"full_attention"}:
                raise ValueError(f"layer_types {sorted(kinds)}: only full_attention is implemented")
            # sliding_window / max_window_layers only act with use_sliding_window: kept in extra.
        fields = {f.name for f in dataclasses.fields(cls)} - {"extra", "model_type"}
        kwargs = {k: cfg.pop(k) for k in list(cfg) if k in fields}
        cfg.pop("architectures", None)
        return cls(model_type=model_type, **kwargs, rope_theta=theta, extra=cfg)

    def to_hf(self) -> dict[str, Any]:
        """A config.json dict that transformers' ``*ForCausalLM.from_pretrained`` reads back."""
        out = dict(self.extra)
        # Unset optional fields stay unset: transformers derives them the same way we do.
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                    if f.name != "extra" and getattr(self, f.name) is not None})
        out.update(architectures=[self.architecture])
        if self.model_type == "qwen2":
            for key in ("attention_bias", "mlp_bias"):
                out.pop(key)
            out.update(use_sliding_window=False)
        return out


class Attention(nnx.Module):
    """Causal grouped-query self-attention with RoPE on q and k."""

    def __init__(self, cfg: LlamaConfig, *, dtype, rngs: nnx.Rngs):
        h, k, d, e = cfg.num_attention_heads, cfg.kv_heads, cfg.dim, cfg.hidden_size
        kw = dict(param_dtype=dtype, rngs=rngs)
        self.q_proj = nnx.Linear(e, h * d, use_bias=cfg.qkv_bias, **kw)
        self.k_proj = nnx.Linear(e, k * d, use_bias=cfg.qkv_bias, **kw)
        self.v_proj = nnx.Linear(e, k * d, use_bias=cfg.qkv_bias, **kw)
        self.o_proj = nnx.Linear(h * d, e, use_bias=cfg.o_bias, **kw)
        self.n_head, self.kv_heads, self.head_dim, self.theta = h, k, d, cfg.rope_theta

    def __call__(self, x: jax.Array, ctx: layers.Context, cached=None):
        """``x [B, T, E] -> ([B, T, E], (k, v))`` with ``k, v [B, S, kv_heads, head_dim]``."""
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.n_head, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.kv_heads, self.head_dim)
        cos, sin = layers.rope_tables(ctx.positions, self.head_dim, self.theta, layers.upcast(x.dtype))
        q, k = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
        k, v = layers.write_kv(cached, k, v, ctx.index)
        return self.o_proj(layers.attend(q, k, v, ctx.allowed, self.head_dim ** -0.5)), (k, v)


class MLP(nnx.Module):
    """SwiGLU: ``down_proj(silu(gate_proj(x)) * up_proj(x))``."""

    def __init__(self, cfg: LlamaConfig, *, dtype, rngs: nnx.Rngs):
        kw = dict(use_bias=cfg.mlp_bias, param_dtype=dtype, rngs=rngs)
        self.gate_proj = nnx.Linear(cfg.hidden_size, cfg.intermediate_size, **kw)
        self.up_proj = nnx.Linear(cfg.hidden_size, cfg.intermediate_size, **kw)
        self.down_proj = nnx.Linear(cfg.intermediate_size, cfg.hidden_size, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    """``x + attn(norm(x))``, then ``+ mlp(norm(.))``."""

    def __init__(self, cfg: LlamaConfig, *, dtype, rngs: nnx.Rngs):
        self.input_layernorm = layers.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype)
        self.self_attn = Attention(cfg, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = layers.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x, ctx, cached=None):
        a, kv = self.self_attn(self.input_layernorm(x), ctx, cached)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class Llama(nnx.Module):
    """Llama / Qwen2 language model: ``tokens [B, T] int -> logits [B, T, vocab_size]``."""

    def __init__(self, cfg: LlamaConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.hidden_size, param_dtype=dtype,
                                      embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.layers = nnx.List([DecoderLayer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
        self.norm = layers.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = nnx.Linear(cfg.hidden_size, cfg.vocab_size, use_bias=False, param_dtype=dtype, rngs=rngs)

    def __call__(self, tokens: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Logits ``[B, T, V]`` of every position; ``mask [B, T]`` marks real tokens (default all)."""
        return self.forward(tokens, mask)[0]

    def forward(self, tokens, mask=None, cache: layers.KVCache | None = None):
        """``(logits [B, T, V], cache)``: extends ``cache`` by the ``T`` tokens when one is given."""
        mask = jnp.ones(tokens.shape, bool) if mask is None else mask
        ctx = layers.context(mask, cache)
        x = self.embed_tokens(tokens)
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            x, (k, v) = layer(x, ctx, None if cache is None else (cache.k[i], cache.v[i]))
            ks.append(k)
            vs.append(v)
        x = self.norm(x)
        logits = self.embed_tokens.attend(x) if self.config.tie_word_embeddings else self.lm_head(x)
        return logits, (None if cache is None else layers.advance(cache, mask, ks, vs))

    def init_cache(self, batch: int, slots: int) -> layers.KVCache:
        """An empty KV cache for ``batch`` rows of up to ``slots`` tokens (prompt + generated)."""
        c = self.config
        return layers.KVCache.empty(c.num_hidden_layers, batch, slots, c.kv_heads, c.dim,
                                    self.embed_tokens.embedding.dtype)
