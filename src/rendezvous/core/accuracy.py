"""Live accuracy from feedback labels, with confidence intervals, and its two alarms. Pure.

``LabelStats`` accumulates one model's labelled outcomes: accuracy (Wilson interval), log loss
and, for a binary classifier, AUC (Mann-Whitney, Hanley-McNeil interval) for classification;
MAE and RMSE (normal intervals; RMSE by the delta method) for regression.

Two sequential detectors watch the outcomes (1 = correct, or minus the absolute error):

- ``DropDetector``: a model's recent outcomes against its own baseline (its first
  ``baseline`` labels in this deployment), one-sided two-sample z-test on the last 500, 1,000,
  2,000 and 4,000 labels, run every ``check_every`` labels;
- ``PairedDetector``: a challenger against the champion on the *same* labelled requests,
  one-sided z-test on the mean paired difference of the last ``horizon`` pairs.

Each check spends ``rate_per_million · check_every / 10⁶`` of false-alarm probability, split
over its tests, so on stationary data the expected false alarms stay below ``rate_per_million``
(default 1) per million labels.

>>> s = LabelStats("classification")
>>> for ok in [1] * 90 + [0] * 10: s.add_outcome(correct=bool(ok))
>>> d = s.to_dict(); d["accuracy"], [round(x, 3) for x in d["accuracy_ci"]]
(0.9, [0.826, 0.945])
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["DropDetector", "LabelStats", "PairedDetector", "PairedOutcomes", "auc_ci",
           "mean_ci", "paired_bounds", "wilson"]

Z95 = 1.959963984540054
AUC_SAMPLE = 20_000  # labelled scores kept per model for the AUC (the most recent)
LOSS_EPS = 1e-15


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes out of ``n``."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def mean_ci(total: float, total_sq: float, n: int,
            z: float = Z95) -> tuple[float, float, float]:
    """(mean, low, high): normal interval from running sums."""
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = total / n
    var = max(0.0, total_sq / n - mean * mean) * n / max(1, n - 1)
    half = z * math.sqrt(var / n)
    return mean, mean - half, mean + half


def paired_bounds(n: int, mean: float, sd: float,
                  confidence: float) -> tuple[float, float] | None:
    """One-sided Student t bounds of a mean paired difference: ``(lower, upper)``, each
    holding at ``confidence`` on its own side; None with fewer than 2 pairs.

    >>> lo, hi = paired_bounds(100, 0.05, 0.3, 0.95); round(lo, 4), round(hi, 4)
    (0.0002, 0.0998)
    >>> paired_bounds(20, -1.0, 0.0, 0.95)
    (-1.0, -1.0)
    """
    if n < 2:
        return None
    half = float(stats.t.ppf(confidence, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


@dataclass(slots=True)
class PairedOutcomes:
    """One model's labelled outcomes minus the champion's on the same rows (1 = correct for
    classification; minus the absolute error for regression): count, mean and standard
    deviation of the differences, for the promotion gates and the watch after a promotion."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def add(self, diff: float) -> None:
        self.n += 1
        self.total += diff
        self.total_sq += diff * diff

    def to_dict(self) -> dict[str, Any]:
        if self.n == 0:
            return {"pairs": 0, "mean_diff": None, "sd": None}
        mean = self.total / self.n
        var = max(0.0, self.total_sq / self.n - mean * mean) * self.n / max(1, self.n - 1)
        return {"pairs": self.n, "mean_diff": round(mean, 9), "sd": round(math.sqrt(var), 9)}


def auc_ci(pos: Sequence[float], neg: Sequence[float],
           z: float = Z95) -> tuple[float, float, float] | None:
    """(AUC, low, high) from the scores of positive and negative examples, None when a class
    is missing. Ties count one half (Mann-Whitney)."""
    n1, n0 = len(pos), len(neg)
    if n1 == 0 or n0 == 0:
        return None
    ranks = stats.rankdata(np.concatenate([np.asarray(pos, float), np.asarray(neg, float)]))
    auc = float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n1 - 1) * (q1 - auc * auc) + (n0 - 1) * (q2 - auc * auc)) \
        / (n1 * n0)
    half = z * math.sqrt(max(var, 0.0))
    return auc, max(0.0, auc - half), min(1.0, auc + half)


