"""Hugging Face checkpoint folders <-> llm_bridge models, in both directions, without torch.

A checkpoint folder holds ``config.json`` and the weights as ``model.safetensors`` or as
shards listed in ``model.safetensors.index.json``; ``tokenizer.json`` is read separately
(:func:`load_tokenizer`). Tensors are read with ``safetensors`` (never torch, never
pickle): a folder with only ``pytorch_model.bin`` / ``*.pt`` files is refused.

The map between Hugging Face keys and parameter paths is one table per family below
(``{i}`` = layer index). Loading is strict: the abstract model is built with
``nnx.eval_shape``, every parameter must receive exactly one checkpoint tensor of the
right shape, and every checkpoint tensor must be used, except the non-parameter buffers
that older transformers versions saved (causal-mask ``attn.bias``, ``rotary_emb.inv_freq``:
both recomputed from the config). Anything else fails naming the key. Saving walks the
same table backwards, so a model loaded, changed and saved opens in transformers.

Transposed weights (the third column): ``torch.nn.Linear`` stores ``weight [out, in]`` and
computes ``x @ weight.T``; ``flax.nnx.Linear`` stores ``kernel [in, out]`` and computes
``x @ kernel``. So every ``nn.Linear`` weight is transposed, on load and again on save.
GPT-2's attention and MLP use ``transformers.Conv1D``, which stores ``[in, out]`` and
computes ``x @ weight``, so those are *not* transposed (GPT-2's untied ``lm_head`` is an
``nn.Linear`` and is). Embeddings ``[vocab, hidden]``, norm weights and all biases have the
same layout in both.

With ``mesh=`` (:func:`load`, :func:`from_hf_weights`) each parameter is built straight into its
shards on a :class:`jax.sharding.Mesh` by :mod:`llm_bridge.sharding`'s rule table, reading one
tensor at a time (:func:`read_safetensors` with ``lazy=True`` gives tensors that are read only
when sliced); the checks are the same, made on shapes and dtypes before anything is read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import numbers
import re
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.flax import save_file

from llm_bridge import sharding
from llm_bridge.gpt2 import GPT2, GPT2Config
from llm_bridge.gpt_neox import GPTNeoX, GPTNeoXConfig
from llm_bridge.llama import Llama, LlamaConfig

Entry = tuple[str, str, bool]  # (Hugging Face key, parameter path, transpose)

GPT2_TABLE: tuple[Entry, ...] = (
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

GPT_NEOX_TABLE: tuple[Entry, ...] = (
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

LLAMA_TABLE: tuple[Entry, ...] = (  # Llama, TinyLlama, SmolLM2, Qwen2 / Qwen2.5
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


@dataclasses.dataclass(frozen=True)
class Family:
    """One architecture: its config and model classes, key table and checkpoint conventions.

    prefix   the base-model prefix; checkpoints of the headless model (e.g. the original
             ``gpt2`` upload) omit it from every key and get it added back
    buffers  keys of non-parameter buffers old checkpoints contain; skipped on load
    head     ``(LM head key, embedding key)``: with a tied head the head key may still be
             present; it is then checked equal to the embedding instead of loaded
    n_layers the config field holding the number of layers (expands ``{i}``)
    aliases  other spellings of a key that some writers use, mapped to the table's key
    """

    config: type
    model: type
    table: tuple[Entry, ...]
    prefix: str
    buffers: str
    head: tuple[str, str]
    n_layers: str
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)


GPT2_FAMILY = Family(GPT2Config, GPT2, GPT2_TABLE, "transformer.",
                     r"transformer\.h\.\d+\.attn\.(bias|masked_bias)", ("lm_head.weight", "transformer.wte.weight"),
                     "n_layer")
GPT_NEOX_FAMILY = Family(GPTNeoXConfig, GPTNeoX, GPT_NEOX_TABLE, "gpt_neox.",
                         r"gpt_neox\.layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)",
                         ("embed_out.weight", "gpt_neox.embed_in.weight"), "num_hidden_layers",
                         # transformers >= 5 names the head module lm_head (it still saves embed_out)
                         aliases={"lm_head.weight": "embed_out.weight"})
LLAMA_FAMILY = Family(LlamaConfig, Llama, LLAMA_TABLE, "model.",
                      r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",
                      ("lm_head.weight", "model.embed_tokens.weight"), "num_hidden_layers")
FAMILIES: dict[str, Family] = {"gpt2": GPT2_FAMILY, "gpt_neox": GPT_NEOX_FAMILY,
                               "llama": LLAMA_FAMILY, "qwen2": LLAMA_FAMILY}

Config = GPT2Config | GPTNeoXConfig | LlamaConfig
Model = GPT2 | GPTNeoX | Llama


def config_from_hf(cfg: Mapping) -> Config:
    """The config dataclass of a config.json dict, chosen by its ``model_type``.

    Every size (an ``int`` field of the dataclass: widths, head and layer counts, vocabulary)
    that the dict sets must be a positive integer; ``ValueError`` otherwise.
    """
    model_type = cfg.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"model_type {model_type!r} is not supported; supported: {sorted(FAMILIES)}")
    config_type = FAMILIES[model_type].config
    for field in dataclasses.fields(config_type):
        value = cfg.get(field.name)
        if "int" in str(field.type) and value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
            raise ValueError(f"config {field.name}={value!r}: must be a positive integer")
    return config_type.from_hf(dict(cfg))


def _family(config: Config) -> Family:
    return FAMILIES[config.model_type]


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


def _entries(config: Config, params: Mapping[str, object]) -> list[Entry]:
    """The family table with ``{i}`` expanded, restricted to parameters this config has."""
    family = _family(config)
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


def abstract_model(config: Config, dtype=jnp.float32) -> Model:
    """The model with shapes and dtypes but no weights allocated (``nnx.eval_shape``)."""
    return nnx.eval_shape(lambda: _family(config).model(config, dtype=dtype, rngs=nnx.Rngs(0)))


def hf_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Hugging Face key -> shape of every tensor a checkpoint of ``config`` must hold."""
    params = _flatten(nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param)))
    return {key: tuple(params[path].shape[::-1] if transpose else params[path].shape)
            for key, path, transpose in _entries(config, params)}


