"""The bounded reader of a GGUF file's header, which :func:`llm_bridge.loading.gguf.read` opens
every file with: ``gguf.GGUFReader`` with its metadata parsed by :class:`_Metadata` instead of the
package's field parser (which builds a numpy view per array element, 4 GB for a 3-million-string
array), its tensor count and each tensor's dimensions checked before the tensor table is read.
Every count is checked against the bytes left in the file (:class:`_Corrupt` when they cannot hold
it) and against the limits below, the table of :mod:`llm_bridge.loading.gguf`'s docstring
(:class:`_Refused` past one), before anything of that size is read or allocated; ``read`` reports
either as a one-line :class:`~llm_bridge.loading.gguf.GGUFError` naming the file.
"""

from __future__ import annotations

import struct
import sys

import numpy as np

MAX_KEYS = 4_096
MAX_KEY_BYTES = 65_535
MAX_ARRAY_ITEMS = 1 << 20
MAX_METADATA_ITEMS = 1 << 22
MAX_METADATA_BYTES = 64 << 20
MAX_ARRAY_NESTING = 4
MAX_TENSORS = 65_536
MAX_DIMS = 4


class _Refused(Exception):
    """A bound of the metadata reader; :func:`llm_bridge.loading.gguf.read` reports it as a
    :class:`~llm_bridge.loading.gguf.GGUFError` naming the file."""


class _Corrupt(_Refused):
    """A header that cannot be a GGUF file's: it declares more than the bytes left can hold, an unknown
    value type, a key twice, text that is not UTF-8 (truncated or corrupt)."""


# GGUFValueType -> struct code (scalars) and numpy dtype (arrays); 8 = STRING, 9 = ARRAY
_STRUCT = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY, _UINT32 = 8, 9, 4


class _Metadata:
    """A bounded parse of a GGUF file's key-value section (``buf``: the file's bytes, memory-mapped).

    Every length and count is checked against the bytes left in the file and against the limits
    of :mod:`llm_bridge.loading.gguf`'s docstring before anything of that size is read or
    allocated; :class:`_Refused` says which. Values are Python scalars, strings and (nested)
    lists, as ``ReaderField.contents`` gives them.
    """

    def __init__(self, buf, order: str):
        self.buf, self.order, self.items = buf, order, 0
        self.types: dict[str, int] = {}

    def _unpack(self, code: str, pos: int, what: str):
        n = struct.calcsize(code)
        if pos + n > len(self.buf):
            raise _Corrupt(f"ends inside {what}")
        return struct.unpack_from(self.order + code, self.buf, pos)[0], pos + n

    def _string(self, pos: int, what: str, limit: int) -> tuple[str, int]:
        n, pos = self._unpack("Q", pos, what)
        if pos + n > len(self.buf):
            raise _Corrupt(f"{what} declares a string of {n:,} bytes; the file has {len(self.buf) - pos:,} left")
        if n > limit:
            raise _Refused(f"{what} declares a string of {n:,} bytes; at most {limit:,} are read")
        try:
            return str(self.buf[pos:pos + n], "utf-8"), pos + n
        except UnicodeDecodeError:
            raise _Corrupt(f"{what} is not UTF-8 text") from None

    def value(self, kind: int, pos: int, what: str, level: int = 0):
        if kind in _STRUCT:
            return self._unpack(_STRUCT[kind], pos, what)
        if kind == _STRING:
            return self._string(pos, what, MAX_METADATA_BYTES)
        if kind != _ARRAY:
            raise _Corrupt(f"{what} has unknown value type {kind}")
        if level >= MAX_ARRAY_NESTING:
            raise _Refused(f"{what} nests arrays more than {MAX_ARRAY_NESTING} deep")
        item, pos = self._unpack("I", pos, what)
        n, pos = self._unpack("Q", pos, what)
        smallest = struct.calcsize(_STRUCT[item]) if item in _STRUCT else 8 if item == _STRING else 12
        if n > MAX_ARRAY_ITEMS:
            raise _Refused(f"{what} is an array of {n:,} items; at most {MAX_ARRAY_ITEMS:,} are read "
                           "(the largest vocabularies have about 262,000 tokens)")
        if n * smallest > len(self.buf) - pos:
            raise _Corrupt(f"{what} declares {n:,} items; the {len(self.buf) - pos:,} bytes left cannot hold them")
        self.items += n
        if self.items > MAX_METADATA_ITEMS:
            raise _Refused(f"the metadata arrays hold more than {MAX_METADATA_ITEMS:,} items in all")
        if item in _STRUCT:
            dtype = np.dtype(_STRUCT[item] if item != 7 else "u1").newbyteorder(self.order)
            values = np.frombuffer(self.buf, dtype, count=n, offset=pos).tolist()
            return ([bool(v) for v in values] if item == 7 else values), pos + n * dtype.itemsize
        out = []
        for i in range(n):
            v, pos = self.value(item, pos, what, level + 1)
            out.append(v)
        return out, pos

    def read(self, pos: int, count: int) -> tuple[dict, int]:
        """``({key: value}, offset after the section)`` of ``count`` key-value pairs starting at ``pos``."""
        if count > MAX_KEYS:
            raise _Refused(f"declares {count:,} metadata keys; at most {MAX_KEYS:,} are read")
        if count * 13 > len(self.buf) - pos:  # a key-value pair takes at least 13 bytes
            raise _Corrupt(f"declares {count:,} metadata keys; the file is too short to hold them")
        start, out = pos, {}
        for i in range(count):
            key, pos = self._string(pos, f"metadata key #{i}", MAX_KEY_BYTES)
            kind, pos = self._unpack("I", pos, f"metadata {key}")
            out_value, pos = self.value(kind, pos, f"metadata {key}")
            if key in out:
                raise _Corrupt(f"metadata {key} appears twice")
            out[key], self.types[key] = out_value, kind
            if pos - start > MAX_METADATA_BYTES:
                raise _Refused(f"the metadata section passes {MAX_METADATA_BYTES >> 20} MiB")
        return out, pos


