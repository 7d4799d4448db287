"""The Llama family (Llama, TinyLlama, SmolLM2, Qwen2 / Qwen2.5) in Flax NNX.

Matches ``LlamaForCausalLM`` and ``Qwen2ForCausalLM``: pre-RMSNorm blocks (normalisation
in float32), split-half RoPE over the whole head with ``rope_theta`` from the config,
grouped-query attention (``num_key_value_heads`` K/V heads shared by groups of query heads,
never copied), SwiGLU MLP ``down(silu(gate(x)) * up(x))``, tied or untied LM head. Qwen2
differs only by biases on the q/k/v projections (not on o_proj); Llama may have biases on
all four attention projections (``attention_bias``) and on the MLP (``mlp_bias``).

:data:`FAMILY` (``llama``) and :data:`QWEN2_FAMILY` (``qwen2``) hold everything the generic code
reads about them (:class:`llm_bridge.models.family.Family`): the Hugging Face key table (every
``nn.Linear`` weight transposed), the GGUF tables, checkpoint conventions, LoRA targets and
sharding rules. They differ only in the GGUF tensor table: llama.cpp permutes the rows of each
Q (K) head of a ``llama`` file from split-half RoPE order ``[x_0 .. x_{d/2-1} | x_{d/2} .. x_{d-1}]``
to interleaved pairs ``(x_0, x_{d/2}), (x_1, x_{d/2+1}) ...`` for its "normal" RoPE (``rope_q`` /
``rope_k``, undone on load), while ``qwen2`` uses llama.cpp's NeoX RoPE, which is split-half, so
its Q / K are stored unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from llm_bridge.models import layers
from llm_bridge.models.family import REPLICATED, Family, check_fields


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
        check_fields({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        if self.model_type not in ARCHITECTURES:
            raise ValueError(f"model_type {self.model_type!r} is not one of {sorted(ARCHITECTURES)}")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act={self.hidden_act!r}: the Llama family here implements SwiGLU with silu only")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads="
                             f"{self.num_attention_heads} (give head_dim for heads of another size)")
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
        q = layers.tokenwise(self.q_proj, x).reshape(b, t, self.n_head, self.head_dim)
        k = layers.tokenwise(self.k_proj, x).reshape(b, t, self.kv_heads, self.head_dim)
        v = layers.tokenwise(self.v_proj, x).reshape(b, t, self.kv_heads, self.head_dim)
        cos, sin = layers.rope_tables(ctx.positions, self.head_dim, self.theta, layers.upcast(x.dtype))
        q, k = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
        k, v = layers.write_kv(cached, k, v, ctx.index)
        return layers.tokenwise(self.o_proj, layers.attend(q, k, v, ctx.allowed, self.head_dim ** -0.5)), (k, v)


class MLP(nnx.Module):
    """SwiGLU: ``down_proj(silu(gate_proj(x)) * up_proj(x))``."""

    def __init__(self, cfg: LlamaConfig, *, dtype, rngs: nnx.Rngs):
        kw = dict(use_bias=cfg.mlp_bias, param_dtype=dtype, rngs=rngs)
        self.gate_proj = nnx.Linear(cfg.hidden_size, cfg.intermediate_size, **kw)
        self.up_proj = nnx.Linear(cfg.hidden_size, cfg.intermediate_size, **kw)
        self.down_proj = nnx.Linear(cfg.intermediate_size, cfg.hidden_size, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return layers.tokenwise(lambda y: self.down_proj(jax.nn.silu(self.gate_proj(y)) * self.up_proj(y)), x)


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

    def forward(self, tokens, mask=None, cache: layers.KVCache | None = None, at: jax.Array | None = None):
        """``(logits [B, T, V], cache)``: extends ``cache`` by the ``T`` tokens when one is given; with
        ``at [B, K]`` (int positions) only the logits there, ``[B, K, V]`` (:func:`layers.at_positions`)."""
        mask = jnp.ones(tokens.shape, bool) if mask is None else mask
        ctx = layers.context(mask, cache)
        x = self.embed_tokens(tokens)
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            x, (k, v) = layer(x, ctx, None if cache is None else (cache.k[i], cache.v[i]))
            ks.append(k)
            vs.append(v)
        x = self.norm(layers.at_positions(x, at))
        logits = self.embed_tokens.attend(x) if self.config.tie_word_embeddings else self.lm_head(x)
        return logits, (None if cache is None else layers.advance(cache, mask, ks, vs))

    def init_cache(self, batch: int, slots: int) -> layers.KVCache:
        """An empty KV cache for ``batch`` rows of up to ``slots`` tokens (prompt + generated)."""
        c = self.config
        return layers.KVCache.empty(c.num_hidden_layers, batch, slots, c.kv_heads, c.dim,
                                    self.embed_tokens.embedding.dtype)


HF_TABLE = (  # Llama, TinyLlama, SmolLM2, Qwen2 / Qwen2.5
    ("model.embed_tokens.weight", "embed_tokens.embedding", False),
    ("model.layers.{i}.input_layernorm.weight", "layers.{i}.input_layernorm.weight", False),
    ("model.layers.{i}.self_attn.q_proj.weight", "layers.{i}.self_attn.q_proj.kernel", True),
    ("model.layers.{i}.self_attn.q_proj.bias", "layers.{i}.self_attn.q_proj.bias", False),  # Qwen2
    ("model.layers.{i}.self_attn.k_proj.weight", "layers.{i}.self_attn.k_proj.kernel", True),
    ("model.layers.{i}.self_attn.k_proj.bias", "layers.{i}.self_attn.k_proj.bias", False),  # Qwen2
    ("model.layers.{i}.self_attn.v_proj.weight", "layers.{i}.self_attn.v_proj.kernel", True),
    ("model.layers.{i}.self_attn.v_proj.bias", "layers.{i}.self_attn.v_proj.bias", False),  # Qwen2
    ("model.layers.{i}.self_attn.o_proj.weight", "layers.{i}.self_attn.o_proj.kernel", True),
    ("model.layers.{i}.self_attn.o_proj.bias", "layers.{i}.self_attn.o_proj.bias", False),  # attention_bias
    ("model.layers.{i}.post_attention_layernorm.weight", "layers.{i}.post_attention_layernorm.weight", False),
    ("model.layers.{i}.mlp.gate_proj.weight", "layers.{i}.mlp.gate_proj.kernel", True),
    ("model.layers.{i}.mlp.gate_proj.bias", "layers.{i}.mlp.gate_proj.bias", False),  # mlp_bias
    ("model.layers.{i}.mlp.up_proj.weight", "layers.{i}.mlp.up_proj.kernel", True),
    ("model.layers.{i}.mlp.up_proj.bias", "layers.{i}.mlp.up_proj.bias", False),  # mlp_bias
    ("model.layers.{i}.mlp.down_proj.weight", "layers.{i}.mlp.down_proj.kernel", True),
    ("model.layers.{i}.mlp.down_proj.bias", "layers.{i}.mlp.down_proj.bias", False),  # mlp_bias
    ("model.norm.weight", "norm.weight", False),
    ("lm_head.weight", "lm_head.kernel", True),  # only when the head is untied
)

_GGUF_BLOCKS = (
    ("blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight", None),
    ("blk.{i}.attn_q.weight", "model.layers.{i}.self_attn.q_proj.weight", "rope_q"),
    ("blk.{i}.attn_q.bias", "model.layers.{i}.self_attn.q_proj.bias", "rope_q"),
    ("blk.{i}.attn_k.weight", "model.layers.{i}.self_attn.k_proj.weight", "rope_k"),
    ("blk.{i}.attn_k.bias", "model.layers.{i}.self_attn.k_proj.bias", "rope_k"),
    ("blk.{i}.attn_v.weight", "model.layers.{i}.self_attn.v_proj.weight", None),
    ("blk.{i}.attn_v.bias", "model.layers.{i}.self_attn.v_proj.bias", None),
    ("blk.{i}.attn_output.weight", "model.layers.{i}.self_attn.o_proj.weight", None),
    ("blk.{i}.attn_output.bias", "model.layers.{i}.self_attn.o_proj.bias", None),
    ("blk.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight", None),
    ("blk.{i}.ffn_gate.weight", "model.layers.{i}.mlp.gate_proj.weight", None),
    ("blk.{i}.ffn_gate.bias", "model.layers.{i}.mlp.gate_proj.bias", None),
    ("blk.{i}.ffn_up.weight", "model.layers.{i}.mlp.up_proj.weight", None),
    ("blk.{i}.ffn_up.bias", "model.layers.{i}.mlp.up_proj.bias", None),
    ("blk.{i}.ffn_down.weight", "model.layers.{i}.mlp.down_proj.weight", None),
    ("blk.{i}.ffn_down.bias", "model.layers.{i}.mlp.down_proj.bias", None),
)
_GGUF_ENDS = (
    ("token_embd.weight", "model.embed_tokens.weight", None),
    ("output_norm.weight", "model.norm.weight", None),
    ("output.weight", "lm_head.weight", None),  # absent: the head is tied to the embedding
)

# GGUF metadata key (after "llama." / "qwen2.") -> config.json key
GGUF_KEYS = {
    "block_count": "num_hidden_layers", "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size", "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads", "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta", "context_length": "max_position_embeddings", "vocab_size": "vocab_size",
}


def gguf_config(arch: str, meta, cfg: dict, tensor_names: set[str]) -> dict:
    """The config.json fields a GGUF file's key table cannot give: ``head_dim`` (from the key length),
    and for ``llama`` whether the attention / MLP projections have biases (their tensors are present).

    ``ValueError``: key and value heads of different sizes, or partial rotary.
    """
    heads, hidden = cfg["num_attention_heads"], cfg["hidden_size"]
    head_dim = meta.get(f"{arch}.attention.key_length")
    if head_dim is None and hidden % heads == 0:
        head_dim = hidden // heads
    out = {} if head_dim is None else {"head_dim": head_dim}  # None: LlamaConfig refuses the width
    if meta.get(f"{arch}.attention.value_length", head_dim) != head_dim:
        raise ValueError("key and value head sizes differ; not supported")
    if meta.get(f"{arch}.rope.dimension_count", head_dim) != head_dim:
        raise ValueError(f"{arch}.rope.dimension_count={meta[f'{arch}.rope.dimension_count']} < head "
                         f"dim {head_dim} (partial rotary) is not supported")
    if arch == "llama":
        out.update(attention_bias="blk.0.attn_q.bias" in tensor_names, mlp_bias="blk.0.ffn_up.bias" in tensor_names)
    return out


SHARDING = (
    (r"embed_tokens\.embedding", ("vocab", "embed")),
    (r"lm_head\.kernel", ("embed", "vocab")),
    (r"self_attn\.q_proj\.kernel", ("embed", "heads")),
    (r"self_attn\.q_proj\.bias", ("heads",)),
    (r"self_attn\.[kv]_proj\.kernel", ("embed", "kv_heads")),
    (r"self_attn\.[kv]_proj\.bias", ("kv_heads",)),
    (r"self_attn\.o_proj\.kernel", ("heads", "embed")),
    (r"mlp\.(gate_proj|up_proj)\.kernel", ("embed", "mlp")),
    (r"mlp\.(gate_proj|up_proj)\.bias", ("mlp",)),
    (r"mlp\.down_proj\.kernel", ("mlp", "embed")),
    REPLICATED,  # norms, o_proj and down_proj biases
)

FAMILY = Family(
    config=LlamaConfig, model=Llama, table=HF_TABLE, prefix="model.",
    buffers=r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",
    head=("lm_head.weight", "model.embed_tokens.weight"), n_layers="num_hidden_layers",
    heads=("num_attention_heads", "kv_heads"),
    lora=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), sharding=SHARDING,
    gguf=_GGUF_ENDS + _GGUF_BLOCKS, gguf_keys=GGUF_KEYS,
    gguf_required=("block_count", "embedding_length", "feed_forward_length", "attention.head_count"),
    gguf_config=gguf_config,
)
# Same GGUF names; llama.cpp's qwen2 graph uses NeoX (split-half) RoPE, so Q / K are not permuted.
QWEN2_FAMILY = dataclasses.replace(FAMILY, gguf=_GGUF_ENDS + tuple((g, h, None) for g, h, _ in _GGUF_BLOCKS))