def from_hf_weights(config: Config, weights: Mapping[str, object], *, dtype=jnp.float32, mesh=None) -> Model:
    """A model from a Hugging Face state dict ``{key: array}`` (numpy or jax arrays, or the lazy
    tensors of :func:`read_safetensors` with ``lazy=True``).

    Strict: raises KeyError / ValueError naming the key if a tensor is missing, unused or
    of the wrong shape (checked on shapes and dtypes, before a lazy tensor is read). Tensors are
    cast to ``dtype`` (default float32, whatever the checkpoint stores: bf16 checkpoints are
    upcast). With ``mesh`` (a :class:`jax.sharding.Mesh` with axes ``data`` / ``model``) every
    parameter is built directly into its shards by :func:`llm_bridge.sharding.build`, one tensor at
    a time, never whole on one device.
    """
    family = _family(config)
    weights = dict(weights)
    if family.prefix and not any(k.startswith(family.prefix) for k in weights):
        weights = {family.prefix + k: v for k, v in weights.items()}
    for alias, key in family.aliases.items():
        if alias in weights and key not in weights:
            weights[key] = weights.pop(alias)
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


def _read_config(path: Path) -> dict:
    """A JSON object file; a missing folder, a missing file and unparsable JSON each say so naming the path
    (an unreadable file keeps its own ``PermissionError``, never called corrupt)."""
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: no such folder")
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent} has no {path.name}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: not a JSON object")
    return value


