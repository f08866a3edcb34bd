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

import functools
import math
import operator
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec
import numpy as np
from fastdigest import TDigest
from scipy import stats

from rendezvous.core.accuracy import wilson
from rendezvous.core.windows import digest_quantiles

__all__ = ["PairRows", "PairStats", "ScoreBook", "Scored", "label_key", "pair_rows", "reduce",
           "reduce_rows", "spearman"]

DIFF_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
RANK_SAMPLE = 2000
FLUSH_EVERY = 512


class Scored(msgspec.Struct, frozen=True, gc=False):
    """One model's answer to one request, reduced to what comparisons and accuracy need.
    (A struct outside the garbage collector's sight: the score book holds tens of thousands,
    and it only ever holds tuples of numbers and strings.)"""

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


_FAILED = Scored(error=True)
_LABEL_TYPES = frozenset((str, bool))
_NUMBER_TYPES = frozenset((float, int))
_second = operator.itemgetter(1)


def reduce(outputs: Mapping[str, Sequence[Any]], *, error: bool = False) -> Scored:
    """``Scored`` from a model's outputs: a classifier when it gives probabilities or
    non-numeric predictions. Scores are floats: outputs that give none raise here
    (``TypeError``, ``ValueError``), not later in the statistics.

    >>> reduce({"predictions": [1], "probabilities": [[0.25, 0.75]]})
    Scored(scores=(0.75,), labels=('1',), probabilities=((0.25, 0.75),), error=False)
    """
    return reduce_rows(outputs.get("predictions") or (), outputs.get("probabilities"),
                       error=error)


def reduce_rows(preds: Sequence[Any], probs: Sequence[Any] | None, *,
                error: bool = False) -> Scored:
    """``reduce`` of the outputs ``predictions`` and ``probabilities`` (rows already tuples
    are kept as they are). This runs on every score of every model, so each step is one
    builtin over the rows (``map``), not a Python loop."""
    if error:
        return _FAILED
    if probs is not None and len(probs) and isinstance(probs[0], list | tuple):
        rows = tuple(map(tuple, probs))
        scores = (tuple(map(float, map(_second, rows))) if set(map(len, rows)) == {2}
                  else tuple(float(r[1] if len(r) == 2 else max(r)) for r in rows))
        return Scored(scores, tuple(map(label_key, preds)), rows)
    types = set(map(type, preds))
    if types & _LABEL_TYPES:
        return Scored(labels=tuple(map(label_key, preds)))
    if types <= _NUMBER_TYPES:
        return Scored(scores=tuple(map(float, preds)))
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


class PairRows(NamedTuple):
    """What some (model, champion) pairs add to ``PairStats``."""

    requests: int
    errors: int  # pairs where one side failed
    agree: int
    compared: int  # rows with a class on both sides
    rows: int
    diffs: list[float]  # model minus champion, row by row
    abs_sums: list[float]  # sum of |diff| of each pair that has scores on both sides
    xs: list[float]  # the model's scores of those rows
    ys: list[float]  # the champion's


_labels_of = operator.attrgetter("labels")
_scores_of = operator.attrgetter("scores")


def pair_rows(pairs: Sequence[tuple[Scored, Scored]]) -> PairRows:
    """The rows of ``pairs`` compared: on each pair's common rows, whether the classes agree
    and the difference of the scores.

    Pairs of single-row requests with one score a side (and one class a side, or none) are
    the usual case: those go through whole columns at once (``map`` over all pairs); any
    other mix goes pair by pair (``_pair_rows_each``), with the same result.

    >>> one = reduce({"predictions": [1], "probabilities": [[0.25, 0.75]]})
    >>> two = reduce({"predictions": [0], "probabilities": [[0.5, 0.5]]})
    >>> r = pair_rows([(one, two), (one, one)]); r.agree, r.compared, r.diffs
    (1, 2, [0.25, 0.0])
    """
    ok = [p for p in pairs if not (p[0].error or p[1].error)]
    if not ok:
        return _pair_rows_each(pairs)
    mine, champ = zip(*ok, strict=True)
    ms, cs = list(map(_scores_of, mine)), list(map(_scores_of, champ))
    ml, cl = list(map(_labels_of, mine)), list(map(_labels_of, champ))
    classes = set(map(len, ml)) | set(map(len, cl))
    if set(map(len, ms)) | set(map(len, cs)) != {1} or classes not in ({0}, {1}):
        return _pair_rows_each(pairs)
    xs = [x for (x,) in ms]
    ys = [y for (y,) in cs]
    diffs = list(map(operator.sub, xs, ys))
    labelled = classes == {1}
    return PairRows(len(pairs), len(pairs) - len(ok),
                    sum(map(operator.eq, ml, cl)) if labelled else 0,
                    len(ok) if labelled else 0, len(ok), diffs, list(map(abs, diffs)), xs, ys)


