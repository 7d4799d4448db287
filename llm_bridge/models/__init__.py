"""The model families and their registry: ``model_type`` -> :class:`~llm_bridge.models.family.Family`.

Files: :mod:`~llm_bridge.models.layers` (norms, RoPE, attention, KV cache shared by every family),
one file per family (:mod:`~llm_bridge.models.gpt2`, :mod:`~llm_bridge.models.gpt_neox`,
:mod:`~llm_bridge.models.llama`), :mod:`~llm_bridge.models.generate` (KV-cached sampling) and
:mod:`~llm_bridge.models.lora` (adapters). Checkpoints and GGUF files are read by
:mod:`llm_bridge.loading`, which imports this package (never the other way round).

A new architecture is one file plus one line in :data:`FAMILIES`. The file defines:

- a frozen config dataclass with ``model_type``, ``architecture``, ``tie_word_embeddings``,
  ``from_hf(dict)`` (reads a config.json dict, refusing what is not implemented) and ``to_hf()``;
- the ``nnx.Module`` (``Model(config, dtype=..., rngs=...)``) with ``__call__(tokens, mask)``,
  ``forward(tokens, mask, cache)`` and ``init_cache(batch, slots)``, its decoder layers in
  ``model.layers`` where LoRA is wanted;
- ``FAMILY = Family(...)`` (:class:`~llm_bridge.models.family.Family`): the Hugging Face key table
  (every parameter mapped, transposes said), the checkpoint conventions (prefix, buffers, head,
  aliases), the config fields holding the layer and head counts, the LoRA target names, the
  sharding rules, and (optional) the GGUF tensor-name table, metadata-key table, required keys
  and a hook for config fields the key table cannot give.

The generic code reads only these records: loading (:mod:`llm_bridge.loading.weights`,
:mod:`llm_bridge.loading.gguf`), sharding (:mod:`llm_bridge.loading.sharding`) and LoRA
(:mod:`llm_bridge.models.lora`) name no family.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from typing import Union

import jax.numpy as jnp
from flax import nnx

from llm_bridge.models import gpt2, gpt_neox, llama
from llm_bridge.models.family import Family, check_fields

__all__ = ["FAMILIES", "Config", "Family", "Model", "abstract_model", "config_from_hf", "family_of"]

FAMILIES: dict[str, Family] = {
    "gpt2": gpt2.FAMILY,
    "gpt_neox": gpt_neox.FAMILY,
    "llama": llama.FAMILY,
    "qwen2": llama.QWEN2_FAMILY,
}

# The config dataclasses and model classes of every registered family (type annotations).
Config = Union[tuple(dict.fromkeys(f.config for f in FAMILIES.values()))]  # noqa: UP007 -- built from the registry
Model = Union[tuple(dict.fromkeys(f.model for f in FAMILIES.values()))]  # noqa: UP007


def family_of(config_or_model) -> Family:
    """The :class:`Family` of a config dataclass or a model (by its ``config.model_type``)."""
    config = getattr(config_or_model, "config", config_or_model)
    return FAMILIES[config.model_type]


def config_from_hf(cfg: Mapping) -> Config:
    """The config dataclass of a config.json dict, chosen by its ``model_type``.

    Every architecture field the dict sets is checked before anything is built
    (:data:`llm_bridge.models.family.LIMITS`: type, range and an upper bound per field), then the
    family's divisibility rules (heads into width ...); ``ValueError`` with one line naming the
    field otherwise.
    """
    if not isinstance(cfg, Mapping):
        raise ValueError(f"a config must be a JSON object, not {type(cfg).__name__}")
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise ValueError(f"model_type {reprlib.repr(model_type)} is not supported; supported: {sorted(FAMILIES)}")
    check_fields(cfg)
    return FAMILIES[model_type].config.from_hf(dict(cfg))


def abstract_model(config: Config, dtype=jnp.float32) -> Model:
    """The model with shapes and dtypes but no weights allocated (``nnx.eval_shape``)."""
    return nnx.eval_shape(lambda: family_of(config).model(config, dtype=dtype, rngs=nnx.Rngs(0)))

