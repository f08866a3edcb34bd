"""LightGBM models in LightGBM's text model format (``.txt``, as ``Booster.save_model`` writes).

The text format lists trees and parameters; LightGBM parses it and runs no Python code from it.
Needs ``pip install 'rendezvous-ml[lightgbm]'``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rendezvous.core.schema import Signature, to_matrix
from rendezvous.errors import FlavorError
from rendezvous.flavors.base import FileModel, Outputs, classifier_outputs, register, require


def _booster(data: bytes) -> Any:
    lgb = require("lightgbm", "LightGBM models", "lightgbm")
    try:
        return lgb.Booster(model_str=data.decode())
    except (UnicodeDecodeError, lgb.basic.LightGBMError) as exc:
        raise FlavorError(f"not a LightGBM text model: {str(exc).splitlines()[0]}") from None


def _objective(booster: Any) -> str:
    return str(booster.dump_model(num_iteration=0).get("objective", "")).split(" ")[0]


class LightGBMPredictor:
    def __init__(self, booster: Any, signature: Signature, classes: list[Any] | None) -> None:
        self.booster = booster
        self.signature = signature
        objective = _objective(booster)
        self._classify = objective in ("binary", "multiclass", "multiclassova", "cross_entropy")
        self._classes = classes

    def predict(self, columns: Mapping[str, np.ndarray], n_rows: int) -> Outputs:
        out = np.asarray(self.booster.predict(to_matrix(columns, self.signature)))
        if self._classify:
            return classifier_outputs(out, self._classes)
        return {"predictions": out}


class LightGBMFlavor:
    name = "lightgbm"
    suffixes = (".txt", ".lgb")

    def accepts(self, model: Any) -> bool:
        return type(model).__module__.startswith("lightgbm.")

    def save(self, model: Any) -> tuple[bytes, dict[str, Any]]:
        booster = model.booster_ if hasattr(model, "booster_") else model
        meta: dict[str, Any] = {"format": "text"}
        classes = getattr(model, "classes_", None)
        if classes is not None:
            meta["classes"] = np.asarray(classes).tolist()
        return booster.model_to_string().encode(), meta

    def sniff(self, data: bytes) -> bool:
        return data.startswith(b"tree\n") or data.startswith(b"tree\r\n")

    def inspect(self, data: bytes, *, trust: Sequence[str] = ()) -> FileModel:
        booster = _booster(data)
        names = [str(n) for n in booster.feature_name()]
        # LightGBM names unnamed features Column_0…; those are positions, not names.
        declared = None if names == [f"Column_{i}" for i in range(len(names))] else names
        objective = _objective(booster)
        return FileModel({"format": "text", "objective": objective}, declared,
                         booster.num_feature(),
                         params={"objective": objective, "num_trees": booster.num_trees()})

    def load(
        self, data: bytes, meta: Mapping[str, Any], signature: Signature, *, allow_pickle: bool
    ) -> LightGBMPredictor:
        classes = meta.get("classes")
        return LightGBMPredictor(_booster(data), signature,
                                 list(classes) if classes is not None else None)


register(LightGBMFlavor())
