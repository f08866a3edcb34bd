"""Model signatures and input validation. Pure: values in, columns (or a ``ValidationError``) out.

A signature is the ordered list of input columns a model was trained on, with Open Inference
Protocol datatypes. Requests arrive as JSON records (``[{"f0": 1.5, ...}]``) or as OIP v2
tensors; both are checked against the signature and turned into columns (name -> list), the
form every model and the decoy see.
"""

from __future__ import annotations

import enum
import functools
import re
import reprlib
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import numpy as np

from rendezvous.errors import ValidationError

MAX_PROBLEMS = 10  # keep error bodies short on large bad batches


class Datatype(enum.StrEnum):
    FP64 = "FP64"
    FP32 = "FP32"
    INT64 = "INT64"
    INT32 = "INT32"
    BOOL = "BOOL"
    BYTES = "BYTES"


_NUMPY = {
    Datatype.FP64: np.float64, Datatype.FP32: np.float32, Datatype.INT64: np.int64,
    Datatype.INT32: np.int32, Datatype.BOOL: np.bool_, Datatype.BYTES: object,
}


class Column(msgspec.Struct, frozen=True):
    name: str
    datatype: Datatype


class Signature(msgspec.Struct, frozen=True):
    inputs: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return list(_names(self))

    def numpy_dtype(self, name: str) -> Any:
        for c in self.inputs:
            if c.name == name:
                return _NUMPY[c.datatype]
        raise KeyError(name)


@functools.lru_cache(maxsize=256)
def _names(sig: Signature) -> tuple[str, ...]:
    return tuple(c.name for c in sig.inputs)


def _datatype_of(dtype: Any) -> Datatype:
    kind = np.dtype(dtype).kind
    if kind == "f":
        return Datatype.FP32 if np.dtype(dtype).itemsize == 4 else Datatype.FP64
    if kind in "iu":
        return Datatype.INT32 if np.dtype(dtype).itemsize <= 4 else Datatype.INT64
    if kind == "b":
        return Datatype.BOOL
    return Datatype.BYTES


def infer_signature(example: Any) -> Signature:
    """Signature from training data: a 2-D array (columns ``f0..fN``), a mapping of column
    name to values, or a DataFrame-like object with ``columns`` and ``dtypes``.

    >>> infer_signature(np.zeros((3, 2))).names
    ['f0', 'f1']
    """
    if hasattr(example, "columns") and hasattr(example, "dtypes"):
        return Signature(tuple(Column(str(c), _datatype_of(t))
                               for c, t in zip(example.columns, example.dtypes, strict=True)))
    if isinstance(example, Mapping):
        return Signature(tuple(Column(str(k), _datatype_of(np.asarray(v).dtype))
                               for k, v in example.items()))
    arr = np.asarray(example)
    if arr.ndim != 2:
        raise ValidationError(
            f"cannot infer a signature from an array of shape {arr.shape}; pass 2-D training "
            "data (rows x features) or a mapping of column name to values"
        )
    dt = _datatype_of(arr.dtype)
    return Signature(tuple(Column(f"f{i}", dt) for i in range(arr.shape[1])))



def example_columns(example: Any, sig: Signature, *, rows: int = 8) -> dict[str, list[Any]]:
    """The first ``rows`` rows of training data as columns named by ``sig``: what registration
    records so that a model host can warm a model up before it takes traffic.

    >>> example_columns(np.arange(6.0).reshape(3, 2), infer_signature(np.zeros((1, 2))), rows=2)
    {'f0': [0.0, 2.0], 'f1': [1.0, 3.0]}
    """
    if hasattr(example, "columns") and hasattr(example, "iloc"):
        head = example.iloc[:rows]
        return {c.name: head[c.name].tolist() for c in sig.inputs}
    if isinstance(example, Mapping):
        return {c.name: np.asarray(example[c.name])[:rows].tolist() for c in sig.inputs}
    arr = np.asarray(example)[:rows]
    return {c.name: arr[:, i].tolist() for i, c in enumerate(sig.inputs)}

_LIST_OF = {
    Datatype.FP64: list[float], Datatype.FP32: list[float], Datatype.INT64: list[int],
    Datatype.INT32: list[int], Datatype.BOOL: list[bool], Datatype.BYTES: list[str],
}
_INDEX = re.compile(r"\$\[(\d+)\]")


_REPR = reprlib.Repr()  # keyword arguments only from Python 3.12
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 40, 40


def _describe(value: Any) -> str:
    # reprlib: bounded depth and length, so a deeply nested value cannot blow the stack.
    return f"{type(value).__name__} {_REPR.repr(value)[:40]}"


