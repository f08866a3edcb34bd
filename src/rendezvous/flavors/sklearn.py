"""scikit-learn models, persisted with skops (no pickle).

skops builds only the types it is told to trust. Trust comes from ``flavors.trust``: data types
of scikit-learn, NumPy and SciPy, plus the types the operator names at registration (recorded
with the version as ``user_trusted``). An artifact that needs anything else is refused at
registration with the list of offending types, and the same check runs again at every load
(before skops builds anything), so a registry row edited by hand cannot widen the trust.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rendezvous.core.schema import Signature, to_matrix
from rendezvous.errors import FlavorError, UnsafeArtifactError
from rendezvous.flavors import trust
from rendezvous.flavors.base import FileModel, Outputs, classifier_outputs, register
from rendezvous.registry.lineage import model_params


class SklearnPredictor:
    """Any object with scikit-learn's ``predict``/``predict_proba``/``classes_`` interface."""

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
                # One predict_proba call gives both outputs (predict would repeat the work).
                return classifier_outputs(self.model.predict_proba(x), self.model.classes_)
            return {"predictions": np.asarray(self.model.predict(x))}


def _needed_types(data: bytes) -> list[str]:
    import skops.io as sio

    try:
        # Reads the artifact's schema only; builds nothing.
        return sorted(sio.get_untrusted_types(data=data))
    except Exception as exc:  # skops raises BadZipFile/KeyError/ValueError on a bad file
        raise FlavorError(f"not a readable skops file ({type(exc).__name__}: {exc}); save the "
                          "model with skops.io.dump") from None


def check_types(needed: Sequence[str], user_trusted: Sequence[str]) -> None:
    """Refuse an artifact needing types outside the allowlist and the operator's list."""
    bad = trust.refused(needed, trusted=user_trusted)
    if bad:
        raise UnsafeArtifactError(
            f"the skops artifact needs types that are not known to be data: {', '.join(bad)}; "
            "loading them could run code. If you trust them, register again with "
            + " ".join(f"--trust {t}" for t in bad)
        )


class SklearnFlavor:
    name = "sklearn"
    suffixes = (".skops",)

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
        needed = _needed_types(data)
        check_types(needed, ())
        return data, {"trusted_types": needed, "user_trusted": [],
                      "class": type(model).__qualname__}

    def sniff(self, data: bytes) -> bool:
        return data[:2] == b"PK"  # skops files are zip archives

    def inspect(self, data: bytes, *, trust: Sequence[str] = ()) -> FileModel:
        needed = _needed_types(data)
        user = sorted(set(trust) & set(needed))
        check_types(needed, user)
        meta: dict[str, Any] = {"trusted_types": needed, "user_trusted": user}
        # Every type is now data or named by the operator: building it runs no foreign code.
        model = self._loads(data, needed)
        meta["class"] = type(model).__qualname__
        names = getattr(model, "feature_names_in_", None)
        n = getattr(model, "n_features_in_", None)
        return FileModel(meta, [str(c) for c in names] if names is not None else None,
                         None if n is None else int(n), params=model_params(model))

    def _loads(self, data: bytes, trusted: Sequence[str]) -> Any:
        import skops.io as sio

        try:
            with self._lock:
                return sio.loads(data, trusted=list(trusted))
        except Exception as exc:  # skops raises plain TypeErrors/ValueErrors on bad artifacts
            raise FlavorError(f"cannot load the scikit-learn artifact with skops: {exc}") from exc

    def load(
        self, data: bytes, meta: Mapping[str, Any], signature: Signature, *, allow_pickle: bool
    ) -> SklearnPredictor:
        needed = _needed_types(data)
        check_types(needed, list(meta.get("user_trusted", [])))
        return SklearnPredictor(self._loads(data, needed), signature)


register(SklearnFlavor())
