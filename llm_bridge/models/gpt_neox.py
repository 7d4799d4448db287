"""GPT-NeoX (Black et al. 2022) as Pythia uses it, in Flax NNX; matches ``GPTNeoXForCausalLM``.

Each block adds attention and MLP outputs of the *same* input in parallel
(``x + attn(ln1(x)) + mlp(ln2(x))``, ``use_parallel_residual``), or sequentially when that
flag is off. Rotary embedding covers only the first ``rotary_pct`` of each head's dims
(Pythia: 0.25). The fused ``query_key_value`` projection is laid out *per head*: its output
reshapes to ``[heads, 3, head_dim]`` (not ``[3, heads, head_dim]`` as in GPT-2). The LM head
``embed_out`` is untied in Pythia; a tied head (``tie_word_embeddings``) uses
``embed_in.attend``. Dropout is not implemented.

:data:`FAMILY` (:class:`llm_bridge.models.family.Family`) holds everything the generic code
reads about GPT-NeoX: its Hugging Face key table (every ``nn.Linear`` weight transposed),
checkpoint conventions, LoRA targets and sharding rules. It has no GGUF table: GGUF files of
this architecture are refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from llm_bridge.models import layers
from llm_bridge.models.family import REPLICATED, Family, check_fields


@dataclasses.dataclass(frozen=True)
class GPTNeoXConfig:
    """The config.json fields GPT-NeoX uses (transformers < 5 names). ``extra`` keeps the rest."""

    vocab_size: int = 50304
    hidden_size: int = 512
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    hidden_act: str = "gelu"
    rotary_pct: float = 0.25
    rotary_emb_base: float = 10000.0
    max_position_embeddings: int = 2048
    layer_norm_eps: float = 1e-5
    use_parallel_residual: bool = True
    tie_word_embeddings: bool = False
    attention_bias: bool = True
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    model_type = "gpt_neox"
    architecture = "GPTNeoXForCausalLM"

    def __post_init__(self):
        check_fields({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.rotary_dim % 2:
            raise ValueError(f"rotary dims int(head_dim * rotary_pct) = {self.rotary_dim} must be even")
        layers.check_activation(self.hidden_act)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        """Rotated dims per head, ``int(head_dim * rotary_pct)`` as in transformers."""
        return int(self.head_dim * self.rotary_pct)

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> GPTNeoXConfig:
        """Read a GPT-NeoX config.json dict (either transformers spelling); refuse RoPE scaling."""
        cfg = dict(cfg)
        if cfg.pop("model_type", "gpt_neox") != "gpt_neox":
            raise ValueError("not a GPT-NeoX config")
        theta, pct = layers.rope_from_hf(cfg, theta_keys=("rotary_emb_base", "rope_theta"),
                                         default_theta=10000.0,
                                         fraction_keys=("rotary_pct", "partial_rotary_factor"),
                                         default_fraction=0.25)
        fields = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: cfg.pop(k) for k in list(cfg) if k in fields}
        cfg.pop("architectures", None)
        return cls(**kwargs, rotary_pct=pct, rotary_emb_base=theta, extra=cfg)

    def to_hf(self) -> dict[str, Any]:
        """A config.json dict that ``transformers.GPTNeoXForCausalLM.from_pretrained`` reads back."""
        out = dict(self.extra)
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        out.update(model_type=self.model_type, architectures=[self.architecture])
        return out


class Attention(nnx.Module):
    """Causal self-attention with per-head fused qkv and partial rotary embedding."""

    def __init__(self, cfg: GPTNeoXConfig, *, dtype, rngs: nnx.Rngs):
        e = cfg.hidden_size
        self.query_key_value = nnx.Linear(e, 3 * e, use_bias=cfg.attention_bias, param_dtype=dtype, rngs=rngs)
        self.dense = nnx.Linear(e, e, use_bias=cfg.attention_bias, param_dtype=dtype, rngs=rngs)
        self.n_head, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.rotary_dim, self.theta = cfg.rotary_dim, cfg.rotary_emb_base

    def __call__(self, x: jax.Array, ctx: layers.Context, cached=None):
        """``x [B, T, E] -> ([B, T, E], (k, v))``."""
        b, t, _ = x.shape
        qkv = layers.tokenwise(self.query_key_value, x).reshape(b, t, self.n_head, 3, self.head_dim)
        q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
        cos, sin = layers.rope_tables(ctx.positions, self.rotary_dim, self.theta, layers.upcast(x.dtype))
        q, k = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
        k, v = layers.write_kv(cached, k, v, ctx.index)
        return layers.tokenwise(self.dense, layers.attend(q, k, v, ctx.allowed, self.head_dim ** -0.5)), (k, v)


class MLP(nnx.Module):
    """``dense_4h_to_h(act(dense_h_to_4h(x)))``."""

    def __init__(self, cfg: GPTNeoXConfig, *, dtype, rngs: nnx.Rngs):
        self.dense_h_to_4h = nnx.Linear(cfg.hidden_size, cfg.intermediate_size, param_dtype=dtype, rngs=rngs)
        self.dense_4h_to_h = nnx.Linear(cfg.intermediate_size, cfg.hidden_size, param_dtype=dtype, rngs=rngs)
        self.activation = cfg.hidden_act

    def __call__(self, x: jax.Array) -> jax.Array:
        act = layers.ACTIVATIONS[self.activation]
        return layers.tokenwise(lambda y: self.dense_4h_to_h(act(self.dense_h_to_4h(y))), x)


class Layer(nnx.Module):
    """Parallel residual ``x + attn(ln1(x)) + mlp(ln2(x))``, or sequential when disabled."""

    def __init__(self, cfg: GPTNeoXConfig, *, dtype, rngs: nnx.Rngs):
        self.input_layernorm = layers.LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, dtype=dtype)
        self.post_attention_layernorm = layers.LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, dtype=dtype)
        self.attention = Attention(cfg, dtype=dtype, rngs=rngs)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)
        self.parallel = cfg.use_parallel_residual

    def __call__(self, x, ctx, cached=None):
        a, kv = self.attention(self.input_layernorm(x), ctx, cached)
        if self.parallel:
            return x + a + self.mlp(self.post_attention_layernorm(x)), kv
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class GPTNeoX(nnx.Module):
    """GPT-NeoX language model: ``tokens [B, T] int -> logits [B, T, vocab_size]``."""

    def __init__(self, cfg: GPTNeoXConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.embed_in = nnx.Embed(cfg.vocab_size, cfg.hidden_size, param_dtype=dtype,
                                  embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.layers = nnx.List([Layer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
        self.final_layer_norm = layers.LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, dtype=dtype)
        if not cfg.tie_word_embeddings:
            self.embed_out = nnx.Linear(cfg.hidden_size, cfg.vocab_size, use_bias=False, param_dtype=dtype,
                                        rngs=rngs)

    def __call__(self, tokens: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Logits ``[B, T, V]`` of every position; ``mask [B, T]`` marks real tokens (default all)."""
        return self.forward(tokens, mask)[0]

    def forward(self, tokens, mask=None, cache: layers.KVCache | None = None, at: jax.Array | None = None):
        """``(logits [B, T, V], cache)``: extends ``cache`` by the ``T`` tokens when one is given; with
        ``at [B, K]`` (int positions) only the logits there, ``[B, K, V]`` (:func:`layers.at_positions`)."""
        mask = jnp.ones(tokens.shape, bool) if mask is None else mask
        ctx = layers.context(mask, cache)
        x = self.embed_in(tokens)
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            x, (k, v) = layer(x, ctx, None if cache is None else (cache.k[i], cache.v[i]))
            ks.append(k)
            vs.append(v)
        x = self.final_layer_norm(layers.at_positions(x, at))
        logits = self.embed_in.attend(x) if self.config.tie_word_embeddings else self.embed_out(x)
        return logits, (None if cache is None else layers.advance(cache, mask, ks, vs))

    def init_cache(self, batch: int, slots: int) -> layers.KVCache:
        """An empty KV cache for ``batch`` rows of up to ``slots`` tokens (prompt + generated)."""
        c = self.config
        return layers.KVCache.empty(c.num_hidden_layers, batch, slots, c.num_attention_heads, c.head_dim,
                                    self.embed_in.embedding.dtype)


