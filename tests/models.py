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


def make_failing(message: str) -> Fn:
    def predict(columns: Mapping[str, np.ndarray], n_rows: int) -> dict[str, Any]:
        raise ValueError(message)

    return predict


def with_probabilities(columns: Mapping[str, np.ndarray], n_rows: int) -> dict[str, Any]:
    """A classifier's two outputs: a label per row and a row of class probabilities."""
    p = 1 / (1 + np.exp(-(columns["x"] - columns["y"])))
    return {"predictions": np.where(p > 0.5, "yes", "no"),
            "probabilities": np.stack([1 - p, p], axis=1)}
