"""LMs past one device: every parameter placed on a :class:`jax.sharding.Mesh` by a small rule table.

The mesh has two axes (:mod:`harness.mesh`): ``data`` (FSDP: each parameter split along its
hidden dimension; also the batch rows) and ``model`` (tensor parallel: attention heads, MLP
width, vocabulary). The table, MaxText-style, gives each parameter *logical* axes by its path
(the rules of the model's family record, ``Family.sharding`` in :mod:`llm_bridge.models`: this
module names no family) and maps logical axes to mesh axes (:data:`MESH_AXES`). What the
families' rules give today:

=====================================================  ===================  ====================
parameter (Llama / GPT-2 / GPT-NeoX names)             logical axes         mesh axes
=====================================================  ===================  ====================
token embedding ``[vocab, hidden]``                    vocab, embed         model, data
GPT-2 position embedding ``[positions, hidden]``       -, embed             -, data
untied LM head ``[hidden, vocab]``                     embed, vocab         data, model
q / NeoX fused qkv kernel ``[hidden, heads * ...]``    embed, heads         data, model
k / v kernel ``[hidden, kv_heads * head_dim]``         embed, kv_heads      data, model
GPT-2 fused ``c_attn`` ``[hidden, 3 * hidden]``        embed, -             data, -
attention output ``[heads * head_dim, hidden]``        heads, embed         model, data
MLP in (gate, up, fc) ``[hidden, mlp]``                embed, mlp           data, model
MLP out (down, proj) ``[mlp, hidden]``                 mlp, embed           model, data
biases of q / k / v / fused qkv / MLP in               heads / kv / mlp     model
norm weights, other biases ``[hidden]``                -                    replicated
=====================================================  ===================  ====================

A dimension goes on its mesh axis only when it splits evenly there, and a ``heads`` /
``kv_heads`` dimension only when the *number of heads* does (a device then holds whole
heads); otherwise it stays whole on that axis (replicated). GPT-2's ``c_attn`` output is laid
out ``[q | k | v]``, so a contiguous split would cut across q, k and v: it is not split on
``model``. Every parameter path must match a rule of its family, or placing fails naming it.

Nothing downstream changes: ``jit`` sees sharded arguments and XLA's partitioner inserts the
collectives, so forward, backward, ``generate``, the projection and the training loops run as
they are, and their numbers differ from one device only by float32 summation order
(tests/test_sharding.py).

Loading (:func:`llm_bridge.load` with ``mesh=``; :mod:`llm_bridge.loading.weights`) builds each
parameter with :func:`jax.make_array_from_callback` straight from the checkpoint, one tensor at a
time: each device's shard is read from the file (``safe_open(...).get_slice``; the file is opened
per read, since safetensors memory-maps it and mapped pages count as resident until it is closed)
or, for GGUF, sliced from the one tensor just dequantized. The host never holds more than about
one tensor besides what the devices hold; on a multi-host mesh each host reads only its own
devices' shards.
"""

from __future__ import annotations

import contextlib
import re

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from harness import mesh as _mesh
from harness.mesh import AXES, format_mesh, make_mesh, parse_mesh
from llm_bridge.models import family_of

__all__ = ["AXES", "MESH_AXES", "batch_sharding", "build", "bytes_per_device",
           "format_mesh", "logical_axes", "make_mesh", "mesh_from_args", "param_shardings", "parse_mesh",
           "partition_spec", "place", "shard_batch"]

MESH_AXES: dict[str, str] = {"vocab": "model", "heads": "model", "kv_heads": "model", "mlp": "model",
                             "embed": "data"}


def logical_axes(path: str, rules) -> tuple[str | None, ...]:
    """The logical axes of the parameter at ``path`` (``"layers.3.self_attn.q_proj.kernel"``) by ``rules``
    (``(regex matching the end of a parameter path, logical axis of each dimension)``, first match wins:
    a family's ``Family.sharding``)."""
    for pattern, axes in rules:
        if re.search(rf"(^|\.){pattern}$", path):
            return axes
    raise KeyError(f"parameter {path!r} matches no sharding rule of its family (Family.sharding)")


def _heads(config) -> dict[str, int]:
    """How many heads a ``heads`` / ``kv_heads`` dimension holds: it is split only between whole heads."""
    heads, kv_heads = family_of(config).heads
    return {"heads": getattr(config, heads), "kv_heads": getattr(config, kv_heads)}


def partition_spec(config, path: str, shape: tuple[int, ...], mesh: Mesh) -> P:
    """The :class:`PartitionSpec` of the parameter at ``path`` of shape ``shape`` on ``mesh`` (module docstring).

    ``config``: the model's config (its head counts decide whether heads split evenly).
    """
    axes = logical_axes(path, family_of(config).sharding)
    if len(axes) != len(shape):
        raise ValueError(f"sharding rule for {path!r} names {len(axes)} dimensions; the parameter has shape {shape}")
    whole = _heads(config)
    spec = []
    for name, dim in zip(axes, shape):
        axis = MESH_AXES.get(name)
        size = mesh.shape.get(axis, 1) if axis is not None else 1
        splits = size > 1 and dim % size == 0 and whole.get(name, dim) % size == 0
        spec.append(axis if splits else None)
    return P(*spec)