HF_TABLE = (
    ("gpt_neox.embed_in.weight", "embed_in.embedding", False),
    ("gpt_neox.layers.{i}.input_layernorm.weight", "layers.{i}.input_layernorm.weight", False),
    ("gpt_neox.layers.{i}.input_layernorm.bias", "layers.{i}.input_layernorm.bias", False),
    ("gpt_neox.layers.{i}.post_attention_layernorm.weight", "layers.{i}.post_attention_layernorm.weight", False),
    ("gpt_neox.layers.{i}.post_attention_layernorm.bias", "layers.{i}.post_attention_layernorm.bias", False),
    ("gpt_neox.layers.{i}.attention.query_key_value.weight", "layers.{i}.attention.query_key_value.kernel", True),
    ("gpt_neox.layers.{i}.attention.query_key_value.bias", "layers.{i}.attention.query_key_value.bias", False),
    ("gpt_neox.layers.{i}.attention.dense.weight", "layers.{i}.attention.dense.kernel", True),
    ("gpt_neox.layers.{i}.attention.dense.bias", "layers.{i}.attention.dense.bias", False),
    ("gpt_neox.layers.{i}.mlp.dense_h_to_4h.weight", "layers.{i}.mlp.dense_h_to_4h.kernel", True),
    ("gpt_neox.layers.{i}.mlp.dense_h_to_4h.bias", "layers.{i}.mlp.dense_h_to_4h.bias", False),
    ("gpt_neox.layers.{i}.mlp.dense_4h_to_h.weight", "layers.{i}.mlp.dense_4h_to_h.kernel", True),
    ("gpt_neox.layers.{i}.mlp.dense_4h_to_h.bias", "layers.{i}.mlp.dense_4h_to_h.bias", False),
    ("gpt_neox.final_layer_norm.weight", "final_layer_norm.weight", False),
    ("gpt_neox.final_layer_norm.bias", "final_layer_norm.bias", False),
    ("embed_out.weight", "embed_out.kernel", True),  # only when the head is untied (Pythia)
)

