"""The IDX files of MNIST and Fashion-MNIST: each read from its ``.gz`` file and checked as it is read.

:func:`read_idx` decompresses a file as a stream and checks everything a damaged or hostile copy
can get wrong before it trusts it: a regular file (by ``os.stat`` before it is opened, so a FIFO
cannot block), gzip integrity, the IDX magic number, the shape, the payload length; it never
decompresses past the size the header must give, so a gzip bomb costs no more memory than a valid
file. Every problem raises :class:`DataError` with one line that names the file. This module knows
the four files' names and shapes (:data:`FILES`, :data:`SPLITS`) but not where a copy comes from or
whether it is the official one: :mod:`mnist_aux.data` decides that, from these checksums.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import stat
import zlib
from pathlib import Path

import numpy as np

IMAGE_MAGIC = 0x00000803  # IDX: unsigned byte, 3 dimensions
LABEL_MAGIC = 0x00000801  # IDX: unsigned byte, 1 dimension
SPLITS = {"train": 60_000, "test": 10_000}
FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}


class DataError(Exception):
    """A data file is missing, unreadable or malformed; the message names the file."""


@contextlib.contextmanager
def _gz_errors(path: Path):
    """Turn every way of failing to read ``path`` as gzip into one :class:`DataError` line."""
    try:
        yield
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied (cannot read the file)") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a .gz file") from None
    except EOFError:
        raise DataError(f"{path}: truncated (the gzip stream ends early); download it again") from None
    except (gzip.BadGzipFile, zlib.error, OSError) as err:
        raise DataError(f"{path}: corrupted, not a readable gzip file ({err})") from None


def _regular(path: Path) -> None:
    """Check with ``os.stat``, before opening, that ``path`` is a regular file: opening a FIFO for
    reading blocks until someone writes to it (forever), and a device may never end."""
    with _gz_errors(path):
        mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        raise DataError(f"{path}: is a folder, expected a .gz file")
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: not a regular file (a FIFO, socket or device); expected a .gz file")


def _read_exactly(fh, n: int) -> bytes:
    """Up to ``n`` decompressed bytes (fewer only at the end of the stream)."""
    parts, left = [], n
    while left:
        block = fh.read(min(left, 1 << 24))
        if not block:
            break
        parts.append(block)
        left -= len(block)
    return b"".join(parts)


def read_idx(path: Path, magic: int, dims: tuple[int, ...]) -> np.ndarray:
    """The uint8 array of an IDX ``.gz`` file, checked against ``magic`` and ``dims``.

    ``dims`` are the expected sizes (e.g. ``(60000, 28, 28)``). The file is decompressed as a
    stream and never past the size the header must give (a gzip bomb costs no more memory
    than a valid file). Raises :class:`DataError` naming ``path`` on a bad gzip stream, a
    wrong magic number, other dimensions, or a payload shorter or longer than the header says.
    """
    return _read_idx(path, magic, dims)[0]


def _read_idx(path: Path, magic: int, dims: tuple[int, ...]) -> tuple[np.ndarray, str]:
    """:func:`read_idx`'s array and the sha256 of the whole decompressed file (header and
    payload: the file is exactly those bytes, as the last check makes sure)."""
    header = 4 + 4 * len(dims)
    want = int(np.prod(dims))
    _regular(path)
    with _gz_errors(path), gzip.open(path, "rb") as fh:
        head = _read_exactly(fh, header)
        if len(head) < header:
            raise DataError(f"{path}: truncated, {len(head)} bytes is shorter than the IDX header")
        found = int.from_bytes(head[:4], "big")
        if found != magic:
            raise DataError(f"{path}: wrong magic number 0x{found:08x}, expected 0x{magic:08x} "
                            f"(IDX unsigned-byte, {len(dims)}-d); is this the right file?")
        shape = tuple(int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(len(dims)))
        if shape != tuple(dims):
            raise DataError(f"{path}: header says shape {shape}, expected {tuple(dims)}")
        payload = _read_exactly(fh, want)
        if len(payload) < want:
            raise DataError(f"{path}: truncated, {len(payload)} data bytes where the header needs {want}")
        if fh.read(1):  # reaching the end also checks the gzip CRC; a longer stream is not read on
            raise DataError(f"{path}: unexpected bytes after the {want} data bytes the header gives")
    content = hashlib.sha256(head)
    content.update(payload)
    return np.frombuffer(payload, np.uint8).reshape(dims), content.hexdigest()


def _file_hash(path: Path, algorithm: str) -> str:
    _regular(path)
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _layout(name: str) -> tuple[int, tuple[int, ...]]:
    """``(magic, dims)`` of one of the four :data:`FILES`."""
    split, kind = next(k for k, v in FILES.items() if v == name)
    n = SPLITS[split]
    return (IMAGE_MAGIC, (n, 28, 28)) if kind == "images" else (LABEL_MAGIC, (n,))
