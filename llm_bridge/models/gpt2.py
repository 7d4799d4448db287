"""GPT-2 (Radford et al. 2019) in Flax NNX, parameter-compatible with ``GPT2LMHeadModel``.

Pre-LayerNorm blocks, learned absolute positions, gelu_new MLP, and (by default) an LM
head tied to the token embedding: logits are ``wte.attend(h) = h @ wte^T``, so the one
embedding parameter receives the gradient of both uses. Module names follow the Hugging
Face keys (``h.{i}.attn.c_attn`` ...) so that the key table (:data:`HF_TABLE`) reads as an
identity map; dropout is not implemented (every forward is deterministic).

:data:`FAMILY` (:class:`llm_bridge.models.family.Family`) holds everything the generic code
reads about GPT-2: its Hugging Face and GGUF tables, checkpoint conventions, LoRA targets and
sharding rules. Transposes: GPT-2's attention and MLP use ``transformers.Conv1D``, which stores
``[in, out]`` and computes ``x @ weight`` like ``nnx.Linear``'s kernel, so those are *not*
transposed on load; the untied ``lm_head`` is a ``torch.nn.Linear`` (``[out, in]``) and is.
llama.cpp stores the ``Conv1D`` weights transposed, as ``[out, in]`` like every other linear
layer in GGUF, so its table marks them ``transpose``.
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
        check_fields({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
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
        qkv = layers.tokenwise(self.c_attn, x).reshape(b, t, 3, self.n_head, e // self.n_head)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        k, v = layers.write_kv(cached, k, v, ctx.index)
        return layers.tokenwise(self.c_proj, layers.attend(q, k, v, ctx.allowed, self.scale)), (k, v)


class MLP(nnx.Module):
    """``c_proj(act(c_fc(x)))``."""

    def __init__(self, cfg: GPT2Config, *, dtype, rngs: nnx.Rngs):
        self.c_fc = nnx.Linear(cfg.n_embd, cfg.inner, param_dtype=dtype, rngs=rngs)
        self.c_proj = nnx.Linear(cfg.inner, cfg.n_embd, param_dtype=dtype, rngs=rngs)
        self.activation = cfg.activation_function

    def __call__(self, x: jax.Array) -> jax.Array:
        return layers.tokenwise(lambda y: self.c_proj(layers.ACTIVATIONS[self.activation](self.c_fc(y))), x)


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

    def forward(self, tokens, mask=None, cache: layers.KVCache | None = None, at: jax.Array | None = None):
        """``(logits [B, T, V], cache)``: extends ``cache`` by the ``T`` tokens when one is given; with
        ``at [B, K]`` (int positions) only the logits there, ``[B, K, V]`` (:func:`layers.at_positions`)."""
        mask = jnp.ones(tokens.shape, bool) if mask is None else mask
        ctx = layers.context(mask, cache)
        x = self.wte(tokens) + self.wpe(ctx.positions)
        ks, vs = [], []
        for i, block in enumerate(self.h):
            x, (k, v) = block(x, ctx, None if cache is None else (cache.k[i], cache.v[i]))
            ks.append(k)
            vs.append(v)
        x = self.ln_f(layers.at_positions(x, at))
        logits = self.wte.attend(x) if self.config.tie_word_embeddings else self.lm_head(x)
        return logits, (None if cache is None else layers.advance(cache, mask, ks, vs))

    def init_cache(self, batch: int, slots: int) -> layers.KVCache:
        """An empty KV cache for ``batch`` rows of up to ``slots`` tokens (prompt + generated)."""
        if slots > self.config.n_positions:
            raise ValueError(f"{slots} tokens exceed GPT-2's n_positions={self.config.n_positions}")
        return layers.KVCache.empty(self.config.n_layer, batch, slots, self.config.n_head,
                                    self.config.head_dim, self.wte.embedding.dtype)


HF_TABLE = (
    ("transformer.wte.weight", "wte.embedding", False),
    ("transformer.wpe.weight", "wpe.embedding", False),
    ("transformer.h.{i}.ln_1.weight", "h.{i}.ln_1.weight", False),
    ("transformer.h.{i}.ln_1.bias", "h.{i}.ln_1.bias", False),
    ("transformer.h.{i}.attn.c_attn.weight", "h.{i}.attn.c_attn.kernel", False),  # Conv1D: [in, out]
    ("transformer.h.{i}.attn.c_attn.bias", "h.{i}.attn.c_attn.bias", False),
    ("transformer.h.{i}.attn.c_proj.weight", "h.{i}.attn.c_proj.kernel", False),  # Conv1D
    ("transformer.h.{i}.attn.c_proj.bias", "h.{i}.attn.c_proj.bias", False),
    ("transformer.h.{i}.ln_2.weight", "h.{i}.ln_2.weight", False),
    ("transformer.h.{i}.ln_2.bias", "h.{i}.ln_2.bias", False),
    ("transformer.h.{i}.mlp.c_fc.weight", "h.{i}.mlp.c_fc.kernel", False),  # Conv1D
    ("transformer.h.{i}.mlp.c_fc.bias", "h.{i}.mlp.c_fc.bias", False),
    ("transformer.h.{i}.mlp.c_proj.weight", "h.{i}.mlp.c_proj.kernel", False),  # Conv1D
    ("transformer.h.{i}.mlp.c_proj.bias", "h.{i}.mlp.c_proj.bias", False),
    ("transformer.ln_f.weight", "ln_f.weight", False),
    ("transformer.ln_f.bias", "ln_f.bias", False),
    ("lm_head.weight", "lm_head.kernel", True),  # nn.Linear; only when the head is untied
)

GGUF_TABLE = (
    ("token_embd.weight", "transformer.wte.weight", None),
    ("position_embd.weight", "transformer.wpe.weight", None),
    ("blk.{i}.attn_norm.weight", "transformer.h.{i}.ln_1.weight", None),
    ("blk.{i}.attn_norm.bias", "transformer.h.{i}.ln_1.bias", None),
    ("blk.{i}.attn_qkv.weight", "transformer.h.{i}.attn.c_attn.weight", "transpose"),
    ("blk.{i}.attn_qkv.bias", "transformer.h.{i}.attn.c_attn.bias", None),
    ("blk.{i}.attn_output.weight", "transformer.h.{i}.attn.c_proj.weight", "transpose"),
    ("blk.{i}.attn_output.bias", "transformer.h.{i}.attn.c_proj.bias", None),
    ("blk.{i}.ffn_norm.weight", "transformer.h.{i}.ln_2.weight", None),
    ("blk.{i}.ffn_norm.bias", "transformer.h.{i}.ln_2.bias", None),
    ("blk.{i}.ffn_up.weight", "transformer.h.{i}.mlp.c_fc.weight", "transpose"),
    ("blk.{i}.ffn_up.bias", "transformer.h.{i}.mlp.c_fc.bias", None),
    ("blk.{i}.ffn_down.weight", "transformer.h.{i}.mlp.c_proj.weight", "transpose"),
    ("blk.{i}.ffn_down.bias", "transformer.h.{i}.mlp.c_proj.bias", None),
    ("output_norm.weight", "transformer.ln_f.weight", None),
    ("output_norm.bias", "transformer.ln_f.bias", None),
    ("output.weight", "lm_head.weight", None),  # llama.cpp writes GPT-2's tied head out as a copy
)

# GGUF metadata key (after "gpt2.") -> config.json key
GGUF_KEYS = {"block_count": "n_layer", "embedding_length": "n_embd", "feed_forward_length": "n_inner",
             "attention.head_count": "n_head", "attention.layer_norm_epsilon": "layer_norm_epsilon",
             "context_length": "n_positions", "vocab_size": "vocab_size"}

SHARDING = (
    (r"wte\.embedding", ("vocab", "embed")),
    (r"wpe\.embedding", (None, "embed")),
    (r"lm_head\.kernel", ("embed", "vocab")),
    (r"attn\.c_attn\.kernel", ("embed", None)),  # [q | k | v]; a contiguous split is not per head
    (r"attn\.c_proj\.kernel", ("heads", "embed")),
    (r"mlp\.c_fc\.kernel", ("embed", "mlp")),
    (r"mlp\.c_fc\.bias", ("mlp",)),
    (r"mlp\.c_proj\.kernel", ("mlp", "embed")),
    REPLICATED,  # norms, c_attn and output biases
)

FAMILY = Family(
    config=GPT2Config, model=GPT2, table=HF_TABLE, prefix="transformer.",
    buffers=r"transformer\.h\.\d+\.attn\.(bias|masked_bias)", head=("lm_head.weight", "transformer.wte.weight"),
    n_layers="n_layer", heads=("n_head", "n_head"), lora=("c_attn", "c_proj", "c_fc"), sharding=SHARDING,
    gguf=GGUF_TABLE, gguf_keys=GGUF_KEYS,
    gguf_required=("block_count", "embedding_length", "attention.head_count", "context_length"),
)