def _dotted(key_path) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path)


def param_shardings(model: nnx.Module, mesh: Mesh) -> dict:
    """``nnx.to_pure_dict(nnx.state(model))`` with each parameter replaced by its :class:`NamedSharding` on ``mesh``
    (e.g. for ``jax.jit(..., out_shardings=...)``). ``model`` may be abstract (``nnx.eval_shape``)."""
    pure = nnx.to_pure_dict(nnx.state(model))
    return jax.tree_util.tree_map_with_path(
        lambda p, x: NamedSharding(mesh, partition_spec(model.config, _dotted(p), tuple(x.shape), mesh)), pure)


def place(model: nnx.Module, mesh: Mesh) -> nnx.Module:
    """``model`` with every parameter moved onto ``mesh`` by the rule table (``jax.device_put`` each).

    For a model already in memory (built or trained here); a checkpoint is loaded onto a mesh
    directly with ``llm_bridge.load(path, mesh=mesh)``, never whole on one device.
    """
    graphdef, state = nnx.split(model)
    shardings = param_shardings(model, mesh)
    nnx.replace_by_pure_dict(state, jax.tree.map(jax.device_put, nnx.to_pure_dict(state), shardings))
    return nnx.merge(graphdef, state)


def batch_sharding(mesh: Mesh, batch: int, ndim: int = 2) -> NamedSharding:
    """Rows split over ``data`` (replicated when ``batch`` does not divide evenly), for inputs ``[batch, ...]``."""
    rows = "data" if batch % mesh.shape["data"] == 0 else None
    return NamedSharding(mesh, P(rows, *([None] * (ndim - 1))))


def shard_batch(x, mesh: Mesh) -> jax.Array:
    """``x [batch, ...]`` (tokens, masks) placed with :func:`batch_sharding`: data-parallel inputs."""
    x = np.asarray(x)
    return jax.device_put(x, batch_sharding(mesh, x.shape[0], x.ndim))


def build(source, shape: tuple[int, ...], sharding: jax.sharding.Sharding, *, transpose: bool = False,
          dtype=None) -> jax.Array:
    """``source`` (or its transpose) as a ``jax.Array`` laid out by ``sharding``, built shard by shard.

    ``source``: anything a tuple of slices indexes into a numpy array: a numpy or jax array, a
    ``llm_bridge.loading.hf.StoredTensor`` (each slice read from the file), or an object whose
    ``open()`` context yields such a view (``llm_bridge.loading.gguf.Dequantized``: the one tensor,
    dequantized for the duration). ``shape`` is the result's shape (``source.shape`` reversed when
    ``transpose``). Each distinct shard is read once (devices that replicate it share the read)
    and cast to ``dtype``; only this host's devices are asked for.
    """
    opened = source.open() if hasattr(source, "open") else contextlib.nullcontext(source)
    with opened as src:
        reads: dict[tuple, np.ndarray] = {}

        def shard(index):
            key = tuple((s.start, s.stop, s.step) for s in index)
            if key not in reads:
                x = np.asarray(src[tuple(index[::-1]) if transpose else tuple(index)])
                x = x.T if transpose else x
                reads[key] = np.ascontiguousarray(x if dtype is None else x.astype(dtype, copy=False))
            return reads[key]

        return jax.make_array_from_callback(tuple(shape), sharding, shard)


# ------------------------------------------------------------------------------- command line

def mesh_from_args(args) -> Mesh | None:
    """The mesh of the ``--mesh`` / ``--distributed`` flags (:func:`harness.mesh.add_arguments`), after
    ``jax.distributed.initialize()`` when
    ``--distributed``; ``None`` (one device, no sharding) without ``--mesh`` and ``--distributed``.

    ``ValueError`` with one line for a bad spec or a mesh larger than the devices.
    """
    problem = _mesh.check_arguments(args)
    if problem:
        raise ValueError(problem)
    _mesh.initialize(args)
    if args.mesh is None:
        return make_mesh({"data": len(jax.devices())}) if args.distributed else None
    return make_mesh(args.mesh)


def bytes_per_device(tree) -> dict[str, int]:
    """Bytes of the arrays of ``tree`` (a model, a state or any pytree of ``jax.Array``) held by each of
    this host's devices, ``{str(device): bytes}``: how much of a placed model each device stores."""
    leaves = jax.tree.leaves(nnx.state(tree) if isinstance(tree, nnx.Module) else tree)
    out: dict[str, int] = {}
    for x in leaves:
        for s in x.addressable_shards:
            out[str(s.device)] = out.get(str(s.device), 0) + s.data.nbytes
    return out
