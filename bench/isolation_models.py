"""The models of the isolation benchmark, registered by import reference (``bench.isolation``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Fn = Callable[[Mapping[str, np.ndarray], int], dict[str, Any]]
_calls = {"n": 0}


def trivial(columns: Mapping[str, np.ndarray], n_rows: int) -> dict[str, Any]:
    """The champion: a trivial numpy computation."""
    return {"predictions": columns["x"] * 2 + columns["y"]}


def make_busy(busy_ms: float) -> Fn:
    """A neighbour computing in pure Python (holding the GIL) for ``busy_ms`` per batch."""

    def predict(columns: Mapping[str, np.ndarray], n_rows: int) -> dict[str, Any]:
        end = time.perf_counter() + busy_ms / 1000
        n = 0
        while time.perf_counter() < end:
            n += 1
        return {"predictions": np.full(n_rows, float(n % 7))}

    return predict


def make_aborting(every: int) -> Fn:
    """A neighbour that kills its process with ``abort()`` on every ``every``-th batch."""

    def predict(columns: Mapping[str, np.ndarray], n_rows: int) -> dict[str, Any]:
        _calls["n"] += 1
        if _calls["n"] % every == 0:
            os.abort()
        return {"predictions": columns["x"]}

    return predict