def _typed(values: list[Any], dt: Datatype, where: str, problems: list[str], *,
           strict: bool = True) -> list[Any]:
    """``values`` checked (in C, by msgspec) to be of ``dt``; ints widen to floats (and, when
    not ``strict``, text parses as numbers and booleans). A wrong value is reported as
    ``<where with {i} filled in>: expected DT, got TYPE VALUE``."""
    try:
        checked: list[Any] = msgspec.convert(values, _LIST_OF[dt], strict=strict)
        return checked
    except msgspec.ValidationError as exc:
        m = _INDEX.search(str(exc))
        i = int(m.group(1)) if m else 0
        bad = values[i] if i < len(values) else None
        problems.append(f"{where.format(i=i)}: expected {dt.value}, got {_describe(bad)}")
        return values


def columns_from_records(records: Any, sig: Signature) -> tuple[dict[str, list[Any]], int]:
    """Validate ``[{"col": value, ...}, ...]`` and return (columns, n_rows)."""
    if not isinstance(records, list) or not records:
        raise ValidationError(
            "expected a non-empty JSON list of records, e.g. "
            f'[{{"{sig.names[0] if sig.inputs else "x"}": 1.0, ...}}]'
        )
    names = sig.names
    expected = set(names)
    problems: list[str] = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            problems.append(f"record {i}: expected an object, got {_describe(rec)}")
        elif rec.keys() != expected:
            missing = [n for n in names if n not in rec]
            extra = sorted(k for k in rec if k not in expected)
            if missing:
                problems.append(f"record {i}: missing columns {missing}")
            if extra:
                problems.append(f"record {i}: unknown columns {extra}; expected {names}")
        if len(problems) >= MAX_PROBLEMS:
            break
    if problems:
        raise ValidationError("input does not match the deployment's signature", problems)
    cols = {c.name: _typed([r[c.name] for r in records], c.datatype,
                           f"record {{i}}, column {c.name!r}", problems)
            for c in sig.inputs}
    if problems:
        raise ValidationError("input does not match the deployment's signature",
                              problems[:MAX_PROBLEMS])
    return cols, len(records)


class InferInput(msgspec.Struct, kw_only=True):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] = {}


class InferRequest(msgspec.Struct, kw_only=True):
    inputs: list[InferInput]
    id: str | None = None
    parameters: dict[str, Any] = {}
    outputs: list[dict[str, Any]] = []


def _flatten(data: list[Any]) -> list[Any]:
    """Rows of a 2-D tensor as one flat list. One level only (shapes have at most two
    dimensions): anything nested deeper stays a list, and the type check reports it."""
    if data and isinstance(data[0], list):
        out: list[Any] = []
        for row in data:
            if isinstance(row, list):
                out.extend(row)
            else:
                out.append(row)
        return out
    return data


def columns_from_oip(req: InferRequest, sig: Signature) -> tuple[dict[str, list[Any]], int]:
    """Validate an Open Inference Protocol v2 request.

    Two layouts are accepted: one input per signature column, each of shape ``[n]`` or
    ``[n, 1]``; or a single input of shape ``[n, k]`` whose k columns follow the signature order.
    """
    problems: list[str] = []
    if not req.inputs:
        raise ValidationError("the request has no inputs", [f"expected columns {sig.names}"])
    if len(req.inputs) == 1 and req.inputs[0].name not in sig.names and (
        len(sig.inputs) > 1 or len(req.inputs[0].shape) == 2
    ):
        return _columns_from_matrix(req.inputs[0], sig)
    by_name = {i.name: i for i in req.inputs}
    missing = [n for n in sig.names if n not in by_name]
    extra = sorted(n for n in by_name if n not in set(sig.names))
    if missing:
        problems.append(f"missing inputs {missing}")
    if extra:
        problems.append(f"unknown inputs {extra}; expected {sig.names}")
    n_rows: int | None = None
    cols: dict[str, list[Any]] = {}
    for c in sig.inputs:
        inp = by_name.get(c.name)
        if inp is None:
            continue
        if inp.datatype != c.datatype.value:
            problems.append(
                f"input {c.name!r}: datatype {inp.datatype!r} does not match the signature's "
                f"{c.datatype.value!r}"
            )
            continue
        if not inp.shape or len(inp.shape) > 2 or (len(inp.shape) == 2 and inp.shape[1] != 1):
            problems.append(f"input {c.name!r}: shape {inp.shape} must be [n] or [n, 1]")
            continue
        values = _flatten(inp.data)
        if len(values) != inp.shape[0]:
            problems.append(
                f"input {c.name!r}: shape {inp.shape} says {inp.shape[0]} values, "
                f"data has {len(values)}"
            )
            continue
        if n_rows is None:
            n_rows = inp.shape[0]
        elif n_rows != inp.shape[0]:
            problems.append(f"input {c.name!r}: {inp.shape[0]} rows, other inputs have {n_rows}")
        cols[c.name] = _typed(values, c.datatype, f"input {c.name!r} row {{i}}", problems)
    if problems:
        raise ValidationError("input does not match the deployment's signature", problems)
    if not n_rows:
        raise ValidationError("the request has no rows", ["every input has shape [0]"])
    return cols, n_rows


