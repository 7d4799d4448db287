"""The record every model family fills in: what the generic loading, sharding and LoRA code reads.

One :class:`Family` per ``model_type`` (``llama`` and ``qwen2`` share a model class but not their
GGUF tables, so they are two records), defined at the end of the family's own file
(``llm_bridge/models/gpt2.py`` ...) and registered in :data:`llm_bridge.models.FAMILIES`.
Nothing here imports a family: the family files import this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

HFEntry = tuple[str, str, bool]  # (Hugging Face key, parameter path, transpose)
GGUFEntry = tuple[str, str, str | None]  # (GGUF tensor name, Hugging Face key, how llama.cpp changed it)
Rule = tuple[str, tuple[str | None, ...]]  # (regex matching the end of a parameter path, logical axis per dim)

# The last sharding rule of every family: norm weights and the biases no earlier rule names are
# small and every device needs them whole.
REPLICATED: Rule = (r"[^.]+\.(weight|bias)", (None,))


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
