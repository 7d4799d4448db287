"""Hugging Face state dicts <-> llm_bridge models, through each family's key table.

The map between Hugging Face keys and parameter paths is the family record's table
(``Family.table`` in the family's file under :mod:`llm_bridge.models`; ``{i}`` = layer index).
Loading is strict: the abstract model is built with ``nnx.eval_shape``, every parameter must
receive exactly one tensor of the right shape, and every tensor must be used, except the
non-parameter buffers that older transformers versions saved (``Family.buffers``: causal-mask
``attn.bias``, ``rotary_emb.inv_freq``, both recomputed from the config). Anything else fails
naming the key. Saving walks the same table backwards, so a model loaded, changed and saved
opens in transformers. Both checkpoint folders (:mod:`llm_bridge.loading.hf`) and GGUF files
(:mod:`llm_bridge.loading.gguf`, after mapping GGUF names to Hugging Face keys) load through here.

Transposed weights (the table's third column): ``torch.nn.Linear`` stores ``weight [out, in]``
and computes ``x @ weight.T``; ``flax.nnx.Linear`` stores ``kernel [in, out]`` and computes
``x @ kernel``. So every ``nn.Linear`` weight is transposed, on load and again on save (GPT-2's
``Conv1D`` layers are the exception; see :mod:`llm_bridge.models.gpt2`). Embeddings ``[vocab,
hidden]``, norm weights and all biases have the same layout in both.

With ``mesh=`` (:func:`from_hf_weights`) each parameter is built straight into its shards on a
:class:`jax.sharding.Mesh` by :mod:`llm_bridge.loading.sharding`'s rule engine, one tensor at a
time (lazy tensors, :class:`llm_bridge.loading.hf.StoredTensor`, are read only when sliced); the
checks are the same, made on shapes and dtypes before anything is read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm_bridge.loading import sharding
from llm_bridge.models import Config, Model, abstract_model, family_of
from llm_bridge.models.family import HFEntry


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """Nested pure dict -> ``{"h.0.attn.c_attn.kernel": leaf}``."""
    out = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        out.update(_flatten(v, path + ".") if isinstance(v, Mapping) else {path: v})
    return out


def _unflatten(flat: Mapping[str, object]) -> dict:
    """Inverse of :func:`_flatten`; numeric parts become int keys (``nnx.List`` indices)."""
    out: dict = {}
    for path, leaf in flat.items():
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return out


def _entries(config: Config, params: Mapping[str, object]) -> list[HFEntry]:
    """The family table with ``{i}`` expanded, restricted to parameters this config has."""
    family = family_of(config)
    out = []
    for key, path, transpose in family.table:
        layers = range(getattr(config, family.n_layers)) if "{i}" in key else [None]
        for i in layers:
            k, p = (key, path) if i is None else (key.format(i=i), path.format(i=i))
            if p in params:
                out.append((k, p, transpose))
    unmapped = set(params) - {p for _, p, _ in out}
    if unmapped:
        raise KeyError(f"parameter {min(unmapped)!r} has no entry in the {config.model_type} key table")
    return out


def check_layer_count(config: Config, names, template: str, what: str = "checkpoint") -> None:
    """ValueError (one line) unless the tensors ``names`` hold exactly layers ``0 .. n-1`` of the
    config's ``n`` layers, where a layer's tensors are named like ``template`` (a key of the family's
    table with ``{i}``: ``model.layers.{i}.``, ``blk.{i}.``).

    Checked before the abstract model is built: building a model of many layers takes about 0.1 s
    a layer, so a config that claims 1,000 layers over a file holding 2 must fail first, not after
    minutes of ``nnx.eval_shape``.
    """
    family = family_of(config)
    n = getattr(config, family.n_layers)
    pattern = re.compile(re.escape(template.split("{i}")[0]) + r"(\d{1,9})\.")
    found = {int(m.group(1)) for name in names if (m := pattern.match(name))}
    if found != set(range(n)):
        have = f"tensors of {len(found)} layer{'s' * (len(found) != 1)} ({min(found)}..{max(found)})" if found \
            else "no layer tensors"
        raise ValueError(f"the config has {n} layers ({family.n_layers}); the {what} holds {have}")


def hf_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Hugging Face key -> shape of every tensor a checkpoint of ``config`` must hold."""
    params = _flatten(nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param)))
    return {key: tuple(params[path].shape[::-1] if transpose else params[path].shape)
            for key, path, transpose in _entries(config, params)}