def _columns_from_matrix(inp: InferInput, sig: Signature) -> tuple[dict[str, list[Any]], int]:
    k = len(sig.inputs)
    if len(inp.shape) != 2 or inp.shape[1] != k or inp.shape[0] < 1:
        raise ValidationError(
            "input does not match the deployment's signature",
            [f"input {inp.name!r}: shape {inp.shape} must be [n, {k}] with columns {sig.names}, "
             f"or send one input per column"],
        )
    values = _flatten(inp.data)
    n = inp.shape[0]
    if len(values) != n * k:
        raise ValidationError(
            "input does not match the deployment's signature",
            [f"input {inp.name!r}: shape {inp.shape} needs {n * k} values, data has "
             f"{len(values)}"],
        )
    dtypes = {c.datatype for c in sig.inputs}
    if len(dtypes) == 1 and inp.datatype != next(iter(dtypes)).value:
        raise ValidationError(
            "input does not match the deployment's signature",
            [f"input {inp.name!r}: datatype {inp.datatype!r} does not match the signature's "
             f"{next(iter(dtypes)).value!r}"],
        )
    cols: dict[str, list[Any]] = {}
    problems: list[str] = []
    if len(dtypes) == 1:  # the usual case: check the whole tensor at once, then cut columns
        values = _typed(values, next(iter(dtypes)), f"input {inp.name!r} value {{i}}",
                        problems)
        if problems:
            raise ValidationError("input does not match the deployment's signature", problems)
        return {c.name: values[j::k] for j, c in enumerate(sig.inputs)}, n
    for j, c in enumerate(sig.inputs):
        cols[c.name] = _typed(values[j::k], c.datatype, f"column {c.name!r} row {{i}}", problems)
    if problems:
        raise ValidationError("input does not match the deployment's signature", problems)
    return cols, n


def to_matrix(columns: Mapping[str, Sequence[Any] | np.ndarray], sig: Signature) -> np.ndarray:
    """Columns in signature order as one 2-D array (what most frameworks predict on)."""
    dts = {_NUMPY[c.datatype] for c in sig.inputs}
    dtype = dts.pop() if len(dts) == 1 else object
    return np.array([columns[n] for n in sig.names], dtype=dtype).T


def columns_from_mapping(columns: Any, sig: Signature, *, strict: bool = True
                         ) -> tuple[dict[str, list[Any]], int]:
    """Validate columns given by name (``{"x": [1.0, 2.0], "y": [...]}``) and return
    (columns, n_rows). ``strict=False`` also parses numbers and booleans written as text, as
    a CSV body carries them.

    >>> columns_from_mapping({"a": [1, 2]}, Signature((Column("a", Datatype.FP64),)))
    ({'a': [1.0, 2.0]}, 2)
    """
    names = sig.names
    if not isinstance(columns, Mapping) or not columns:
        raise ValidationError(f"expected an object of columns, e.g. {{\"{names[0]}\": [...]}}"
                              if names else "expected an object of columns")
    problems: list[str] = []
    missing = [n for n in names if n not in columns]
    extra = sorted(str(k) for k in columns if k not in set(names))
    if missing:
        problems.append(f"missing columns {missing}")
    if extra:
        problems.append(f"unknown columns {extra}; expected {names}")
    lengths = {n: len(v) if isinstance(v, list) else -1 for n, v in columns.items()}
    problems += [f"column {n!r}: expected a list of values" for n, k in lengths.items() if k < 0]
    if problems:
        raise ValidationError("input does not match the deployment's signature", problems)
    n_rows = lengths[names[0]]
    uneven = [f"column {n!r}: {k} rows, column {names[0]!r} has {n_rows}"
              for n, k in lengths.items() if k != n_rows]
    if uneven or not n_rows:
        raise ValidationError("input does not match the deployment's signature",
                              uneven[:MAX_PROBLEMS] or ["the columns hold no rows"])
    cols = {}
    for c in sig.inputs:
        cols[c.name] = _typed(columns[c.name], c.datatype, f"column {c.name!r} row {{i}}",
                              problems, strict=strict)
    if problems:
        raise ValidationError("input does not match the deployment's signature",
                              problems[:MAX_PROBLEMS])
    return cols, n_rows