def _weight_map(index: Path) -> dict[str, str]:
    """The ``weight_map`` of a shard index; every shard must be a plain file name inside the folder."""
    weight_map = _read_config(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{index}: has no weight_map of tensor name -> shard file name")
    for name in set(weight_map.values()):
        if Path(name).name != name or name in ("", ".", "..") or "\\" in name:
            raise ValueError(f"{index}: shard {name!r} is not a file name inside the folder; refused")
    return weight_map


def _weight_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return [folder / name for name in sorted(set(_weight_map(index).values()))]
    if (folder / "model.safetensors").exists():
        return [folder / "model.safetensors"]
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickled:
        raise ValueError(f"{folder} has only pickled PyTorch weights ({', '.join(pickled)}); llm_bridge reads "
                         f"safetensors only (pickle can run arbitrary code). Convert once with transformers: "
                         f"AutoModelForCausalLM.from_pretrained(folder).save_pretrained(out, safe_serialization=True)")
    raise FileNotFoundError(f"{folder} has neither model.safetensors nor model.safetensors.index.json")


# safetensors dtype names -> numpy dtypes (ml_dtypes' for bfloat16 / float8); others are refused as weights
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": jnp.bfloat16,
           "F8_E4M3": jnp.float8_e4m3fn, "F8_E5M2": jnp.float8_e5m2, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8,
           "BOOL": np.bool_}


def _invalid(path: Path, err: Exception) -> ValueError:
    return ValueError(f"{path}: not a valid safetensors file (truncated or corrupt?): {err}")


@dataclasses.dataclass(frozen=True)
class StoredTensor:
    """One tensor of a safetensors file, read only when sliced: ``t[0:4, 8:16]`` reads that block
    (``safe_open(...).get_slice``), ``np.asarray(t)`` the whole tensor.

    The file is opened for each read and closed after it: safetensors memory-maps the file, and
    the pages a read touches count as resident memory until the map is closed.
    """

    file: Path
    key: str
    shape: tuple[int, ...]
    dtype: object  # a numpy dtype, or the safetensors name of a type numpy does not have

    def __getitem__(self, index) -> np.ndarray:
        """The block ``index`` (slices, one per leading dimension; clipped to the shape as numpy does)."""
        index = index if isinstance(index, tuple) else (index,)
        index = tuple(slice(*i.indices(n)) for i, n in zip(index, self.shape))
        try:
            with safe_open(self.file, framework="np") as f:
                return f.get_slice(self.key)[index]
        except SafetensorError as err:
            raise _invalid(self.file, err) from None

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        try:
            with safe_open(self.file, framework="np") as f:
                x = f.get_tensor(self.key)
        except SafetensorError as err:
            raise _invalid(self.file, err) from None
        return x if dtype is None else x.astype(dtype)


def read_safetensors(folder: str | Path, *, lazy: bool = False) -> dict[str, object]:
    """Every tensor of a checkpoint folder (one file or all shards), as jax arrays in their stored dtype;
    with ``lazy=True`` as :class:`StoredTensor` handles (only the headers are read)."""
    folder = Path(folder).expanduser()
    out: dict[str, object] = {}
    for path in _weight_files(folder):
        try:
            with safe_open(path, framework="np" if lazy else "flax") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    if key in out:
                        raise ValueError(f"tensor {key!r} appears in more than one shard ({path.name})")
                    if lazy:
                        view = f.get_slice(key)
                        kind = view.get_dtype()
                        out[key] = StoredTensor(path, key, tuple(view.get_shape()),
                                                np.dtype(_DTYPES[kind]) if kind in _DTYPES else kind)
                    else:
                        out[key] = f.get_tensor(key)
        except SafetensorError as err:  # OSErrors (missing, permission denied) stay what they are
            raise _invalid(path, err) from None
    index = folder / "model.safetensors.index.json"
    if index.exists():
        listed = set(_weight_map(index))
        if listed != set(out):
            raise ValueError(f"{index.name} and the shards disagree on {sorted(listed ^ set(out))[:5]}")
    return out


