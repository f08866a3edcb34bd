"""The flavor contract: how one framework's models are saved to bytes and loaded to predict.

Each flavor is one small module that registers itself (``register(MyFlavor())``), so adding a
framework is adding one file. Loading always starts from bytes whose SHA-256 the registry has
already verified. A flavor that can be registered from a saved file (``FileFlavor``) also
declares its file suffixes and inspects a file without running anything from it. Optional
frameworks are imported inside the flavor (``require``), so a missing one is one line naming
its pip command.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rendezvous.core.schema import Column, Datatype, Signature
from rendezvous.errors import FlavorError, MissingDependencyError

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


@dataclass(frozen=True)
class FileModel:
    """What inspecting a saved model file told, without running code from it."""

    meta: dict[str, Any]
    inputs: list[str] | None = None  # feature names recorded in the model, if any
    n_inputs: int | None = None
    datatype: Datatype = Datatype.FP64
    params: dict[str, Any] = field(default_factory=dict)

    def signature(self) -> Signature | None:
        names = self.inputs or (
            [f"f{i}" for i in range(self.n_inputs)] if self.n_inputs is not None else None)
        return None if names is None else Signature(
            tuple(Column(n, self.datatype) for n in names))


@runtime_checkable
class FileFlavor(Flavor, Protocol):
    suffixes: tuple[str, ...]

    def sniff(self, data: bytes) -> bool:
        """True when ``data`` looks like this flavor's format (suffixes can be shared)."""

    def inspect(self, data: bytes, *, trust: Sequence[str] = ()) -> FileModel:
        """Check a saved file safely and read what it says about its inputs."""


def require(module: str, what: str, extra: str) -> Any:
    """Import an optional framework, or fail with the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(what, module, extra) from None


def classifier_outputs(proba: np.ndarray, classes: Sequence[Any] | np.ndarray | None) -> Outputs:
    """``predictions`` (the likeliest class) and ``probabilities`` from class probabilities;
    a 1-D array is the positive-class probability of a binary classifier."""
    proba = np.asarray(proba)
    if proba.ndim == 1:
        proba = np.column_stack([1.0 - proba, proba])
    labels = np.asarray(classes) if classes is not None else np.arange(proba.shape[1])
    return {"predictions": labels[proba.argmax(axis=1)], "probabilities": proba}


_FLAVORS: dict[str, Flavor] = {}


def register(flavor: Flavor) -> Flavor:
    _FLAVORS[flavor.name] = flavor
    return flavor


def _load_builtin() -> None:
    # Flavors register on import; importing here keeps import of this module side-effect free.
    from rendezvous.flavors import (  # noqa: F401
        lightgbm,
        onnx,
        pickled,
        python,
        sklearn,
        xgboost,
    )


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


def for_file(path: Path, data: bytes) -> FileFlavor:
    """The flavor of a saved model file, from its suffix and, where suffixes are shared,
    its first bytes."""
    _load_builtin()
    suffix = path.suffix.lower()
    file_flavors = [f for f in _FLAVORS.values() if isinstance(f, FileFlavor)]
    for flavor in file_flavors:
        if suffix in flavor.suffixes and flavor.sniff(data):
            return flavor
    known = ", ".join(f"{s} ({f.name})" for f in file_flavors for s in f.suffixes)
    raise FlavorError(
        f"cannot tell the flavor of {path.name}: known files are {known}; pass --flavor"
    )


def file_flavor(name: str) -> FileFlavor:
    flavor = get(name)
    if not isinstance(flavor, FileFlavor):
        names = sorted(f.name for f in _FLAVORS.values() if isinstance(f, FileFlavor))
        raise FlavorError(f"flavor {name!r} cannot be registered from a file; flavors that can: "
                          f"{', '.join(names)}")
    return flavor
