"""Signature inference and input validation (pure)."""

from __future__ import annotations

import numpy as np
import pytest

from rendezvous.core.schema import (
    Column,
    Datatype,
    InferInput,
    InferRequest,
    Signature,
    columns_from_oip,
    columns_from_records,
    infer_signature,
    to_matrix,
)
from rendezvous.errors import ValidationError

SIG = Signature((Column("a", Datatype.FP64), Column("b", Datatype.INT64)))


def test_infer_from_array_and_mapping() -> None:
    assert infer_signature(np.zeros((2, 3), dtype=np.float32)).inputs == tuple([
        Column(f"f{i}", Datatype.FP32) for i in range(3)])
    sig = infer_signature({"a": np.array([1.0]), "b": np.array([1]), "c": np.array(["s"])})
    assert [c.datatype for c in sig.inputs] == [Datatype.FP64, Datatype.INT64, Datatype.BYTES]
    with pytest.raises(ValidationError, match="2-D"):
        infer_signature(np.zeros(3))


def test_records_ok() -> None:
    cols, n = columns_from_records([{"a": 1.5, "b": 2}, {"a": 3, "b": 4}], SIG)
    assert n == 2 and cols == {"a": [1.5, 3], "b": [2, 4]}
    assert to_matrix(cols, SIG).shape == (2, 2)


@pytest.mark.parametrize(("records", "fragment"), [
    ({"a": 1}, "non-empty JSON list"),
    ([], "non-empty JSON list"),
    (["x"], "record 0: expected an object"),
    ([{"a": 1.0}], "missing columns ['b']"),
    ([{"a": 1.0, "b": 1, "c": 2}], "unknown columns ['c']"),
    ([{"a": "1.0", "b": 1}], "column 'a': expected FP64, got str"),
    ([{"a": 1.0, "b": 1.5}], "column 'b': expected INT64, got float"),
    ([{"a": True, "b": 1}], "expected FP64, got bool"),
])
def test_records_errors_name_the_field(records: object, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        columns_from_records(records, SIG)
    assert fragment in str(info.value)


def oip(*inputs: InferInput) -> InferRequest:
    return InferRequest(inputs=list(inputs))


def test_oip_per_column_and_matrix() -> None:
    cols, n = columns_from_oip(oip(InferInput(name="a", shape=[2], datatype="FP64",
                                              data=[1.0, 2.0]),
                                   InferInput(name="b", shape=[2, 1], datatype="INT64",
                                              data=[[1], [2]])), SIG)
    assert n == 2 and cols == {"a": [1.0, 2.0], "b": [1, 2]}
    fsig = Signature((Column("x", Datatype.FP64), Column("y", Datatype.FP64)))
    cols, n = columns_from_oip(oip(InferInput(name="input-0", shape=[2, 2], datatype="FP64",
                                              data=[1.0, 2.0, 3.0, 4.0])), fsig)
    assert n == 2 and cols == {"x": [1.0, 3.0], "y": [2.0, 4.0]}


@pytest.mark.parametrize(("inputs", "fragment"), [
    ([InferInput(name="a", shape=[1], datatype="FP64", data=[1.0])], "missing inputs ['b']"),
    ([InferInput(name="a", shape=[1], datatype="FP32", data=[1.0]),
      InferInput(name="b", shape=[1], datatype="INT64", data=[1])], "datatype 'FP32'"),
    ([InferInput(name="a", shape=[2], datatype="FP64", data=[1.0]),
      InferInput(name="b", shape=[1], datatype="INT64", data=[1])], "says 2 values"),
    ([InferInput(name="a", shape=[1], datatype="FP64", data=["x"]),
      InferInput(name="b", shape=[1], datatype="INT64", data=[1])], "expected FP64, got str"),
    ([InferInput(name="m", shape=[1, 3], datatype="FP64", data=[1.0, 2.0, 3.0])],
     "must be [n, 2]"),
])
def test_oip_errors_name_the_input(inputs: list[InferInput], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        columns_from_oip(oip(*inputs), SIG)
    assert fragment in str(info.value)
