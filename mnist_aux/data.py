"""MNIST and Fashion-MNIST from the four gzip-compressed IDX files, validated.

Where the files come from, in order:

1. the directory given explicitly (``--data-dir``; ``data_dir=`` here);
2. the dataset's environment variable (``SUBLIMINAL_MNIST_DIR``,
   ``SUBLIMINAL_FASHION_MNIST_DIR``);
3. a system copy (Fashion-MNIST: ``/usr/share/datasets/fashion-mnist`` from the Debian
   package ``dataset-fashion-mnist``);
4. the download cache (``$XDG_CACHE_HOME/subliminal-verify/<dataset>``, default
   ``~/.cache/...``);
5. tensorflow-datasets when it is installed (``pip install ".[tfds]"``): its prepared copy in
   ``$SUBLIMINAL_TFDS_DIR`` (default: tfds' own ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``),
   which tfds downloads, checks against its registered checksums and builds on first use;
   the arrays come back in the IDX files' order (see :func:`_load_tfds`);
6. else the four official IDX files, fetched into the download cache, each kept only if it
   matches its published checksum.

Every folder a user names, in a flag or an environment variable (1, 2, ``$XDG_CACHE_HOME``,
``$SUBLIMINAL_TFDS_DIR``), has ``~`` expanded; results record it as given.

A directory named in 1 or 2 must hold all four files: nothing is downloaded in its place.
Every file is checked as it is read (a regular file, by ``os.stat`` before it is opened, so a
FIFO cannot block; gzip integrity, IDX magic number, shape, payload length, label range,
image/label counts) and any problem raises :class:`DataError` with one line that names the file
(the file format's checks are :mod:`mnist_aux.idx`'s).

Official or not is decided by CONTENT: the sha256 of each decompressed IDX file against the
value public projects pin for official MNIST (:attr:`DatasetSpec.content_sha256`). A ``.gz``
file's own bytes depend on the compressor (a recompressed copy of the official images has other
``.gz`` bytes and the same content), so they identify a download, not the data. The returned
:class:`Dataset` records where the data came from and, per file, the sha256 of the ``.gz`` and
of its content and whether each is the official one, and ``official_content`` for the whole
set (:attr:`Dataset.source`), so every results file says which data produced it.
"""

from __future__ import annotations

