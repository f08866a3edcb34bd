"""Label-free drift: live data against a reference recorded at registration. Pure.

The live rows of each column are cut into *blocks* (``block_rows`` rows, default 500, or fewer
when a time window closes first). When a block closes, every column is tested twice: the block
alone (fast reaction to a large shift) and the union of the last ``long_blocks`` blocks (power
for a small one). The test depends on the column and the sample size:

- numeric: the two-sample Kolmogorov-Smirnov statistic evaluated at the reference's bin edges
  (its 5 %, 10 %, … quantiles). Evaluating the supremum on a subset of points can only make it
  smaller, so the Kolmogorov p-value stays valid (conservative); the effective sample size
  ``n·m/(n+m)`` counts the reference's own size ``m``, so a small training sample widens the
  threshold instead of raising false alarms.
- categorical: the chi-square test of homogeneity on the 2 x K table of counts (reference vs
  live), categories with fewer than 5 reference rows pooled.

Large samples make every test significant for differences nobody cares about, so a column is
*drifted* only when its test rejects **and** its effect is at least ``min_effect`` (KS distance
or total-variation distance, default 0.05).

False alarms by design: each closed block of ``n`` rows spends ``rate_per_million · n / 10⁶``
of false-alarm probability, split evenly (Bonferroni) over every test run at that block
(columns x 2 horizons). Summed over blocks, the expected number of false alarms on stationary
data is at most ``rate_per_million`` per million rows, whatever the traffic rate, block size or
number of columns: ``DESIGNED_RATE`` = 0.05 for the input columns plus 0.05 for the canary's
scores, so 0.1 per million rows in all (the goal is ≤ 1).

>>> ref = {"x": {"kind": "numeric", "n": 1000, "edges": [0.0], "counts": [500, 500]}}
>>> det = DriftDetector(ref, block_rows=400)
>>> reports = det.add({"x": [1.0] * 400})
>>> reports[0].drifted, round(reports[0].columns["x"].effect, 2)
(['x'], 0.5)
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import special, stats

from rendezvous.core.reference import OTHER, bin_counts

__all__ = ["DESIGNED_RATE", "ColumnTest", "DriftDetector", "DriftReport", "chi2_homogeneity",
           "gather_columns", "ks_binned"]

DESIGNED_RATE = 0.05  # expected false alarms per 1,000,000 rows, per detector
MIN_EXPECTED = 5  # reference rows a category needs to stand on its own in the chi-square


def ks_binned(ref_counts: Sequence[int], live_counts: Sequence[int]) -> tuple[float, float]:
    """(KS distance, p-value) between two samples given as counts over the same bins.

    >>> d, p = ks_binned([50, 50], [50, 50])
    >>> d, p
    (0.0, 1.0)
    >>> d, p = ks_binned([500, 500], [0, 100]); round(d, 2), p < 1e-10
    (0.5, True)
    """
    r = np.asarray(ref_counts, dtype=float)
    x = np.asarray(live_counts, dtype=float)
    m, n = r.sum(), x.sum()
    if m == 0 or n == 0:
        return 0.0, 1.0
    d = float(np.max(np.abs(np.cumsum(r)[:-1] / m - np.cumsum(x)[:-1] / n), initial=0.0))
    ne = m * n / (m + n)
    # Stephens' small-sample correction of the asymptotic Kolmogorov distribution.
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    return d, float(min(1.0, special.kolmogorov(lam))) if d > 0 else 1.0


def chi2_homogeneity(ref_counts: Mapping[str, int],
                     live_counts: Mapping[str, int]) -> tuple[float, float, float]:
    """(chi-square statistic, p-value, total-variation distance) of two categorical samples.

    >>> chi2_homogeneity({"a": 50, "b": 50}, {"a": 50, "b": 50})[1]
    1.0
    """
    keep = {k for k, c in ref_counts.items() if c >= MIN_EXPECTED and k != OTHER}
    r: Counter[str] = Counter()
    x: Counter[str] = Counter()
    for k, c in ref_counts.items():
        r[k if k in keep else OTHER] += c
    for k, c in live_counts.items():
        x[k if k in keep else OTHER] += c
    cats = sorted(set(r) | set(x))
    m, n = sum(r.values()), sum(x.values())
    if m == 0 or n == 0 or len(cats) < 2:
        return 0.0, 1.0, 0.0
    table = np.array([[r[c] for c in cats], [x[c] for c in cats]], dtype=float)
    expected = table.sum(axis=0, keepdims=True) * table.sum(axis=1, keepdims=True) / (m + n)
    with np.errstate(divide="ignore", invalid="ignore"):
        cells = np.where(expected > 0, (table - expected) ** 2 / expected, 0.0)
    stat = float(cells.sum())
    df = len(cats) - 1
    tv = 0.5 * float(np.abs(table[0] / m - table[1] / n).sum())
    return stat, float(stats.chi2.sf(stat, df)), tv


@dataclass(frozen=True, slots=True)
class ColumnTest:
    """One column's test at one horizon."""

    test: str  # "ks" | "chi2"
    rows: int
    statistic: float
    p_value: float
    effect: float  # KS distance or total-variation distance
    drifted: bool

    def to_dict(self) -> dict[str, Any]:
        return {"test": self.test, "rows": self.rows, "statistic": round(self.statistic, 6),
                "p_value": self.p_value, "effect": round(self.effect, 6),
                "drifted": self.drifted}


