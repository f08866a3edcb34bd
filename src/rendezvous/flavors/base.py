"""The flavor contract: how one framework's models are saved to bytes and loaded to predict.

Each flavor is one small module that registers itself (``register(MyFlavor())``), so adding a
framework is adding one file. Loading always starts from bytes whose SHA-256 the registry has
already verified.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from rendezvous.core.schema import Signature
from rendezvous.errors import FlavorError

Outputs = dict[str, np.ndarray]


class Predictor(Protocol):
    """A loaded model: columns (name -> 1-D array, ``n_rows`` long) in, outputs out.

    Every output's first dimension is ``n_rows``; the worker splits them back per request.
    """

    def predict(self, columns: Mapping[str, np.ndarray], n_rows: int) -> Outputs: ...


class Flavor(Protocol):
    name: str

    def accepts(self, model: Any) -> bool:
        """True when this flavor can save ``model``."""

    def save(self, model: Any) -> tuple[bytes, dict[str, Any]]:
        """The artifact bytes and metadata needed to load them again (kept in the registry)."""

    def load(
        self, data: bytes, meta: Mapping[str, Any], signature: Signature, *, allow_pickle: bool
    ) -> Predictor:
        """A predictor from verified artifact bytes."""


_FLAVORS: dict[str, Flavor] = {}


def register(flavor: Flavor) -> Flavor:
    _FLAVORS[flavor.name] = flavor
    return flavor


def _load_builtin() -> None:
    # Flavors register on import; importing here keeps import of this module side-effect free.
    from rendezvous.flavors import python, sklearn  # noqa: F401


def get(name: str) -> Flavor:
    _load_builtin()
    try:
        return _FLAVORS[name]
    except KeyError:
        raise FlavorError(
            f"unknown flavor {name!r}; known flavors: {', '.join(sorted(_FLAVORS))}"
        ) from None


def for_model(model: Any) -> Flavor:
    _load_builtin()
    for flavor in _FLAVORS.values():
        if flavor.accepts(model):
            return flavor
    raise FlavorError(
        f"no flavor can save a {type(model).__module__}.{type(model).__qualname__}; known "
        f"flavors: {', '.join(sorted(_FLAVORS))}. Pass flavor=... explicitly or wrap it as a "
        "python callable"
    )
