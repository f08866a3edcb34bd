"""Open Inference Protocol tensors on the wire, pure: raw (binary) tensor bytes to values and
back, and an output column described as an OIP tensor (datatype, shape, flat data).

Raw tensors are what the binary data extension of the REST protocol and the
``raw_input_contents`` / ``raw_output_contents`` fields of gRPC carry: the flat, row-major,
little-endian elements; a BYTES element is a 4-byte little-endian length and then its bytes.

>>> decode_raw("x", "FP64", [2], encode_raw([1.5, 2.0], "FP64"))
[1.5, 2.0]
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from rendezvous.errors import ValidationError

# Little-endian numpy dtypes of the fixed-size OIP datatypes.
DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code) for name, code in {
        "BOOL": "?", "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
        "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
        "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
    }.items()
}
_LEN = struct.Struct("<I")


def _bad(name: str, problem: str) -> ValidationError:
    return ValidationError("input does not match its binary data", [f"input {name!r}: {problem}"])


def decode_raw(name: str, datatype: str, shape: list[int], raw: bytes | memoryview) -> list[Any]:
    """The flat values of input ``name`` from its raw bytes, checked against ``shape``.

    BYTES elements come back as ``str`` (UTF-8), the form signatures and models see.
    """
    count = math.prod(shape) if shape else 0
    if datatype == "BYTES":
        return _decode_bytes(name, count, raw)
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise _bad(name, f"datatype {datatype!r} is not an OIP datatype; use one of "
                         f"{[*DTYPES, 'BYTES']}")
    if len(raw) != count * dtype.itemsize:
        raise _bad(name, f"shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, "
                         f"got {len(raw)}")
    values: list[Any] = np.frombuffer(raw, dtype=dtype).tolist()
    return values


def _decode_bytes(name: str, count: int, raw: bytes | memoryview) -> list[Any]:
    view = memoryview(raw)
    out: list[Any] = []
    pos = 0
    while pos < len(view):
        if pos + 4 > len(view):
            raise _bad(name, f"BYTES element {len(out)} has a truncated 4-byte length")
        (size,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + size > len(view):
            raise _bad(name, f"BYTES element {len(out)} says {size} bytes, "
                             f"{len(view) - pos} remain")
        chunk = bytes(view[pos:pos + size])
        pos += size
        try:
            out.append(chunk.decode())
        except UnicodeDecodeError:
            raise _bad(name, f"BYTES element {len(out)} is not UTF-8 text") from None
    if len(out) != count:
        raise _bad(name, f"the shape says {count} elements, the binary data holds {len(out)}")
    return out


def encode_raw(flat: list[Any], datatype: str) -> bytes:
    """Raw bytes of ``flat`` values as ``datatype`` (the inverse of :func:`decode_raw`)."""
    if datatype == "BYTES":
        parts = []
        for v in flat:
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(_LEN.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.asarray(flat, dtype=DTYPES[datatype]).tobytes()


def datatype_of(values: list[Any]) -> str:
    """The OIP datatype of a (possibly nested) list of Python values, from its first element."""
    v: Any = values
    while v and isinstance(v, list):
        v = v[0]
    if isinstance(v, bool):
        return "BOOL"
    if isinstance(v, int):
        return "INT64"
    if isinstance(v, float):
        return "FP64"
    return "BYTES"


def shape_of(values: list[Any]) -> list[int]:
    shape = [len(values)]
    v = values
    while v and isinstance(v[0], list):
        v = v[0]
        shape.append(len(v))
    return shape


def flat(values: list[Any]) -> list[Any]:
    if values and isinstance(values[0], list):
        return [x for row in values for x in flat(row)]
    return values


class Tensor:
    """An output column as an OIP tensor: ``name``, ``datatype``, ``shape``, flat ``data``."""

    __slots__ = ("data", "datatype", "name", "shape")

    def __init__(self, name: str, values: list[Any]) -> None:
        self.name = name
        self.datatype = datatype_of(values)
        self.shape = shape_of(values)
        self.data = flat(values)

    def raw(self) -> bytes:
        return encode_raw(self.data, self.datatype)