@dataclass(slots=True)
class DriftReport:
    """The outcome of the tests at one closed block."""

    rows_seen: int  # rows since the detector started, when the block closed
    block_rows: int
    alpha: float  # significance level of each test at this block (after correction)
    columns: dict[str, ColumnTest] = field(default_factory=dict)  # worst horizon per column

    @property
    def drifted(self) -> list[str]:
        return sorted(c for c, t in self.columns.items() if t.drifted)

    def to_dict(self) -> dict[str, Any]:
        return {"rows_seen": self.rows_seen, "block_rows": self.block_rows,
                "alpha": self.alpha, "drifted": self.drifted,
                "columns": {c: t.to_dict() for c, t in sorted(self.columns.items())}}


def gather_columns(requests: Sequence[tuple[Mapping[str, Sequence[Any]], int]]
                   ) -> dict[str, list[Any]]:
    """The columns of several requests (``(inputs, n_rows)`` each) as one set of aligned
    columns, for one ``DriftDetector.add``: a column a request lacks holds None for its rows.

    >>> gather_columns([({"a": [1, 2], "b": ["x", "y"]}, 2), ({"a": [3]}, 1)])
    {'a': [1, 2, 3], 'b': ['x', 'y', None]}
    """
    columns: dict[str, list[Any]] = {}
    rows = 0
    for inputs, n_rows in requests:
        for name, values in inputs.items():
            col = columns.get(name)
            if col is None:
                col = columns[name] = [None] * rows  # a column missing so far
            col.extend(values)
        rows += n_rows
        for col in columns.values():  # keep every column aligned with the rows
            if len(col) < rows:
                col.extend([None] * (rows - len(col)))
    return columns


class _Column:
    """Live counts of one column, block by block."""

    def __init__(self, ref: dict[str, Any]) -> None:
        self.ref = ref
        self.numeric = ref["kind"] == "numeric"
        self.pending: list[Any] = []
        self.blocks: deque[Any] = deque()

    def close(self, keep: int) -> None:
        if self.numeric:
            try:
                arr = np.asarray(self.pending, dtype=float)
            except (TypeError, ValueError):  # tensors or strings where numbers were expected
                arr = np.zeros(0)
            counts: Any = bin_counts(arr.ravel() if arr.ndim == 1 else np.zeros(0),
                                     self.ref["edges"])
        else:
            counts = Counter(str(v) for v in self.pending if v is not None)
        self.pending = []
        self.blocks.append(counts)
        while len(self.blocks) > keep:
            self.blocks.popleft()

    def test(self, horizon: int, alpha: float, min_effect: float) -> ColumnTest:
        recent = list(self.blocks)[-horizon:]
        if self.numeric:
            live = np.sum(recent, axis=0)
            d, p = ks_binned(self.ref["counts"], live)
            return ColumnTest("ks", int(live.sum()), d, p, d, p < alpha and d >= min_effect)
        total: Counter[str] = Counter()
        for c in recent:
            total.update(c)
        stat, p, tv = chi2_homogeneity(self.ref["counts"], total)
        return ColumnTest("chi2", sum(total.values()), stat, p, tv,
                          p < alpha and tv >= min_effect)


class DriftDetector:
    """Tests live columns against their references (see the module docstring).

    ``references``: column name -> ``core.reference.column_reference`` dict. Columns whose
    reference is empty are ignored; so are live columns without a reference.
    """

    def __init__(self, references: Mapping[str, dict[str, Any]], *,
                 rate_per_million: float = DESIGNED_RATE, block_rows: int = 500,
                 long_blocks: int = 8, min_effect: float = 0.05) -> None:
        self.columns = {name: _Column(ref) for name, ref in references.items()
                        if ref.get("kind") in ("numeric", "categorical")}
        self.rate = rate_per_million
        self.block_rows = block_rows
        self.long_blocks = long_blocks
        self.min_effect = min_effect
        self.pending_rows = 0
        self.rows_seen = 0
        self.blocks_closed = 0
        self.last: DriftReport | None = None

    def add(self, columns: Mapping[str, Sequence[Any]]) -> list[DriftReport]:
        """Count rows (columns of equal length); returns the reports of blocks this closed."""
        n = max((len(v) for v in columns.values()), default=0)
        reports: list[DriftReport] = []
        start = 0
        while start < n:
            take = min(n - start, self.block_rows - self.pending_rows)
            for name, col in self.columns.items():
                values = columns.get(name)
                if values is not None:
                    col.pending.extend(values[start:start + take])
            self.pending_rows += take
            self.rows_seen += take
            start += take
            if self.pending_rows >= self.block_rows:
                reports.append(self._close())
        return reports

    def flush(self, min_rows: int = 50) -> DriftReport | None:
        """Close the current block early (a time window ended) if it has ``min_rows``."""
        if self.pending_rows < min_rows or not self.columns:
            return None
        return self._close()

    def _close(self) -> DriftReport:
        rows = self.pending_rows
        self.pending_rows = 0
        self.blocks_closed += 1
        horizons = [1, self.long_blocks] if self.blocks_closed > 1 and self.long_blocks > 1 \
            else [1]
        n_tests = max(1, len(self.columns) * len(horizons))
        alpha = self.rate * rows / 1e6 / n_tests
        report = DriftReport(self.rows_seen, rows, alpha)
        for name, col in self.columns.items():
            col.close(self.long_blocks)
            tests = [col.test(h, alpha, self.min_effect) for h in horizons]
            # Report the horizon that drifted, else the one closest to rejecting.
            report.columns[name] = min(tests, key=lambda t: (not t.drifted, t.p_value))
        self.last = report
        return report