def _r(x: float) -> float | None:
    return round(x, 6) if math.isfinite(x) else None


@dataclass(slots=True)
class LabelStats:
    """One model's labelled outcomes (cumulative or one window)."""

    kind: str  # "classification" | "regression"
    n: int = 0
    correct: int = 0
    loss_n: int = 0
    loss_sum: float = 0.0
    loss_sq: float = 0.0
    abs_sum: float = 0.0
    abs_sq: float = 0.0
    sq_sum: float = 0.0
    sq_sq: float = 0.0
    pos: deque[float] = field(default_factory=lambda: deque(maxlen=AUC_SAMPLE))
    neg: deque[float] = field(default_factory=lambda: deque(maxlen=AUC_SAMPLE))

    def add_outcome(self, *, correct: bool, prob_true: float | None = None,
                    score: float | None = None, positive: bool | None = None) -> None:
        """One labelled classification row: was it right, the probability the model gave the
        true class, and (binary) its score with whether the label is the positive class."""
        self.n += 1
        self.correct += int(correct)
        if prob_true is not None:
            loss = -math.log(min(1.0, max(prob_true, LOSS_EPS)))
            self.loss_n += 1
            self.loss_sum += loss
            self.loss_sq += loss * loss
        if score is not None and positive is not None:
            (self.pos if positive else self.neg).append(score)

    def add_error(self, error: float) -> None:
        """One labelled regression row: prediction minus label."""
        self.n += 1
        a = abs(error)
        self.abs_sum += a
        self.abs_sq += a * a
        self.sq_sum += a * a
        self.sq_sq += a ** 4

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "labels": self.n}
        if self.n == 0:
            return out
        if self.kind == "classification":
            out["accuracy"] = _r(self.correct / self.n)
            out["accuracy_ci"] = [_r(x) for x in wilson(self.correct, self.n)]
            if self.loss_n:
                m, lo, hi = mean_ci(self.loss_sum, self.loss_sq, self.loss_n)
                out["log_loss"], out["log_loss_ci"] = _r(m), [_r(lo), _r(hi)]
            auc = auc_ci(list(self.pos), list(self.neg))
            if auc is not None:
                out["auc"], out["auc_ci"] = _r(auc[0]), [_r(auc[1]), _r(auc[2])]
        else:
            m, lo, hi = mean_ci(self.abs_sum, self.abs_sq, self.n)
            out["mae"], out["mae_ci"] = _r(m), [_r(lo), _r(hi)]
            mse, mlo, mhi = mean_ci(self.sq_sum, self.sq_sq, self.n)
            out["rmse"] = _r(math.sqrt(mse))
            out["rmse_ci"] = [_r(math.sqrt(max(mlo, 0.0))), _r(math.sqrt(mhi))]
        return out


class _Window:
    """Running sums over the last ``size`` values."""

    def __init__(self, size: int) -> None:
        self.values: deque[float] = deque()
        self.size = size
        self.total = 0.0
        self.total_sq = 0.0

    def add(self, x: float) -> None:
        self.values.append(x)
        self.total += x
        self.total_sq += x * x
        if len(self.values) > self.size:
            old = self.values.popleft()
            self.total -= old
            self.total_sq -= old * old

    def restore(self, values: Sequence[float]) -> None:
        """Start over from saved ``values`` (the last ``size`` of them count)."""
        self.values.clear()
        self.total = self.total_sq = 0.0
        for x in values[-self.size:] if self.size else ():
            self.add(float(x))

    def moments(self) -> tuple[int, float, float]:
        n = len(self.values)
        if n == 0:
            return 0, 0.0, 0.0
        mean = self.total / n
        return n, mean, max(0.0, self.total_sq / n - mean * mean)


def _z_for(alpha: float) -> float:
    return float(stats.norm.isf(alpha))


