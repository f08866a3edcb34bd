"""scikit-learn models, persisted with skops (no pickle).

skops refuses to load types it was not told to trust. At registration the artifact's own type
list is recorded; at load exactly that list is trusted, and since the artifact's digest is
verified first, nobody can swap in an artifact that needs other types.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from rendezvous.core.schema import Signature, to_matrix
from rendezvous.errors import FlavorError
from rendezvous.flavors.base import Outputs, register


class SklearnPredictor:
    def __init__(self, model: Any, signature: Signature) -> None:
        self.model = model
        self.signature = signature
        self._proba = hasattr(model, "predict_proba") and hasattr(model, "classes_")

    def predict(self, columns: Mapping[str, np.ndarray], n_rows: int) -> Outputs:
        x = to_matrix(columns, self.signature)
        with warnings.catch_warnings():
            # Models fitted on a DataFrame warn about a plain array; the columns are already
            # in signature order, so the warning says nothing here.
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            if self._proba:
                proba = self.model.predict_proba(x)
                # One predict_proba call gives both outputs (predict would repeat the work).
                return {"predictions": self.model.classes_[proba.argmax(axis=1)],
                        "probabilities": proba}
            return {"predictions": np.asarray(self.model.predict(x))}


class SklearnFlavor:
    name = "sklearn"

    def __init__(self) -> None:
        # skops parses with ``ast``; CPython 3.11's AST constructor is not safe to run from
        # several threads at once ("AST constructor recursion depth mismatch"), and runtimes
        # load models in threads. One load at a time.
        self._lock = threading.Lock()

    def accepts(self, model: Any) -> bool:
        return type(model).__module__.startswith("sklearn.") and hasattr(model, "predict")

    def save(self, model: Any) -> tuple[bytes, dict[str, Any]]:
        import skops.io as sio

        data = sio.dumps(model)
        trusted = sorted(sio.get_untrusted_types(data=data))
        return data, {"trusted_types": trusted, "class": type(model).__qualname__}

    def load(
        self, data: bytes, meta: Mapping[str, Any], signature: Signature, *, allow_pickle: bool
    ) -> SklearnPredictor:
        import skops.io as sio

        try:
            with self._lock:
                model = sio.loads(data, trusted=list(meta.get("trusted_types", [])))
        except Exception as exc:  # skops raises plain TypeErrors/ValueErrors on bad artifacts
            raise FlavorError(f"cannot load the scikit-learn artifact with skops: {exc}") from exc
        return SklearnPredictor(model, signature)


register(SklearnFlavor())
