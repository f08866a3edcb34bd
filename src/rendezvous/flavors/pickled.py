"""Pickled models (``.pkl``, ``.pickle``, ``.joblib``), only behind ``RENDEZVOUS_ALLOW_PICKLE``.

Unpickling runs whatever code the file names, so registering a pickle without the opt-in is
refused in one line, and even with it registration never unpickles: the signature comes from
``--example`` or ``--columns``. Loading needs the opt-in again on the machine that loads.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

from rendezvous import config
from rendezvous.core.schema import Signature
from rendezvous.errors import FlavorError, UnsafeArtifactError
from rendezvous.flavors.base import FileModel, register
from rendezvous.flavors.sklearn import SklearnPredictor

REFUSED = ("is a pickle: loading it runs code from the file. Set RENDEZVOUS_ALLOW_PICKLE=1 only "
           "if you trust it, or save the model in a safe format (skops .skops, XGBoost .json/.ubj,"
           " LightGBM .txt, ONNX .onnx)")


def check_allowed(what: str) -> None:
    if not config.ALLOW_PICKLE.get():
        raise UnsafeArtifactError(f"{what} {REFUSED}")


class PickleFlavor:
    name = "pickle"
    suffixes = (".pkl", ".pickle", ".joblib")

    def accepts(self, model: Any) -> bool:
        return False  # never chosen implicitly; ask for flavor="pickle"

    def save(self, model: Any) -> tuple[bytes, dict[str, Any]]:
        check_allowed("the model")
        return pickle.dumps(model, protocol=5), {"pickle": True, "format": "pickle"}

    def sniff(self, data: bytes) -> bool:
        return True

    def inspect(self, data: bytes, *, trust: Sequence[str] = ()) -> FileModel:
        check_allowed("the file")
        return FileModel({"pickle": True, "format": "joblib"})

    def load(
        self, data: bytes, meta: Mapping[str, Any], signature: Signature, *, allow_pickle: bool
    ) -> SklearnPredictor:
        if not allow_pickle:
            raise UnsafeArtifactError(f"the artifact {REFUSED}")
        try:
            import joblib  # reads plain pickles and joblib's (compressed) files alike

            model = joblib.load(io.BytesIO(data))  # the operator opted in
        except Exception as exc:  # unpickling raises anything the file's code raises
            raise FlavorError(f"cannot unpickle the model: {type(exc).__name__}: {exc}") from exc
        if not hasattr(model, "predict"):
            raise FlavorError(f"the unpickled {type(model).__name__} has no predict method")
        return SklearnPredictor(model, signature)


register(PickleFlavor())
