"""Small callable models for end-to-end tests (registered by import reference)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Fn = Callable[[Mapping[str, np.ndarray], int], dict[str, Any]]


def doubler(columns: Mapping[str, np.ndarray], n_rows: int) -> dict[str, Any]:
    return {"predictions": columns["x"] * 2 + columns["y"]}


def make_constant(value: float, sleep_ms: float = 0.0) -> Fn:
    """Answers ``value`` for every row, after sleeping ``sleep_ms`` per batch."""

    def predict(columns: Mapping[str, np.ndarray], n_rows: int) -> dict[str, Any]:
        if sleep_ms:
            time.sleep(sleep_ms / 1000)
        return {"predictions": np.full(n_rows, value)}

    return predict


def make_failing(message: str, above: float | None = None) -> Fn:
    """Raises ``ValueError(message)``: always, or for batches with an ``x`` over ``above``."""

    def predict(columns: Mapping[str, np.ndarray], n_rows: int) -> dict[str, Any]:
        if above is None or bool((columns["x"] > above).any()):
            raise ValueError(message)
        return {"predictions": np.zeros(n_rows)}

    return predict