def load(folder: str | Path, *, dtype=jnp.float32, mesh=None) -> Model:
    """The model of a local Hugging Face checkpoint folder (config.json + safetensors), of a GGUF
    file (``*.gguf``, see :mod:`llm_bridge.gguf`), or of a named model (``"smollm2"``).

    The family comes from ``config.json``'s ``model_type`` (gpt2, gpt_neox, llama, qwen2);
    the config dataclass is ``model.config``. With ``mesh`` (:func:`llm_bridge.sharding.make_mesh`)
    every parameter is placed on it by :mod:`llm_bridge.sharding`'s rule table, each tensor read
    from the file straight into its shards, one at a time (docs/scaling_up.md).
    """
    from llm_bridge import gguf

    if gguf.is_gguf(folder):
        return gguf.load(folder, dtype=dtype, mesh=mesh)
    folder = Path(folder).expanduser()
    path = folder / "config.json"
    raw = _read_config(path)
    try:
        config = config_from_hf(raw)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err}") from None
    return from_hf_weights(config, read_safetensors(folder, lazy=mesh is not None), dtype=dtype, mesh=mesh)


def save(folder: str | Path, model: Model, *, max_shard_size: int | None = None) -> Path:
    """Write ``model`` as a Hugging Face checkpoint: config.json + safetensors (sharded above
    ``max_shard_size`` bytes, with model.safetensors.index.json). Returns the folder.

    ``transformers.AutoModelForCausalLM.from_pretrained(folder)`` opens the result.
    """
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    weights = to_hf_weights(model)
    dtype = str(next(iter(weights.values())).dtype)
    config = model.config.to_hf() | {"torch_dtype": dtype}
    config.pop("dtype", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shards: list[dict[str, jax.Array]] = [{}]
    size = 0
    for key, x in weights.items():
        if max_shard_size is not None and shards[-1] and size + x.nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][key] = x
        size += x.nbytes
    metadata = {"format": "pt"}  # transformers refuses safetensors files without it
    if len(shards) == 1:
        save_file(shards[0], folder / "model.safetensors", metadata=metadata)
        return folder
    weight_map = {}
    for n, shard in enumerate(shards, 1):
        name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / name, metadata=metadata)
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": sum(x.nbytes for x in weights.values())}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return folder


def load_tokenizer(folder: str | Path):
    """The ``tokenizers.Tokenizer`` of a checkpoint folder's ``tokenizer.json``, or of a GGUF file's metadata."""
    from tokenizers import Tokenizer

    from llm_bridge import gguf

    if gguf.is_gguf(folder):
        return gguf.load_tokenizer(folder)
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    path = folder / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; llm_bridge reads the fast-tokenizer file tokenizer.json only "
                                f"(transformers writes it with AutoTokenizer.from_pretrained(...).save_pretrained)")
    text = path.read_text(encoding="utf-8", errors="replace")  # PermissionError stays itself
    try:
        return Tokenizer.from_str(text)
    except Exception as err:  # noqa: BLE001 -- tokenizers raises plain Exception for every parse failure
        raise ValueError(f"{path}: not a valid tokenizer.json: {' '.join(str(err).split())[:300]}") from None


HUB_FILES = ["config.json", "generation_config.json", "model.safetensors", "model-*.safetensors",
             "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "chat_template.jinja"]


def download(repo_id: str, *, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """Fetch a checkpoint from the Hugging Face hub (needs ``pip install .[hub]`` and network);
    returns the local folder to pass to :func:`load` and :func:`load_tokenizer`.

    Only safetensors weights are fetched (a repo with only ``.bin`` weights then has none
    and :func:`load` fails). Tests and default runs never call this.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ImportError("download() needs huggingface_hub: pip install 'subliminal-verify[hub]'") from e
    return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=HUB_FILES))