import contextlib
import functools
import gzip  # noqa: F401  (tests/test_mnist_data.py patches gzip.open through this module)
import hashlib
import os
import shutil
import tempfile
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.results import shown
from mnist_aux.idx import FILES, SPLITS, DataError, _file_hash, _gz_errors, _layout, _read_idx
from mnist_aux.idx import IMAGE_MAGIC, LABEL_MAGIC, read_idx  # noqa: F401  (read here by tests and callers)


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives and the published checksums of its official ``.gz`` files."""

    name: str
    env_var: str
    mirrors: tuple[str, ...]
    checksums: dict[str, tuple[str, str]]  # file -> (hash algorithm, hex digest) of the .gz, as published
    # file -> sha256 of the decompressed IDX file of the official release (empty: not known, so a
    # copy counts as official only when its .gz is the published one)
    content_sha256: dict[str, str] = field(default_factory=dict)
    system_dirs: tuple[str, ...] = ()
    system_package: str = ""  # the Debian package that installs system_dirs
    tfds_name: str = ""


DATASETS = {
    "mnist": DatasetSpec(
        name="mnist",
        env_var="SUBLIMINAL_MNIST_DIR",
        # The Google mirror TensorFlow uses, then the one torchvision uses (the original
        # yann.lecun.com site often refuses downloads).
        mirrors=("https://storage.googleapis.com/cvdf-datasets/mnist/",
                 "https://ossci-datasets.s3.amazonaws.com/mnist/"),
        checksums={
            "train-images-idx3-ubyte.gz": ("sha256", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
            "train-labels-idx1-ubyte.gz": ("sha256", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
            "t10k-images-idx3-ubyte.gz": ("sha256", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
            "t10k-labels-idx1-ubyte.gz": ("sha256", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
        },
        # sha256 of the decompressed official files, as several public projects pin them
        content_sha256={
            "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        tfds_name="mnist",
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        env_var="SUBLIMINAL_FASHION_MNIST_DIR",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        # Zalando publishes MD5 sums only. Debian's package recompresses the files, so its
        # .gz bytes differ (same IDX content); see Dataset.source["files"].
        checksums={
            "train-images-idx3-ubyte.gz": ("md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            "train-labels-idx1-ubyte.gz": ("md5", "25c81989df183df01b3e8a0aad5dffbe"),
            "t10k-images-idx3-ubyte.gz": ("md5", "bef4ecab320f06d8554ea6380940ec79"),
            "t10k-labels-idx1-ubyte.gz": ("md5", "bb300cfdad3c16e7a12a480ee83cd310"),
        },
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        system_package="dataset-fashion-mnist",
        tfds_name="fashion_mnist",
    ),
}


@dataclass(frozen=True)
class Dataset:
    """Images as uint8 ``[n, 784]`` (row-major 28x28), labels as int32 ``[n]`` in 0..9."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: dict = field(default_factory=dict)

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the four arrays (shape, dtype, bytes): the data's identity in cache keys,
        the same whichever route (IDX folder, download, tfds) and whichever ``.gz`` bytes gave it."""
        h = hashlib.sha256()
        for a in (self.train_x, self.train_y, self.test_x, self.test_y):
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.data)
        return h.hexdigest()


def _is_official(spec: DatasetSpec, name: str, gz_digest: str, content_sha256: str) -> bool:
    """Official content: the decompressed file's sha256 is the pinned one; where no content
    hash is pinned (Fashion-MNIST), only the published ``.gz`` itself counts."""
    if name in spec.content_sha256:
        return content_sha256 == spec.content_sha256[name]
    return gz_digest == spec.checksums[name][1]


def load_dir(directory: Path | str, dataset: str = "mnist") -> Dataset:
    """Read and validate the four IDX files in ``directory``; record their checksums and whether
    their content is official (see the module docstring)."""
    spec = DATASETS[dataset]
    given, directory = directory, Path(directory).expanduser()  # results record the folder as given (~ kept)
    if not directory.exists():
        raise DataError(f"{directory}: folder not found (a {dataset} folder holds the four IDX .gz files)")
    if not directory.is_dir():
        raise DataError(f"{directory}: not a folder (a {dataset} folder holds the four IDX .gz files)")
    arrays, files = {}, {}
    for (split, kind), name in FILES.items():
        path = directory / name
        if not path.exists():
            raise DataError(f"{path}: file not found (a {dataset} folder needs all four IDX .gz files)")
        array, content = _read_idx(path, *_layout(name))
        if kind == "images":
            arrays[split, kind] = array.reshape(SPLITS[split], 784)
        else:
            labels = array
            if labels.max() > 9:
                raise DataError(f"{path}: label {int(labels.max())} out of range 0..9")
            arrays[split, kind] = labels.astype(np.int32)
        algorithm, official_gz = spec.checksums[name]
        with _gz_errors(path):
            sha256 = _file_hash(path, "sha256")
            digest = sha256 if algorithm == "sha256" else _file_hash(path, algorithm)
        files[name] = {"sha256": sha256, "content_sha256": content, f"official_{algorithm}": official_gz,
                       "official_gz": digest == official_gz, "official": _is_official(spec, name, digest, content)}
        if name in spec.content_sha256:
            files[name]["official_content_sha256"] = spec.content_sha256[name]
    not_official = sorted(n for n, f in files.items() if not f["official"])
    source = {"dataset": dataset, "dir": shown(given), "files": files, "official_content": not not_official}
    readme = directory / "README.md"
    if not_official:
        basis = "content (sha256 of the decompressed file)" if spec.content_sha256 else ".gz file"
        source["note"] = (f"not the official {basis}: {', '.join(not_official)}"
                          + (f" (see {shown(readme)})" if readme.is_file() else ""))
    return Dataset(arrays["train", "images"], arrays["train", "labels"],
                   arrays["test", "images"], arrays["test", "labels"], source)


def with_train_images(base: Dataset, path: Path | str, dataset: str = "mnist") -> Dataset:
    """``base`` with its training images read from another IDX file ``path`` (validated as
    :func:`load_dir` validates; recorded, with whether its content is official, in
    ``source["files"]`` and ``source["train_images"]``): e.g. the earlier, partly rebuilt copy
    of MNIST's training images beside the official one, for a paired comparison."""
    spec, name = DATASETS[dataset], FILES["train", "images"]
    given, path = path, Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: file not found (an IDX training-images .gz file)")
    images, content = _read_idx(path, *_layout(name))
    with _gz_errors(path):
        sha256 = _file_hash(path, "sha256")
        digest = sha256 if spec.checksums[name][0] == "sha256" else _file_hash(path, spec.checksums[name][0])
    record = {"sha256": sha256, "content_sha256": content, "official_gz": digest == spec.checksums[name][1],
              "official": _is_official(spec, name, digest, content)}
    files = {**base.source.get("files", {}), name: record}
    source = {**base.source, "files": files, "train_images": shown(given),
              "official_content": all(f.get("official") for f in files.values())}
    if not record["official"]:
        source["note"] = f"training images from {shown(given)}: not the official content"
    return Dataset(images.reshape(SPLITS["train"], 784), base.train_y, base.test_x, base.test_y, source)


