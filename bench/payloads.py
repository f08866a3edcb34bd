"""Each contender's native single-row request body. Pure: a row in, JSON bytes out.

>>> oip_v2([0.5, 1.0])
b'{"inputs":[{"name":"input-0","shape":[1,2],"datatype":"FP64","data":[0.5,1.0]}]}'
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Sequence


class Wire(enum.Enum):
    """The request format a contender speaks."""

    OIP_V2 = "oip-v2"  # Open Inference Protocol v2 (MLServer, Rendezvous)
    MLFLOW = "mlflow"  # MLflow scoring server: pandas dataframe_split
    FASTAPI = "fastapi"  # the hand-written baseline's own JSON


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


_ENCODERS: dict[Wire, Callable[[Sequence[float], Sequence[str]], bytes]] = {
    Wire.OIP_V2: lambda row, _columns: oip_v2(row),
    Wire.MLFLOW: mlflow_split,
    Wire.FASTAPI: lambda row, _columns: fastapi(row),
}


def body(wire: Wire, row: Sequence[float], *, columns: Sequence[str]) -> bytes:
    """The request body for ``row`` in ``wire`` format."""
    return _ENCODERS[wire](row, columns)
