"""The record every model family fills in: what the generic loading, sharding and LoRA code reads.

One :class:`Family` per ``model_type`` (``llama`` and ``qwen2`` share a model class but not their
GGUF tables, so they are two records), defined at the end of the family's own file
(``llm_bridge/models/gpt2.py`` ...) and registered in :data:`llm_bridge.models.FAMILIES`.
Nothing here imports a family: the family files import this module.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from collections.abc import Callable, Mapping

HFEntry = tuple[str, str, bool]  # (Hugging Face key, parameter path, transpose)
GGUFEntry = tuple[str, str, str | None]  # (GGUF tensor name, Hugging Face key, how llama.cpp changed it)
Rule = tuple[str, tuple[str | None, ...]]  # (regex matching the end of a parameter path, logical axis per dim)

# The last sharding rule of every family: norm weights and the biases no earlier rule names are
# small and every device needs them whole.
REPLICATED: Rule = (r"[^.]+\.(weight|bias)", (None,))


# config.json field (any family's spelling) -> (kind, lowest, highest): every architecture field is
# checked for its type and range before a model is built (config.json and GGUF metadata alike:
# :func:`check_fields`), so a hostile or careless config fails in one line instead of spinning in
# ``nnx.eval_shape`` (num_hidden_layers 10**9) or failing at the first forward (rms_norm_eps "abc").
# Upper bounds are several times the largest released model's value (Llama 3.1 405B: 126 layers,
# width 16,384, 128 heads, MLP 53,248, 131,072 positions; Gemma 3: 262,144 tokens, head dim 256):
# far past any real checkpoint, far below what would exhaust a machine before the shapes are checked.
# Kinds: "int" (an int, not a bool), "float" (an int or float, finite; "float>" excludes the lowest
# value), "bool", "str". Divisibility (heads into width, query heads into key/value heads, even
# rotary dims) is each config dataclass's ``__post_init__``.
_COUNT = ("int", 1, 1024)  # layers, heads: 8x the largest released
LIMITS: dict[str, tuple] = {
    "vocab_size": ("int", 1, 1 << 20),
    "hidden_size": ("int", 1, 1 << 16), "n_embd": ("int", 1, 1 << 16),
    "intermediate_size": ("int", 1, 1 << 18), "n_inner": ("int", 1, 1 << 18),
    "num_hidden_layers": _COUNT, "n_layer": _COUNT,
    "num_attention_heads": _COUNT, "n_head": _COUNT, "num_key_value_heads": _COUNT,
    "head_dim": ("int", 1, 4096),
    "max_position_embeddings": ("int", 1, 1 << 24), "n_positions": ("int", 1, 1 << 24),
    "rms_norm_eps": ("float", 0.0, 1.0), "layer_norm_eps": ("float", 0.0, 1.0), "layer_norm_epsilon": ("float", 0.0, 1.0),
    "rope_theta": ("float>", 0.0, 1e12), "rotary_emb_base": ("float>", 0.0, 1e12),
    "rotary_pct": ("float>", 0.0, 1.0), "partial_rotary_factor": ("float>", 0.0, 1.0),
    "tie_word_embeddings": ("bool",), "attention_bias": ("bool",), "mlp_bias": ("bool",),
    "use_parallel_residual": ("bool",), "scale_attn_weights": ("bool",), "scale_attn_by_inverse_layer_idx": ("bool",),
    "hidden_act": ("str",), "activation_function": ("str",), "model_type": ("str",),
}


def check_field(name: str, value) -> None:
    """ValueError (one line: ``config NAME=VALUE: why``) when ``value`` breaks :data:`LIMITS` for ``name``."""
    kind, *bounds = LIMITS[name]
    shown = reprlib.repr(value)  # bounded: a value nested 1,000 deep or a megabyte long prints short
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"config {name}={shown}: must be true or false")
        return
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"config {name}={shown}: must be a string")
        return
    lo, hi = bounds
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"config {name}={shown}: must be a positive integer")
        if value > hi:
            raise ValueError(f"config {name}={shown}: at most {hi:,} (the largest released models use far less)")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"config {name}={shown}: must be a finite number")
    if value < lo or (kind == "float>" and value == lo) or value > hi:
        interval = f"{'(' if kind == 'float>' else '['}{lo:g}, {hi:g}]"
        raise ValueError(f"config {name}={shown}: must lie in {interval}")


def check_fields(values: Mapping) -> None:
    """:func:`check_field` on every field of ``values`` (a config.json dict or a config dataclass's
    fields) that :data:`LIMITS` names and that is set (None means unset), and on the RoPE settings
    nested in ``rope_parameters`` / ``rope_scaling``."""
    for name, value in values.items():
        if name in LIMITS and value is not None:
            check_field(name, value)
    for nested in ("rope_parameters", "rope_scaling"):
        inner = values.get(nested)
        if inner is not None and not isinstance(inner, Mapping):
            raise ValueError(f"config {nested}={reprlib.repr(inner)}: must be an object")
        for name in ("rope_theta", "partial_rotary_factor"):
            if inner is not None and inner.get(name) is not None:
                check_field(name, inner[name])


@dataclasses.dataclass(frozen=True)
class Family:
    """One architecture: its config and model classes, key tables and checkpoint conventions.

    config       the config dataclass (``from_hf`` / ``to_hf``, ``model_type``)
    model        the ``nnx.Module`` class, built as ``model(config, dtype=..., rngs=...)``
    table        Hugging Face key -> parameter path (``{i}`` = layer index), and whether the
                 tensor is transposed (``torch.nn.Linear`` weights are; see the family file)
    prefix       the base-model prefix; checkpoints of the headless model (e.g. the original
                 ``gpt2`` upload) omit it from every key and get it added back
    buffers      regex of the non-parameter buffers old checkpoints contain; skipped on load
    head         ``(LM head key, embedding key)``: with a tied head the head key may still be
                 present; it is then checked equal to the embedding instead of loaded
    n_layers     the config field holding the number of layers (expands ``{i}``)
    heads        the config fields holding the number of query heads and of key/value heads
                 (sharding splits a heads dimension between whole heads; GGUF unpermutes per head)
    lora         names of the ``nnx.Linear`` attributes inside ``model.layers`` that LoRA wraps,
                 in the order adapters are created (each draws from the same ``nnx.Rngs``)
    sharding     rules giving each parameter path its logical axes; first match wins, and the
                 last rule is :data:`REPLICATED`
    aliases      other spellings of a key that some writers use, mapped to the table's key
    gguf         GGUF tensor name -> Hugging Face key and llama.cpp's change (``rope_q`` /
                 ``rope_k``: Q / K rows permuted per head; ``transpose``); empty: GGUF unsupported
    gguf_keys    GGUF metadata key (after ``"{arch}."``) -> config.json key
    gguf_required  the metadata keys (after ``"{arch}."``) a GGUF file must hold
    gguf_config  ``(arch, metadata, config dict, tensor names) -> more config.json fields``, for
                 what the key table cannot say; raises ``ValueError`` (one line) on what is refused
    """

    config: type
    model: type
    table: tuple[HFEntry, ...]
    prefix: str
    buffers: str
    head: tuple[str, str]
    n_layers: str
    heads: tuple[str, str]
    lora: tuple[str, ...]
    sharding: tuple[Rule, ...]
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)
    gguf: tuple[GGUFEntry, ...] = ()
    gguf_keys: dict[str, str] = dataclasses.field(default_factory=dict)
    gguf_required: tuple[str, ...] = ()
    gguf_config: Callable[[str, Mapping, dict, set[str]], dict] | None = None
