"""XGBoost models in XGBoost's own JSON or UBJSON format (``.json``, ``.ubj``).

The format is a description of trees and parameters, parsed by XGBoost; loading it runs no
Python code. Classifiers answer ``predictions`` (the class) and ``probabilities``; regressors
and rankers answer ``predictions``. Needs ``pip install 'rendezvous-ml[xgboost]'``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rendezvous.core.schema import Signature, to_matrix
from rendezvous.errors import FlavorError
from rendezvous.flavors.base import FileModel, Outputs, classifier_outputs, register, require

_WHAT = "XGBoost models"


def _xgb() -> Any:
    return require("xgboost", _WHAT, "xgboost")


def _booster(data: bytes) -> Any:
    xgb = _xgb()
    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(data))  # JSON or UBJSON, told apart by XGBoost
    except xgb.core.XGBoostError as exc:
        raise FlavorError(f"not an XGBoost model file: {str(exc).splitlines()[0]}") from None
    return booster


def _objective(booster: Any) -> str:
    return str(json.loads(booster.save_config())["learner"]["objective"]["name"])


def _classes(booster: Any) -> list[Any] | None:
    """Class labels the scikit-learn wrapper recorded in the model, if any."""
    raw = booster.attr("scikit_learn")
    if raw:
        classes = json.loads(raw).get("classes_")
        if classes is not None:
            return list(classes)
    return None


class XGBoostPredictor:
    def __init__(self, booster: Any, signature: Signature, classes: list[Any] | None) -> None:
        self.booster = booster
        self.signature = signature
        objective = _objective(booster)
        self._kind = ("multi" if objective.startswith("multi:softprob")
                      else "binary" if objective.startswith("binary:logistic") else "value")
        self._classes = classes

    def predict(self, columns: Mapping[str, np.ndarray], n_rows: int) -> Outputs:
        xgb = _xgb()
        x = to_matrix(columns, self.signature).astype(np.float32)
        names = self.booster.feature_names
        out = np.asarray(self.booster.inplace_predict(
            x, validate_features=False) if names is None else self.booster.predict(
            xgb.DMatrix(x, feature_names=names)))
        if self._kind == "value":
            return {"predictions": out}
        return classifier_outputs(out, self._classes)


class XGBoostFlavor:
    name = "xgboost"
    suffixes = (".json", ".ubj")

    def accepts(self, model: Any) -> bool:
        return type(model).__module__.startswith("xgboost.")

    def save(self, model: Any) -> tuple[bytes, dict[str, Any]]:
        booster = model.get_booster() if hasattr(model, "get_booster") else model
        meta: dict[str, Any] = {"format": "ubj"}
        classes = getattr(model, "classes_", None)
        if classes is not None:
            meta["classes"] = np.asarray(classes).tolist()
        return bytes(booster.save_raw(raw_format="ubj")), meta

    def sniff(self, data: bytes) -> bool:
        # Both formats open an object whose first key is "learner" (JSON and UBJSON alike).
        return data[:1] == b"{" and b"learner" in data[:256]

    def inspect(self, data: bytes, *, trust: Sequence[str] = ()) -> FileModel:
        booster = _booster(data)
        meta: dict[str, Any] = {"format": "json" if data[1:2] in b' \n\r\t"' else "ubj",
                                "objective": _objective(booster)}
        classes = _classes(booster)
        if classes is not None:
            meta["classes"] = classes
        names = booster.feature_names
        return FileModel(meta, list(names) if names else None, int(booster.num_features()),
                         params={"objective": meta["objective"],
                                 "num_trees": len(booster.get_dump())})

    def load(
        self, data: bytes, meta: Mapping[str, Any], signature: Signature, *, allow_pickle: bool
    ) -> XGBoostPredictor:
        booster = _booster(data)
        classes = meta.get("classes")
        return XGBoostPredictor(booster, signature,
                                list(classes) if classes is not None else _classes(booster))


register(XGBoostFlavor())
