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


_calls = {"n": 0}
_leaked: list[np.ndarray] = []


def make_aborting(every: int) -> Fn:
    """Doubles ``x``, but kills its process with ``abort()`` on every ``every``-th call (as a
    crashing native extension would). Warm-up calls count too."""
    import os

    def predict(columns: Mapping[str, np.ndarray], n_rows: int) -> dict[str, Any]:
        _calls["n"] += 1
        if _calls["n"] % every == 0:
            os.abort()
        return {"predictions": columns["x"] * 2}

    return predict


def make_leaking(mb_per_row: int) -> Fn:
    """Keeps ``mb_per_row`` MB more (touched, so resident) for every row it scores."""

    def predict(columns: Mapping[str, np.ndarray], n_rows: int) -> dict[str, Any]:
        _leaked.append(np.ones(mb_per_row * n_rows * 1_000_000, dtype=np.uint8))
        return {"predictions": columns["x"] * 3}

    return predict


def make_hanging(above: float) -> Fn:
    """Never returns from predict when a row has ``x`` over ``above``."""

    def predict(columns: Mapping[str, np.ndarray], n_rows: int) -> dict[str, Any]:
        if bool((columns["x"] > above).any()):
            time.sleep(3600)
        return {"predictions": columns["x"] * 4}

    return predict


def with_probabilities(columns: Mapping[str, np.ndarray], n_rows: int) -> dict[str, Any]:
    """A classifier's two outputs: a label per row and a row of class probabilities."""
    p = 1 / (1 + np.exp(-(columns["x"] - columns["y"])))
    return {"predictions": np.where(p > 0.5, "yes", "no"),
            "probabilities": np.stack([1 - p, p], axis=1)}


def make_threshold(cut: float, flip: bool = False, fail_after: int | None = None) -> Fn:
    """A classifier answering ``"yes"`` when ``x > cut`` (the opposite with ``flip``); with
    ``fail_after``, it raises on every call after that many (warm-up calls count)."""
    calls = {"n": 0}

    def predict(columns: Mapping[str, np.ndarray], n_rows: int) -> dict[str, Any]:
        calls["n"] += 1
        if fail_after is not None and calls["n"] > fail_after:
            raise ValueError(f"failing after {fail_after} calls")
        yes = (columns["x"] > cut) != flip
        return {"predictions": np.where(yes, "yes", "no")}

    return predict
