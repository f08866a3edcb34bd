"""ONNX models run by onnxruntime (``.onnx``).

An ONNX file is a graph of standard operators; onnxruntime loads no custom operator library
unless told to, and models whose tensors live in external files are refused (they would read
files beside wherever the bytes are loaded). Classifiers converted by skl2onnx answer
``predictions`` (the label) and ``probabilities``; convert with ``options={"zipmap": False}``
to get a plain probability tensor (the ZipMap form is converted too). Needs
``pip install 'rendezvous-ml[onnx]'``; converting scikit-learn models needs
``'rendezvous-ml[skl2onnx]'``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from rendezvous.core.schema import Datatype, Signature, to_matrix
from rendezvous.errors import FlavorError, UnsafeArtifactError
from rendezvous.flavors.base import FileModel, Outputs, register, require

_NUMPY = {"tensor(float)": np.float32, "tensor(double)": np.float64,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
          "tensor(string)": object}
_DATATYPE = {"tensor(float)": Datatype.FP32, "tensor(double)": Datatype.FP64,
             "tensor(int64)": Datatype.INT64, "tensor(int32)": Datatype.INT32,
             "tensor(bool)": Datatype.BOOL, "tensor(string)": Datatype.BYTES}
_PROBA_NAMES = ("probabilities", "output_probability", "probability")


def _session(data: bytes) -> Any:
    ort = require("onnxruntime", "ONNX models", "onnx")
    _refuse_external_data(data)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # model hosts scale by process; one thread each
    opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... classes
        raise FlavorError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}"
                          ) from None


def _refuse_external_data(data: bytes) -> None:
    try:
        import onnx
    except ImportError:  # onnxruntime alone refuses external data when loading from bytes
        return
    try:
        model = onnx.load_model_from_string(data)  # never follows external data references
    except Exception as exc:  # protobuf DecodeError
        raise FlavorError(f"not an ONNX model: {exc}") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in _tensors(model.graph)):
        raise UnsafeArtifactError("the ONNX model keeps tensors in external files; save it as "
                                  "one file (onnx.save_model(m, path, save_as_external_data="
                                  "False))")


def _tensors(graph: Any) -> Iterator[Any]:
    """Every tensor of a graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def _single_matrix(session: Any) -> bool:
    inputs = session.get_inputs()
    return len(inputs) == 1 and len(inputs[0].shape) == 2 and isinstance(inputs[0].shape[1], int)


class OnnxPredictor:
    def __init__(self, session: Any, signature: Signature) -> None:
        self.session = session
        self.signature = signature
        self._inputs = session.get_inputs()
        self._matrix = _single_matrix(session)
        self._outputs = [o.name for o in session.get_outputs()]

    def _feed(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._matrix:
            inp = self._inputs[0]
            return {inp.name: to_matrix(columns, self.signature).astype(_NUMPY[inp.type])}
        return {i.name: np.asarray(columns[i.name], dtype=_NUMPY[i.type]).reshape(
            -1, *([1] if len(i.shape) == 2 else [])) for i in self._inputs}

    def predict(self, columns: Mapping[str, np.ndarray], n_rows: int) -> Outputs:
        results = dict(zip(self._outputs, self.session.run(None, self._feed(columns)),
                           strict=True))
        first = np.asarray(results[self._outputs[0]])
        out: Outputs = {"predictions": first.reshape(n_rows) if first.size == n_rows else first}
        for name in _PROBA_NAMES:
            if name in results:
                proba = results[name]
                if isinstance(proba, list):  # ZipMap: one {label: probability} per row
                    proba = np.array([[row[k] for k in sorted(row)] for row in proba])
                out["probabilities"] = np.asarray(proba)
                break
        return out


class OnnxFlavor:
    name = "onnx"
    suffixes = (".onnx",)

    def accepts(self, model: Any) -> bool:
        return type(model).__name__ == "ModelProto" and type(model).__module__.startswith("onnx")

    def save(self, model: Any) -> tuple[bytes, dict[str, Any]]:
        data = bytes(model.SerializeToString())
        _refuse_external_data(data)
        return data, {}

    def sniff(self, data: bytes) -> bool:
        return True

    def inspect(self, data: bytes, *, trust: Sequence[str] = ()) -> FileModel:
        session = _session(data)
        inputs = session.get_inputs()
        meta = {"inputs": [i.name for i in inputs],
                "outputs": [o.name for o in session.get_outputs()]}
        if _single_matrix(session):
            return FileModel(meta, None, inputs[0].shape[1],
                             _DATATYPE.get(inputs[0].type, Datatype.FP64))
        dts = {_DATATYPE.get(i.type, Datatype.FP64) for i in inputs}
        if len(dts) != 1:
            raise FlavorError("the ONNX model's inputs have different types; register it with "
                              "--example DATA to give the signature")
        return FileModel(meta, [i.name for i in inputs], len(inputs), dts.pop())

    def load(
        self, data: bytes, meta: Mapping[str, Any], signature: Signature, *, allow_pickle: bool
    ) -> OnnxPredictor:
        return OnnxPredictor(_session(data), signature)


register(OnnxFlavor())
