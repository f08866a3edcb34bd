"""Drift references: compact sketches of a sample, recorded at registration. Pure.

A reference describes one column (an input column of the training sample, or one of the
model's scores on that sample) well enough to test later data against it:

- numeric: the sample's quantiles at ``1/B, 2/B, …`` (the bin edges) and how many sample
  values fall in each bin, plus mean, standard deviation and a few named quantiles;
- categorical: the count of each category (the most frequent ``MAX_CATEGORIES``; the rest
  pooled as ``OTHER``).

Counts, not only proportions, are kept: the tests in ``core.drift`` treat the reference as a
sample of its own size, so a small training sample widens the thresholds instead of raising
false alarms.

>>> ref = column_reference([float(i) for i in range(100)], bins=4)
>>> ref["kind"], ref["n"], ref["edges"], ref["counts"]
('numeric', 100, [24.75, 49.5, 74.25], [25, 25, 25, 25])
>>> column_reference(["a", "b", "a"])["counts"]
{'a': 2, 'b': 1}
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["BINS", "MAX_CATEGORIES", "OTHER", "bin_counts", "build_reference",
           "column_reference", "score_series"]

BINS = 20  # equal-probability bins: edges at the 5 %, 10 %, … 95 % quantiles of the sample
MAX_CATEGORIES = 50
OTHER = "__other__"
NAMED_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def _is_numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values
               if v is not None)


def bin_counts(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """How many finite ``values`` fall in each bin ``(edges[i-1], edges[i]]`` (len(edges)+1)."""
    finite = values[np.isfinite(values)]
    idx = np.searchsorted(np.asarray(edges, dtype=float), finite, side="left")
    return np.bincount(idx, minlength=len(edges) + 1)


def column_reference(values: Sequence[Any], *, bins: int = BINS) -> dict[str, Any]:
    """The reference of one column (see the module docstring); ``{"kind": "empty"}`` when
    the column holds no usable value."""
    present = [v for v in values if v is not None]
    if present and _is_numeric(present):
        arr = np.asarray(present, dtype=float)
        arr = arr[np.isfinite(arr)]
        if arr.size == 0:
            return {"kind": "empty", "n": 0}
        probs = np.arange(1, bins) / bins
        # Ties (discrete columns) give repeated edges; one edge per distinct value keeps the
        # bins well defined, and the tests only ever compare cumulative counts at the edges.
        edges = sorted({float(e) for e in np.quantile(arr, probs)})
        return {
            "kind": "numeric", "n": int(arr.size), "edges": edges,
            "counts": [int(c) for c in bin_counts(arr, edges)],
            "mean": float(arr.mean()), "std": float(arr.std()),
            "quantiles": {f"p{round(q * 100)}": float(np.quantile(arr, q))
                          for q in NAMED_QUANTILES},
        }
    if not present:
        return {"kind": "empty", "n": 0}
    counts = Counter(str(v) for v in present)
    top = dict(counts.most_common(MAX_CATEGORIES))
    rest = sum(counts.values()) - sum(top.values())
    if rest:
        top[OTHER] = rest
    return {"kind": "categorical", "n": len(present), "counts": top}


def score_series(outputs: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    """The scalar series drift and comparisons look at, from one model's outputs (rows).

    - ``prediction``: the predictions as they are (class labels or numbers);
    - ``score``: a number per row: the probability of the second class for a binary
      classifier, the highest probability otherwise, or the prediction of a regressor.

    >>> score_series({"predictions": [1, 0], "probabilities": [[0.2, 0.8], [0.9, 0.1]]})
    {'prediction': [1, 0], 'score': [0.8, 0.1]}
    >>> score_series({"predictions": [2.5]})
    {'prediction': [2.5], 'score': [2.5]}
    """
    preds = list(outputs.get("predictions", []))
    probs = outputs.get("probabilities")
    series: dict[str, list[Any]] = {"prediction": preds}
    if probs is not None and len(probs) and isinstance(probs[0], Sequence):
        series["score"] = [float(p[1]) if len(p) == 2 else float(max(p)) for p in probs]
    elif preds and _is_numeric(preds):
        series["score"] = [float(p) for p in preds]
    return series


def build_reference(columns: Mapping[str, Sequence[Any]],
                    outputs: Mapping[str, Sequence[Any]] | None = None) -> dict[str, Any]:
    """The drift reference stored with a model version: a sketch per input column, and per
    scalar score series of the model's own outputs on that sample (``outputs``), if given."""
    ref: dict[str, Any] = {
        "n_rows": max((len(v) for v in columns.values()), default=0),
        "columns": {name: column_reference(list(values)) for name, values in columns.items()},
    }
    if outputs:
        ref["scores"] = {name: column_reference(values)
                         for name, values in score_series(outputs).items()}
    return ref


def finite(x: float | None) -> float | None:
    """``x`` when it is a finite number, else None (JSON has no NaN)."""
    return x if x is not None and math.isfinite(x) else None
