"""Each contender's native single-row request body. Pure: a row in, JSON bytes out.

>>> oip_v2([0.5, 1.0])
b'{"inputs":[{"name":"input-0","shape":[1,2],"datatype":"FP64","data":[0.5,1.0]}]}'
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Callable, Sequence


class Wire(enum.Enum):
    """The request format a contender speaks."""

    OIP_V2 = "oip-v2"  # Open Inference Protocol v2 (MLServer, Rendezvous)
    MLFLOW = "mlflow"  # MLflow scoring server: pandas dataframe_split
    FASTAPI = "fastapi"  # the hand-written baseline's own JSON
    OIP_GRPC = "oip-grpc"  # OIP v2 gRPC ModelInfer, raw tensor bytes (what tritonclient sends)


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def oip_v2(row: Sequence[float]) -> bytes:
    """``{"inputs":[{"name":"input-0","shape":[1,N],"datatype":"FP64","data":[...]}]}``."""
    return _dumps({"inputs": [
        {"name": "input-0", "shape": [1, len(row)], "datatype": "FP64", "data": list(row)}
    ]})


def mlflow_split(row: Sequence[float], columns: Sequence[str]) -> bytes:
    """``{"dataframe_split": {"columns": [...], "data": [[...]]}}``."""
    if len(columns) != len(row):
        raise ValueError(f"{len(columns)} column names for a row of {len(row)} values")
    return _dumps({"dataframe_split": {"columns": list(columns), "data": [list(row)]}})


def fastapi(row: Sequence[float]) -> bytes:
    """``{"features": [...]}``, what ``bench.fastapi_app`` accepts."""
    return _dumps({"features": list(row)})


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def oip_grpc(row: Sequence[float], model: str) -> bytes:
    """A gRPC message (5-byte frame header, then the protobuf) of ``ModelInferRequest``: one
    ``input-0`` FP64 tensor of shape ``[1, N]`` in ``raw_input_contents``. Encoded by hand,
    so that the harness needs no protobuf; ``tests/test_grpc.py`` decodes it with the stubs.
    """
    shape = b"".join(_varint(d) for d in (1, len(row)))
    tensor = _field(1, b"input-0") + _field(2, b"FP64") + _field(3, shape)
    message = (_field(1, model.encode()) + _field(5, tensor)
               + _field(7, struct.pack(f"<{len(row)}d", *row)))
    return b"\x00" + len(message).to_bytes(4, "big") + message


_ENCODERS: dict[Wire, Callable[[Sequence[float], Sequence[str], str], bytes]] = {
    Wire.OIP_V2: lambda row, _columns, _model: oip_v2(row),
    Wire.MLFLOW: lambda row, columns, _model: mlflow_split(row, columns),
    Wire.FASTAPI: lambda row, _columns, _model: fastapi(row),
    Wire.OIP_GRPC: lambda row, _columns, model: oip_grpc(row, model),
}


def body(wire: Wire, row: Sequence[float], *, columns: Sequence[str], model: str = "") -> bytes:
    """The request body for ``row`` in ``wire`` format (``model``: the deployment, for wires
    that carry it in the body rather than in the URL)."""
    return _ENCODERS[wire](row, columns, model)
