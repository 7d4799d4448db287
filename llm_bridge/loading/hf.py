"""Hugging Face checkpoint folders: config.json, safetensors weights and tokenizer.json, without torch.

A checkpoint folder holds ``config.json`` and the weights as ``model.safetensors`` or as
shards listed in ``model.safetensors.index.json``; ``tokenizer.json`` is read separately
(:func:`load_tokenizer`). Tensors are read with ``safetensors`` (never torch, never
pickle): a folder with only ``pytorch_model.bin`` / ``*.pt`` files is refused. The tensors
become a model through the family's key table (:mod:`llm_bridge.loading.weights`), and a model
is saved through the same table backwards, so that transformers opens the folder.

With ``mesh=`` (:func:`load`) :func:`read_safetensors` with ``lazy=True`` gives tensors
(:class:`StoredTensor`) that are read only when sliced, so each parameter is read straight into
its shards (:mod:`llm_bridge.loading.sharding`). The folder's chat template is read by
:mod:`llm_bridge.loading.chat`; :func:`llm_bridge.loading.load` chooses between a folder and a
GGUF file.
"""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.flax import save_file

from llm_bridge.loading.weights import from_hf_weights, to_hf_weights
from llm_bridge.models import Model, config_from_hf
from harness.results import json_object


MAX_JSON_BYTES = 16 << 20  # config.json, model.safetensors.index.json: real ones are a few kB
MAX_TOKENIZER_BYTES = 256 << 20  # tokenizer.json: real ones are up to about 35 MB


def folder_file(folder: Path, name: str) -> Path:
    """``folder / name``, checked before it is opened: it exists, and it is a regular file (a FIFO
    would block the reader forever) whose real location, every link resolved, lies inside ``folder``
    or, for a Hugging Face cache snapshot (``.../snapshots/REV/``), in that cache's ``blobs/``
    folder, where the cache keeps every file (the snapshot holds only links, by design).

    A link to any other place is refused: a checkpoint folder names its files, and a name must not
    read a file the folder's owner did not put there. FileNotFoundError / ValueError, one line.
    """
    path = folder / name
    try:
        target = path.resolve(strict=True)
        home = folder.resolve(strict=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found" + (" (a link to a missing file)" if path.is_symlink() else "")
                                ) from None
    except (OSError, RuntimeError) as err:  # a link loop: RuntimeError up to Python 3.12, OSError after
        raise ValueError(f"{path}: cannot resolve its links ({' '.join(str(err).split())[:200]})") from None
    blobs = home.parent.parent / "blobs" if home.parent.name == "snapshots" else None
    if not (target.is_relative_to(home) or (blobs is not None and target.parent == blobs)):
        raise ValueError(f"{path}: links to {target}, outside the checkpoint folder; refused (only a Hugging Face "
                         f"cache's blobs/ folder may hold a checkpoint's files elsewhere)")
    if not stat.S_ISREG(target.stat().st_mode):
        raise ValueError(f"{path}: not a regular file")
    return path


def _read_config(path: Path) -> dict:
    """A JSON object file (:func:`folder_file`'s checks, at most :data:`MAX_JSON_BYTES`); a missing folder,
    a missing file and unparsable or too deeply nested JSON each say so naming the path (an unreadable
    file keeps its own ``PermissionError``, never called corrupt)."""
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: no such folder")
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"{path.parent} has no {path.name}")
    folder_file(path.parent, path.name)
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size:,} bytes; a config is at most {MAX_JSON_BYTES >> 20} MiB")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    return json_object(text, str(path))


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
    if index.exists() or index.is_symlink():
        return [folder_file(folder, name) for name in sorted(set(_weight_map(index).values()))]
    if (folder / "model.safetensors").exists() or (folder / "model.safetensors").is_symlink():
        return [folder_file(folder, "model.safetensors")]
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
    """The model of a local Hugging Face checkpoint folder (config.json + safetensors).

    The family comes from ``config.json``'s ``model_type`` (a key of :data:`llm_bridge.models.FAMILIES`);
    the config dataclass is ``model.config``. With ``mesh`` (:func:`llm_bridge.loading.sharding.make_mesh`)
    every parameter is placed on it by :mod:`llm_bridge.loading.sharding`'s rule table, each tensor
    read from the file straight into its shards, one at a time (docs/scaling_up.md).
    """
    folder = Path(folder).expanduser()
    path = folder / "config.json"
    raw = _read_config(path)
    try:
        config = config_from_hf(raw)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err}") from None
    weights = read_safetensors(folder, lazy=mesh is not None)
    try:
        return from_hf_weights(config, weights, dtype=dtype, mesh=mesh)
    except ValueError as err:  # name the folder (KeyError, a missing tensor, keeps its type and message)
        raise ValueError(f"{folder}: {err}") from None


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
    """The ``tokenizers.Tokenizer`` of a checkpoint folder's ``tokenizer.json``."""
    from tokenizers import Tokenizer

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    path = folder / "tokenizer.json"
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"{path} not found; llm_bridge reads the fast-tokenizer file tokenizer.json only "
                                f"(transformers writes it with AutoTokenizer.from_pretrained(...).save_pretrained)")
    folder_file(folder, "tokenizer.json")
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size:,} bytes; at most {MAX_TOKENIZER_BYTES >> 20} MiB are read")
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
