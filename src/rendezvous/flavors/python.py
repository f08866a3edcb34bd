"""Plain Python callables, stored by import reference (``package.module:function``), not pickled.

The artifact is a small JSON document naming the callable and optional keyword arguments; with
keyword arguments the reference is a factory called once at load. The callable receives the
columns (name -> 1-D numpy array) and the row count and returns a mapping of output name to
array-like with ``n_rows`` entries.

Importing and calling a reference runs code, so references are accepted (at registration and
again at every load) only from modules the operator lists in ``RENDEZVOUS_TRUSTED_MODULES``;
modules that run commands, load code or reach the interpreter are refused even when listed.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from rendezvous import config
from rendezvous.core.schema import Signature
from rendezvous.errors import FlavorError, UnsafeArtifactError
from rendezvous.flavors.base import Outputs, register


class CallableModel:
    """Marks a callable for registration: ``Registry.register("m", CallableModel("pkg.mod:f"))``."""

    def __init__(self, ref: str, **kwargs: Any) -> None:
        module, _, attr = ref.partition(":")
        if not module or not attr:
            raise FlavorError(f"invalid callable reference {ref!r}; write 'package.module:name'")
        self.ref = ref
        self.kwargs = kwargs


# Never importable as a model, whatever the operator lists: each runs commands, loads code,
# or hands out the interpreter (``operator.methodcaller`` can call any method by name).
_NEVER = frozenset({
    "os", "posix", "nt", "subprocess", "_posixsubprocess", "builtins", "sys", "importlib",
    "runpy", "code", "codeop", "ctypes", "multiprocessing", "concurrent", "pickle", "_pickle",
    "marshal", "shelve", "dill", "cloudpickle", "joblib", "shutil", "socket", "pty", "signal",
    "operator", "functools", "inspect", "types", "gc", "threading", "_thread", "asyncio",
    "webbrowser", "urllib", "http", "ftplib", "smtplib", "telnetlib", "tempfile", "pathlib",
    "io", "_io", "posixpath", "ntpath", "platform", "pdb", "bdb", "trace", "timeit", "site",
    "sysconfig", "zipimport", "pkgutil", "distutils", "setuptools", "pip",
})


def check_trusted(ref: str) -> None:
    """Refuse a reference outside ``RENDEZVOUS_TRUSTED_MODULES`` or inside ``_NEVER``."""
    module = ref.partition(":")[0]
    top = module.split(".", 1)[0]
    if top in _NEVER or top.startswith("__"):
        raise UnsafeArtifactError(
            f"callable {ref!r}: module {top!r} is never trusted as a model (it can run "
            "commands or load code); register a function of your own package"
        )
    allowed = [m.strip() for m in config.TRUSTED_MODULES.get().split(",") if m.strip()]
    if not any(module == m or module.startswith(m + ".") for m in allowed):
        raise UnsafeArtifactError(
            f"callable {ref!r}: module {module!r} is not in RENDEZVOUS_TRUSTED_MODULES "
            f"({','.join(allowed) or 'empty'}); add it (comma-separated module prefixes) if "
            "you trust its code"
        )


def resolve(ref: str) -> Any:
    check_trusted(ref)
    module, _, attr = ref.partition(":")
    if any(part.startswith("_") for part in attr.split(".")):
        raise UnsafeArtifactError(
            f"callable {ref!r}: private and dunder attributes are not callables to serve")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise FlavorError(
            f"cannot import {ref!r}: {exc}; make sure the module is installed where the worker runs"
        ) from exc
    return obj


class CallablePredictor:
    def __init__(self, fn: Callable[[Mapping[str, np.ndarray], int], Mapping[str, Any]]) -> None:
        self.fn = fn

    def predict(self, columns: Mapping[str, np.ndarray], n_rows: int) -> Outputs:
        out = self.fn(columns, n_rows)
        if not isinstance(out, Mapping):
            raise FlavorError(
                f"callable returned {type(out).__name__}; return a mapping of output name to "
                "array-like"
            )
        arrays = {k: np.asarray(v) for k, v in out.items()}
        for k, v in arrays.items():
            if v.ndim == 0 or v.shape[0] != n_rows:
                raise FlavorError(f"output {k!r} has shape {v.shape}; expected {n_rows} rows")
        return arrays


class PythonFlavor:
    name = "python"

    def accepts(self, model: Any) -> bool:
        return isinstance(model, CallableModel)

    def save(self, model: Any) -> tuple[bytes, dict[str, Any]]:
        doc = {"ref": model.ref, "kwargs": model.kwargs}
        try:
            data = json.dumps(doc, sort_keys=True).encode()
        except TypeError as exc:
            raise FlavorError(f"callable keyword arguments must be JSON values: {exc}") from exc
        resolve(model.ref)  # fail at registration, not at first request
        return data, {"ref": model.ref}

    def load(
        self, data: bytes, meta: Mapping[str, Any], signature: Signature, *, allow_pickle: bool
    ) -> CallablePredictor:
        doc = json.loads(data)
        obj = resolve(doc["ref"])
        fn = obj(**doc["kwargs"]) if doc.get("kwargs") else obj
        if not callable(fn):
            raise FlavorError(f"{doc['ref']} did not give a callable")
        return CallablePredictor(fn)


register(PythonFlavor())