def _home_relative(path) -> str:
    """``path`` with the home folder written ``~`` (as results record the download cache)."""
    p, home = Path(path), Path.home()
    return "~/" + p.relative_to(home).as_posix() if p.is_relative_to(home) else str(path)


def cache_dir(dataset: str) -> Path:
    """Where downloads are kept: ``$XDG_CACHE_HOME/subliminal-verify/<dataset>``."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return root / "subliminal-verify" / dataset


def _verified(spec: DatasetSpec, name: str, path: Path) -> str | None:
    """None when ``path`` is the official file: its ``.gz`` is the published one, or (a mirror
    that recompressed it) its content is; else the one line saying why not."""
    algorithm, official = spec.checksums[name]
    got = _file_hash(path, algorithm)
    if got == official:
        return None
    if name in spec.content_sha256:
        with contextlib.suppress(DataError):
            if _read_idx(path, *_layout(name))[1] == spec.content_sha256[name]:
                return None
    return f"{algorithm} {got} is not the published {official}, nor is its content the official one"


def download(dataset: str, directory: Path) -> Path:
    """Fetch the four official IDX files into ``directory``, each checked before it is kept (the
    published ``.gz`` checksum, or the official content's sha256, see :func:`_verified`)."""
    spec = DATASETS[dataset]
    directory.mkdir(parents=True, exist_ok=True)
    for name in spec.checksums:
        target = directory / name
        if target.is_file() and _verified(spec, name, target) is None:
            continue
        errors = []
        for mirror in spec.mirrors:
            with tempfile.NamedTemporaryFile(dir=directory, delete=False) as tmp:
                try:
                    with urllib.request.urlopen(mirror + name, timeout=60) as response:
                        shutil.copyfileobj(response, tmp)
                except OSError as err:
                    errors.append(f"{mirror + name}: {err}")
                    Path(tmp.name).unlink()
                    continue
            problem = _verified(spec, name, Path(tmp.name))
            if problem is not None:
                Path(tmp.name).unlink()
                errors.append(f"{mirror + name}: {problem}")
                continue
            Path(tmp.name).replace(target)
            break
        else:
            raise DataError(f"{target}: download failed: " + "; ".join(errors)
                            + f" (offline? give --data-dir DIR or set ${spec.env_var} to a folder with the four "
                              "IDX .gz files)")
    return directory


def _tfds_order(split: str, n: int) -> np.ndarray:
    """The IDX index of each record of a tfds split, in tfds' stored order: int ``[n]``.

    tfds' writer stores a split's examples sorted by md5(split name + key) (``tfds.core.hashing``,
    which tfds keeps stable because it fixes every prepared dataset's order), and the MNIST
    builders' key is the example's index in the IDX file. md5 digests compare as bytes in the
    order of tfds' 128-bit integer hash keys.
    """
    return np.array(sorted(range(n), key=lambda i: hashlib.md5(f"{split}{i}".encode()).digest()))


def _load_tfds(dataset: str, data_dir: Path | str | None = None, download: bool = True) -> Dataset:
    """The dataset from tensorflow-datasets' prepared copy, in the IDX files' order.

    Reads tfds' ``array_record`` files with its TensorFlow-free reader (``tfds.data_source``;
    PNG records decoded by PIL) from ``data_dir`` (default: tfds' own, ``$TFDS_DATA_DIR`` or
    ``~/tensorflow_datasets``). With ``download`` and no prepared copy there, tfds first downloads
    the official files (checked against its registered checksums) and builds one, which needs
    TensorFlow (tfds' MNIST builder PNG-encodes each image with it). tfds stores each split in a
    hashed order; the records are put back in the IDX order (:func:`_tfds_order`), so the arrays
    equal :func:`load_dir`'s on the same files: tests/test_data_tfds.py checks this bit for bit on
    a copy tfds builds from the offline IDX files.
    """
    import tensorflow_datasets as tfds

    arrays, where = {}, None
    for split, n in SPLITS.items():
        source = tfds.data_source(DATASETS[dataset].tfds_name, split=split, data_dir=data_dir, download=download)
        where = source.dataset_info.data_dir
        if len(source) != n:
            raise DataError(f"{where}: tfds split {split!r} has {len(source)} records, expected {n}")
        records = source.__getitems__(range(n))  # one batched read: about twice as fast as one by one
        x = np.stack([np.asarray(r["image"], np.uint8).reshape(784) for r in records])
        y = np.asarray([r["label"] for r in records], np.int32)
        if not source.dataset_info.disable_shuffling:
            where_each = np.argsort(_tfds_order(split, n))  # IDX image i is record where_each[i]
            x, y = x[where_each], y[where_each]
        arrays[split] = x, y
    return Dataset(*arrays["train"], *arrays["test"],
                   source={"dataset": dataset, "dir": shown(where), "tfds": tfds.__version__, "files": {}})


def load(dataset: str = "mnist", data_dir: Path | str | None = None, allow_download: bool = True) -> Dataset:
    """The dataset from the first place that has it (see the module docstring for the order).

    Raises :class:`DataError` (one line naming the file or directory) when the files are
    missing, malformed, or cannot be fetched.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    named = data_dir or os.environ.get(spec.env_var)
    if named:
        data = load_dir(named, dataset)
        data.source["origin"] = "--data-dir" if data_dir else f"${spec.env_var}"
        return data
    for d in (*spec.system_dirs, cache_dir(dataset)):
        if all((Path(d) / f).is_file() for f in FILES.values()):
            data = load_dir(d, dataset)
            system = d in spec.system_dirs
            data.source["origin"] = "system copy" if system else "download cache"
            # named without this machine's absolute path: the package, or the cache under ~
            data.source["dir"] = f"Debian package {spec.system_package}" if system else _home_relative(shown(d))
            return data
    if not allow_download:
        raise DataError(f"{cache_dir(dataset)}: no {dataset} files found; pass --data-dir or set ${spec.env_var}")
    try:
        tfds_dir = os.environ.get("SUBLIMINAL_TFDS_DIR")
        data = _load_tfds(dataset, str(Path(tfds_dir).expanduser()) if tfds_dir else None)
        data.source["origin"] = "tensorflow-datasets"
        return data
    except ImportError:
        pass
    except Exception as err:  # tfds installed but cannot read or build it: fetch the IDX files
        warnings.warn(f"tensorflow-datasets could not provide {dataset} ({err}); downloading the IDX files")
    data = load_dir(download(dataset, cache_dir(dataset)), dataset)
    data.source["origin"] = "downloaded, checksums verified"
    return data


def normalize(images: np.ndarray | "jax.Array"):  # noqa: F821
    """uint8 pixels -> float32 in [-1, 1]: ``(x / 255 - 0.5) / 0.5``, as the official script's
    ``ToTensor`` + ``Normalize((0.5,), (0.5,))``. Works on numpy and jax arrays."""
    return (images.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)