def _reader_class():
    """``GGUFReader`` with the bounded metadata parser (imported lazily, as the gguf package is)."""
    from gguf import GGUFReader, GGUFValueType
    from gguf.gguf_reader import ReaderField

    class _BoundedReader(GGUFReader):
        """``gguf.GGUFReader`` with its metadata parsed by :class:`_Metadata` (``self.values``) and its
        tensor count checked before the tensor table is read; tensors are read as the package reads them."""

        def _build_fields(self, offs: int, count: int) -> int:
            order = "<" if (sys.byteorder == "little") == (self.byte_order == "I") else ">"
            parser = _Metadata(memoryview(self.data), order)
            self.values, end = parser.read(int(offs), int(count))
            if "general.alignment" in self.values:  # the one field GGUFReader reads itself
                kind = GGUFValueType(parser.types["general.alignment"])
                part = np.array([self.values["general.alignment"] if kind == _UINT32 else 0], np.uint32)
                self._push_field(ReaderField(int(offs), "general.alignment", [part], [0], [kind]), skip_sum=True)
            return end

        def _build_tensor_info(self, offs: int, count: int):
            count = int(count)
            if count > MAX_TENSORS:
                raise _Refused(f"declares {count:,} tensors; at most {MAX_TENSORS:,} are read")
            if count * 24 > len(self.data) - offs:  # a tensor's entry takes at least 24 bytes
                raise _Corrupt(f"declares {count:,} tensors; the file is too short to hold their table")
            return super()._build_tensor_info(offs, count)

        def _get_tensor_info_field(self, orig_offs: int):
            field = super()._get_tensor_info_field(orig_offs)
            if int(field.parts[2][0]) > MAX_DIMS:
                raise _Refused(f"tensor {str(bytes(field.parts[1]), 'utf-8', 'replace')[:100]!r} has "
                               f"{int(field.parts[2][0]):,} dimensions; ggml allows {MAX_DIMS}")
            return field

    return _BoundedReader