def _pair_rows_each(pairs: Sequence[tuple[Scored, Scored]]) -> PairRows:
    """``pair_rows`` pair by pair: any number of rows, classes and scores on either side."""
    errors = agree = compared = rows = 0
    diffs: list[float] = []
    abs_sums: list[float] = []
    xs: list[float] = []
    ys: list[float] = []
    for model, champion in pairs:
        if model.error or champion.error:
            errors += 1
            continue
        ml, cl = model.labels, champion.labels
        k = 0
        if ml and cl:
            k = min(len(ml), len(cl))
            agree += sum(map(operator.eq, ml[:k], cl[:k]))
            compared += k
        ms, cs = model.scores, champion.scores
        n = min(len(ms), len(cs))
        rows += max(n, k)
        if n:
            d = list(map(operator.sub, ms[:n], cs[:n]))
            diffs += d
            abs_sums.append(sum(map(abs, d)))
            xs += ms[:n]
            ys += cs[:n]
    return PairRows(len(pairs), errors, agree, compared, rows, diffs, abs_sums, xs, ys)


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
        PairStats.add_all((self,), [(model, champion)])

    @staticmethod
    def add_all(targets: Sequence[PairStats], pairs: Sequence[tuple[Scored, Scored]]) -> None:
        """Requests' (model, champion) pairs, in order, into several accumulators (a window's
        and the cumulative one): the same as ``add`` pair by pair on each target, with the
        per-pair work (``pair_rows``) done once for all of them. This runs for every score
        of every model."""
        r = pair_rows(pairs)
        for t in targets:
            t.requests += r.requests
            t.errors += r.errors
            t.agree += r.agree
            t.compared += r.compared
            t.rows += r.rows
            if r.diffs:
                # Pair by pair, in order: the same float sum as adding one pair at a time.
                t.abs_diff_sum = functools.reduce(operator.add, r.abs_sums, t.abs_diff_sum)
                t.xs.extend(r.xs)
                t.ys.extend(r.ys)
                t.pending += r.diffs
                t._flush(FLUSH_EVERY)

    def _flush(self, chunk: int = 0) -> None:
        """Move pending differences into the digest: all of them (``chunk`` 0), or as many
        whole chunks of ``chunk`` as there are. One digest update per many values, as the
        per-call cost dominates; fixed chunks make the digest depend only on the order of
        the values, not on how they were grouped when added."""
        if not chunk:
            if self.pending:
                self.diff.batch_update(self.pending)
                self.pending = []
            return
        while len(self.pending) >= chunk:
            self.diff.batch_update(self.pending[:chunk])
            del self.pending[:chunk]

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


class _Entry(msgspec.Struct, gc=False):
    """One request's scores. Nothing here is ever tracked by the garbage collector (a dict
    of strings and gc=False structs is not; a set would be), so the tens of thousands the
    book holds cost its collections nothing."""

    at_ns: int
    models: dict[str, Scored] = {}
    paired: dict[str, bool] = {}  # the models already paired with the champion


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
                entry.paired[name] = True
                pairs.append((name, s, champ))
        return pairs

    def get(self, request_id: str) -> dict[str, Scored] | None:
        entry = self.entries.get(request_id)
        return None if entry is None else entry.models

    def at_ns(self, request_id: str) -> int | None:
        entry = self.entries.get(request_id)
        return None if entry is None else entry.at_ns
