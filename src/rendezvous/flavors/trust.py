"""Which types a skops artifact may contain: an allowlist we control, plus what the operator names.

skops refuses to build any type it is not told to trust; the danger is trusting what the
artifact itself asks for (a reduce node naming ``os.system`` is then called at load). Here a
type is trusted when it is *data* from scikit-learn, NumPy or SciPy (estimator classes, arrays,
dtypes, scalar types, ufuncs, random generators, sparse matrices) or plain Python data — decided
by importing only those packages' own modules, never a module the artifact names otherwise —
or when the operator named it (``--trust TYPE``, recorded with the version).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

# Plain data: building one of these runs no code that the artifact chooses.
_BUILTIN_DATA = frozenset({
    "bool", "int", "float", "complex", "str", "bytes", "bytearray", "list", "tuple", "dict",
    "set", "frozenset", "slice", "NoneType", "range",
})
_STDLIB_DATA = frozenset({"collections.OrderedDict"})
# Top-level packages whose classes and ufuncs can be trusted as data (see `_is_data`).
_DATA_PACKAGES = frozenset({"sklearn", "numpy", "scipy"})
# Never, whatever the package: these load or run other code.
_NEVER = ("numpy.load", "numpy.lib.npyio", "numpy.ctypeslib", "numpy.f2py", "numpy.testing",
          "numpy.distutils", "scipy._lib", "sklearn.utils._testing", "sklearn.externals")


def _resolve(type_name: str) -> Any:
    """The object a fully qualified name denotes, importing only data packages' modules."""
    parts = type_name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(type_name)


def _is_data(type_name: str) -> bool:
    top = type_name.split(".", 1)[0]
    if type_name in _STDLIB_DATA:
        return True
    if top == "builtins":
        return type_name.removeprefix("builtins.") in _BUILTIN_DATA
    if top not in _DATA_PACKAGES or type_name.startswith(_NEVER):
        return False
    try:
        obj = _resolve(type_name)
    except (ImportError, AttributeError):
        return False
    import numpy as np

    if isinstance(obj, np.ufunc):  # a math kernel, e.g. numpy.log1p in a FunctionTransformer
        return True
    if not isinstance(obj, type):  # any other function could be called with chosen arguments
        return False
    module = getattr(obj, "__module__", "") or ""
    if top == "sklearn":
        # Classes of scikit-learn itself (estimators, their helpers); skops builds them
        # without calling __init__, from stored state.
        return module.split(".", 1)[0] == "sklearn"
    if top == "numpy":
        if issubclass(obj, np.memmap):  # constructing one opens (and can create) a file
            return False
        return issubclass(obj, np.generic | np.ndarray | np.dtype | np.random.Generator
                          | np.random.RandomState | np.random.BitGenerator)
    import scipy.sparse

    return issubclass(obj, scipy.sparse.spmatrix | scipy.sparse.sparray)


def refused(types: Iterable[str], *, trusted: Iterable[str] = ()) -> list[str]:
    """The types that are neither data from the allowlist nor named in ``trusted``.

    >>> refused(["numpy.float64", "sklearn.linear_model._logistic.LogisticRegression",
    ...          "posix.system", "builtins.eval"])
    ['builtins.eval', 'posix.system']
    """
    named = set(trusted)
    return sorted({t for t in types if t not in named and not _is_data(t)})