SHARDING = (
    (r"embed_in\.embedding", ("vocab", "embed")),
    (r"embed_out\.kernel", ("embed", "vocab")),
    (r"attention\.query_key_value\.kernel", ("embed", "heads")),  # per-head [q, k, v]
    (r"attention\.query_key_value\.bias", ("heads",)),
    (r"attention\.dense\.kernel", ("heads", "embed")),
    (r"mlp\.dense_h_to_4h\.kernel", ("embed", "mlp")),
    (r"mlp\.dense_h_to_4h\.bias", ("mlp",)),
    (r"mlp\.dense_4h_to_h\.kernel", ("mlp", "embed")),
    REPLICATED,  # norms, attention.dense and dense_4h_to_h biases
)

FAMILY = Family(
    config=GPTNeoXConfig, model=GPTNeoX, table=HF_TABLE, prefix="gpt_neox.",
    buffers=r"gpt_neox\.layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)",
    head=("embed_out.weight", "gpt_neox.embed_in.weight"), n_layers="num_hidden_layers",
    heads=("num_attention_heads", "num_attention_heads"),
    lora=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"), sharding=SHARDING,
    # transformers >= 5 names the head module lm_head (it still saves embed_out)
    aliases={"lm_head.weight": "embed_out.weight"},
)