@dataclass(slots=True)
class Check:
    """A detector's verdict at one check."""

    firing: bool
    evidence: dict[str, Any]


class DropDetector:
    """A model's recent outcomes against its own baseline (see the module docstring)."""

    HORIZONS = (500, 1000, 2000, 4000)

    def __init__(self, *, baseline: int = 2000, check_every: int = 100,
                 rate_per_million: float = 1.0, min_drop: float = 0.02) -> None:
        self.baseline_size = baseline
        self.baseline = _Window(baseline)
        self.recent = _Window(max(self.HORIZONS))
        self.check_every = check_every
        self.min_drop = min_drop
        alpha = rate_per_million * check_every / 1e6 / len(self.HORIZONS)
        self.z = _z_for(alpha)
        self.since_check = 0
        self.last: Check | None = None

    def to_state(self) -> dict[str, Any]:
        """What a restart needs to go on where this left off (``restore``)."""
        return {"baseline": list(self.baseline.values), "recent": list(self.recent.values),
                "since_check": self.since_check}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.baseline.restore(state.get("baseline") or [])
        self.recent.restore(state.get("recent") or [])
        self.since_check = int(state.get("since_check") or 0)

    def add(self, outcome: float) -> Check | None:
        """Feed one outcome (higher is better); returns a verdict every ``check_every``."""
        if len(self.baseline.values) < self.baseline_size:
            self.baseline.add(outcome)
            return None
        self.recent.add(outcome)
        self.since_check += 1
        if self.since_check < self.check_every:
            return None
        self.since_check = 0
        n0, m0, v0 = self.baseline.moments()
        values = list(self.recent.values)
        worst: dict[str, Any] = {}
        firing = False
        for h in self.HORIZONS:
            if len(values) < h and h != self.HORIZONS[0]:
                break
            tail = np.asarray(values[-h:], dtype=float)
            n1, m1, v1 = len(tail), float(tail.mean()), float(tail.var())
            se = math.sqrt(v0 / n0 + v1 / n1) or 1e-12
            z = (m0 - m1) / se
            hit = z >= self.z and (m0 - m1) >= self.min_drop
            if hit or not worst or z > worst["z"]:
                worst = {"horizon": n1, "baseline": round(m0, 6), "recent": round(m1, 6),
                         "drop": round(m0 - m1, 6), "z": round(z, 3),
                         "z_threshold": round(self.z, 3)}
            if hit:
                firing = True
                break
        self.last = Check(firing, worst)
        return self.last


class PairedDetector:
    """A challenger against the champion on the same labelled rows (see the docstring)."""

    def __init__(self, *, horizon: int = 5000, check_every: int = 100,
                 rate_per_million: float = 1.0, n_challengers: int = 1,
                 min_gain: float = 0.01) -> None:
        self.diffs = _Window(horizon)
        self.check_every = check_every
        self.min_gain = min_gain
        self.z = _z_for(rate_per_million * check_every / 1e6 / max(1, n_challengers))
        self.since_check = 0
        self.last: Check | None = None

    def to_state(self) -> dict[str, Any]:
        """What a restart needs to go on where this left off (``restore``)."""
        return {"diffs": list(self.diffs.values), "since_check": self.since_check}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.diffs.restore(state.get("diffs") or [])
        self.since_check = int(state.get("since_check") or 0)

    def add(self, diff: float) -> Check | None:
        """Feed challenger outcome minus champion outcome for one labelled row."""
        self.diffs.add(diff)
        self.since_check += 1
        if self.since_check < self.check_every:
            return None
        self.since_check = 0
        n, mean, var = self.diffs.moments()
        se = math.sqrt(var / n) if n else 0.0
        z = mean / se if se > 0 else (math.inf if mean > 0 else 0.0)
        firing = n >= 100 and z >= self.z and mean >= self.min_gain
        self.last = Check(firing, {"pairs": n, "mean_gain": round(mean, 6),
                                   "z": round(z, 3) if math.isfinite(z) else None,
                                   "z_threshold": round(self.z, 3)})
        return self.last
