"""Paired comparisons: every model against the champion on the same requests. Pure.

Each model's outputs for a request are reduced to ``Scored`` (a score per row and, for a
classifier, the predicted class per row). ``ScoreBook`` files them by request id and hands out
each (model, champion) pair once both are present; ``PairStats`` accumulates, per model, the
agreement rate (classifiers), quantiles of the score difference (model minus champion), the
Spearman rank correlation of the scores (on a sample of the most recent pairs) and counts.

>>> champ = reduce({"predictions": ["a", "b"], "probabilities": [[.9, .1], [.2, .8]]})
>>> other = reduce({"predictions": ["a", "a"], "probabilities": [[.7, .3], [.6, .4]]})
>>> p = PairStats(); p.add(other, champ); s = p.summary()
>>> s["rows"], s["agreement"], s["diff"]["p50"] is not None
(2, 0.5, True)
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastdigest import TDigest
from scipy import stats

from rendezvous.core.accuracy import wilson
from rendezvous.core.windows import digest_quantiles

__all__ = ["PairStats", "ScoreBook", "Scored", "label_key", "reduce", "spearman"]

DIFF_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
RANK_SAMPLE = 2000
FLUSH_EVERY = 512


@dataclass(frozen=True, slots=True)
class Scored:
    """One model's answer to one request, reduced to what comparisons and accuracy need."""

    scores: tuple[float, ...] = ()
    labels: tuple[str, ...] = ()  # predicted classes (classifiers only)
    probabilities: tuple[tuple[float, ...], ...] = ()
    error: bool = False

    @property
    def classifier(self) -> bool:
        return bool(self.labels)


def label_key(value: Any) -> str:
    """How a class label is compared: ``1``, ``1.0`` and ``"1"`` are the same class.

    >>> label_key(1.0), label_key(True), label_key("yes")
    ('1', 'True', 'yes')
    """
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def reduce(outputs: Mapping[str, Sequence[Any]], *, error: bool = False) -> Scored:
    """``Scored`` from a model's outputs: a classifier when it gives probabilities or
    non-numeric predictions. (On every score of every model: kept to plain type checks.)"""
    if error:
        return Scored(error=True)
    preds = outputs.get("predictions") or ()
    probs = outputs.get("probabilities")
    if probs is not None and len(probs) and isinstance(probs[0], list | tuple):
        rows = tuple(tuple(row) for row in probs)
        return Scored(scores=tuple(r[1] if len(r) == 2 else max(r) for r in rows),
                      labels=tuple(label_key(p) for p in preds), probabilities=rows)
    if any(type(p) is str or type(p) is bool for p in preds):
        return Scored(labels=tuple(label_key(p) for p in preds))
    if all(type(p) is float or type(p) is int for p in preds):
        return Scored(scores=tuple(float(p) for p in preds))
    return Scored()


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation; None with fewer than 3 pairs or a constant side."""
    if len(x) < 3:
        return None
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    ra, rb = stats.rankdata(a), stats.rankdata(b)
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass(slots=True)
class PairStats:
    """One model against the champion (one window, or cumulative)."""

    requests: int = 0
    rows: int = 0
    errors: int = 0  # pairs where one side failed
    agree: int = 0
    compared: int = 0  # rows with a class on both sides
    diff: TDigest = field(default_factory=lambda: TDigest(max_centroids=100))
    abs_diff_sum: float = 0.0
    pending: list[float] = field(default_factory=list)  # differences not yet in ``diff``
    xs: deque[float] = field(default_factory=lambda: deque(maxlen=RANK_SAMPLE))
    ys: deque[float] = field(default_factory=lambda: deque(maxlen=RANK_SAMPLE))

    def add(self, model: Scored, champion: Scored) -> None:
        """One request's pair."""
        PairStats.add_all((self,), model, champion)

    @staticmethod
    def add_all(targets: Sequence[PairStats], model: Scored, champion: Scored) -> None:
        """One request's pair into several accumulators (a window's and the cumulative one),
        computed once: this runs for every score of every model."""
        if model.error or champion.error:
            for t in targets:
                t.requests += 1
                t.errors += 1
            return
        ml, cl = model.labels, champion.labels
        agree = compared = 0
        if ml and cl:
            compared = min(len(ml), len(cl))
            agree = sum(a == b for a, b in zip(ml[:compared], cl[:compared], strict=True))
        ms, cs = model.scores, champion.scores
        n = min(len(ms), len(cs))
        diffs = [a - b for a, b in zip(ms[:n], cs[:n], strict=True)]
        abs_sum = sum(d if d >= 0 else -d for d in diffs)
        rows = max(n, compared)
        for t in targets:
            t.requests += 1
            t.agree += agree
            t.compared += compared
            t.rows += rows
            if n:
                t.pending.extend(diffs)
                t.abs_diff_sum += abs_sum
                t.xs.extend(ms[:n])
                t.ys.extend(cs[:n])
                if len(t.pending) >= FLUSH_EVERY:
                    t._flush()

    def _flush(self) -> None:
        # One digest update per many pairs: the per-call cost dominates single values.
        if self.pending:
            self.diff.batch_update(self.pending)
            self.pending = []

    def summary(self) -> dict[str, Any]:
        self._flush()
        out: dict[str, Any] = {"requests": self.requests, "rows": self.rows,
                               "errors": self.errors, "agreement": None}
        if self.compared:
            out["agreement"] = round(self.agree / self.compared, 6)
            out["agreement_ci"] = [round(v, 6) for v in wilson(self.agree, self.compared)]
        if self.diff.n_values:
            out["diff"] = digest_quantiles(self.diff, DIFF_QUANTILES)
            out["mean_abs_diff"] = round(self.abs_diff_sum / self.diff.n_values, 6)
            rho = spearman(list(self.xs), list(self.ys))
            out["spearman"] = None if rho is None or not math.isfinite(rho) else round(rho, 6)
        return out


@dataclass(slots=True)
class _Entry:
    at_ns: int
    models: dict[str, Scored] = field(default_factory=dict)
    paired: set[str] = field(default_factory=set)


class ScoreBook:
    """Recent requests' reduced scores by request id, bounded to the ``capacity`` most recent
    requests: pairs every model with the champion, and answers feedback for recent requests
    without reading the archive."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[str, _Entry] = OrderedDict()

    def add(self, request_id: str, model: str, scored: Scored, at_ns: int,
            champion: str | None) -> list[tuple[str, Scored, Scored]]:
        """File one score; returns the (model, its score, champion's score) pairs it
        completes (each pair once)."""
        entry = self.entries.get(request_id)
        if entry is None:
            entry = self.entries[request_id] = _Entry(at_ns)
            if len(self.entries) > self.capacity:
                self.entries.popitem(last=False)
        entry.models[model] = scored
        if champion is None or champion not in entry.models:
            return []
        champ = entry.models[champion]
        pairs = []
        for name, s in entry.models.items():
            if name != champion and name not in entry.paired:
                entry.paired.add(name)
                pairs.append((name, s, champ))
        return pairs

    def get(self, request_id: str) -> dict[str, Scored] | None:
        entry = self.entries.get(request_id)
        return None if entry is None else entry.models

    def at_ns(self, request_id: str) -> int | None:
        entry = self.entries.get(request_id)
        return None if entry is None else entry.at_ns