def from_hf_weights(config: Config, weights: Mapping[str, object], *, dtype=jnp.float32, mesh=None) -> Model:
    """A model from a Hugging Face state dict ``{key: array}`` (numpy or jax arrays, or the lazy
    tensors of :func:`llm_bridge.loading.hf.read_safetensors` with ``lazy=True``).

    Strict: raises KeyError / ValueError naming the key if a tensor is missing, unused or
    of the wrong shape (checked on shapes and dtypes, before a lazy tensor is read). Tensors are
    cast to ``dtype`` (default float32, whatever the checkpoint stores: bf16 checkpoints are
    upcast). With ``mesh`` (a :class:`jax.sharding.Mesh` with axes ``data`` / ``model``) every
    parameter is built directly into its shards by :func:`llm_bridge.loading.sharding.build`, one
    tensor at a time, never whole on one device.
    """
    family = family_of(config)
    weights = dict(weights)
    if family.prefix and not any(k.startswith(family.prefix) for k in weights):
        weights = {family.prefix + k: v for k, v in weights.items()}
    for alias, key in family.aliases.items():
        if alias in weights and key not in weights:
            weights[key] = weights.pop(alias)
    check_layer_count(config, weights, next(key for key, _, _ in family.table if "{i}" in key))
    graphdef, state = nnx.split(abstract_model(config, dtype))
    expected = _flatten(nnx.to_pure_dict(state))
    filled, used = {}, set()
    for key, path, transpose in _entries(config, expected):
        if key not in weights:
            raise KeyError(f"checkpoint has no tensor {key!r} (needed for parameter {path})")
        w = weights[key]
        if not isinstance(w.dtype, np.dtype) or not jnp.issubdtype(w.dtype, jnp.floating):
            raise ValueError(f"checkpoint tensor {key!r} has dtype {w.dtype}; weights must be floating point")
        shape = tuple(w.shape[::-1] if transpose else w.shape)
        if shape != expected[path].shape:
            raise ValueError(f"checkpoint tensor {key!r} has shape {tuple(w.shape)}; parameter {path} "
                             f"needs {expected[path].shape}{' after transposing' if transpose else ''}")
        if mesh is None:
            x = jnp.asarray(w)
            filled[path] = (x.T if transpose else x).astype(dtype)
        else:
            spec = sharding.partition_spec(config, path, shape, mesh)
            filled[path] = sharding.build(w, shape, jax.sharding.NamedSharding(mesh, spec), transpose=transpose,
                                          dtype=dtype)
        used.add(key)
    head_key, embed_key = family.head
    if config.tie_word_embeddings and head_key in weights:
        if not _equal(weights[head_key], weights[embed_key]):
            raise ValueError(f"config ties the LM head to the embedding but checkpoint tensor {head_key!r} "
                             f"differs from {embed_key!r}")
        used.add(head_key)
    unused = sorted(k for k in weights if k not in used and not re.fullmatch(family.buffers, k))
    if unused:
        raise ValueError(f"checkpoint tensor {unused[0]!r} is not used by the {config.model_type} model "
                         f"({len(unused)} unused: {unused[:5]})")
    nnx.replace_by_pure_dict(state, _unflatten(filled))
    return nnx.merge(graphdef, state)


def _equal(a, b, block_bytes: int = 64 << 20) -> bool:
    """Whether two tensors (arrays or lazy tensors) hold equal values, compared in row blocks of
    about ``block_bytes`` so that two lazy tensors are never both read whole."""
    if tuple(a.shape) != tuple(b.shape):
        return False
    if not a.shape:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    row = max(1, int(np.prod(a.shape[1:])) * max(getattr(a.dtype, "itemsize", 1), getattr(b.dtype, "itemsize", 1)))
    step = max(1, block_bytes // row)
    return all(np.array_equal(np.asarray(a[i:i + step]), np.asarray(b[i:i + step]))
               for i in range(0, a.shape[0], step))


def to_hf_weights(model: Model) -> dict[str, jax.Array]:
    """The model's parameters as a Hugging Face state dict (the inverse of :func:`from_hf_weights`)."""
    params = _flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return {key: (params[path].T if transpose else params[path])
            for key, path, transpose in _entries(model.config, params)}
