"""Labelled outcomes and latency summaries shared by replay and what-if. Pure.

``LabelTally`` joins labels with reduced scores (``core.compare.Scored``) into one
``core.accuracy.LabelStats`` per name (a model, or a policy's answers), as the monitor does:
accuracy, log loss and AUC with intervals for classifiers, MAE and RMSE for regressors.

>>> from rendezvous.core.compare import reduce
>>> t = LabelTally()
>>> t.add("m", reduce({"predictions": [1, 0], "probabilities": [[.2, .8], [.7, .3]]}), [1, 1])
>>> t.to_dict()["m"]["accuracy"]
0.5
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rendezvous.core.accuracy import LabelStats
from rendezvous.core.compare import Scored, label_key

__all__ = ["LabelTally", "quantiles_ms"]


class LabelTally:
    """Labelled outcomes per name."""

    def __init__(self) -> None:
        self.stats: dict[str, LabelStats] = {}
        self._cols: dict[str, dict[str, int]] = {}  # name -> class label -> probability column

    def add(self, name: str, scored: Scored, raw: Sequence[Any]) -> bool:
        """Count one labelled request's rows; False when the score cannot be judged (an
        error, or a label that is not a number for a regressor)."""
        if scored.error:
            return False
        if scored.classifier:
            stats = self.stats.setdefault(name, LabelStats("classification"))
            cols = self._cols.setdefault(name, {})
            # A classifier predicts the class of its highest probability: each (prediction,
            # argmax) pair names one column.
            for label, probs in zip(scored.labels, scored.probabilities, strict=False):
                if label not in cols and probs:
                    cols[label] = max(range(len(probs)), key=probs.__getitem__)
            for i, (pred, y) in enumerate(zip(scored.labels, raw, strict=False)):
                key = label_key(y)
                probs = scored.probabilities[i] if i < len(scored.probabilities) else ()
                col = cols.get(key)
                binary = len(probs) == 2 and col is not None
                stats.add_outcome(correct=pred == key,
                                  prob_true=probs[col] if probs and col is not None else None,
                                  score=probs[1] if binary else None,
                                  positive=(col == 1) if binary else None)
            return True
        try:
            errors = [p - float(y) for p, y in zip(scored.scores, raw, strict=False)]
        except (TypeError, ValueError):
            return False
        stats = self.stats.setdefault(name, LabelStats("regression"))
        for e in errors:
            stats.add_error(e)
        return True

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: s.to_dict() for name, s in self.stats.items()}


def quantiles_ms(values_ns: Sequence[int] | np.ndarray,
                 qs: Sequence[float] = (0.5, 0.9, 0.99)) -> dict[str, float | None]:
    """Quantiles in milliseconds of durations in nanoseconds, as ``{"p50": …}``.

    >>> quantiles_ms([1_000_000, 3_000_000], (0.5,))
    {'p50': 2.0}
    """
    arr = np.asarray(values_ns, dtype=float)
    names = [f"p{round(q * 100):g}" for q in qs]
    if arr.size == 0:
        return dict.fromkeys(names)
    got = np.quantile(arr, qs) / 1e6
    return {n: round(float(v), 3) for n, v in zip(names, got, strict=True)}
