"""Tumbling time windows and what one window keeps per model. Pure: times are arguments.

``WindowRing`` keeps one open accumulator (the current window, ``width_s`` long, aligned to
multiples of the width since the epoch) and a ring of the summaries of the last ``keep``
closed windows. Summaries are plain JSON-able dicts, so the ring round-trips through
``to_state``/``from_state`` and a restarted monitor keeps its history.

>>> ring = WindowRing(Counter, width_s=60, keep=2, summarize=dict)
>>> ring.at(0)["a"] += 1
>>> ring.at(61 * 10**9)["a"] += 2     # a later window: the first one closes
>>> [w["start_ns"] for w in ring.closed], dict(ring.current)
([0], {'a': 2})
>>> ring.closed[0]['a']
1
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from fastdigest import TDigest

__all__ = ["ModelWindow", "Summarizable", "WindowRing", "digest_quantiles"]

SCORE_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
SCORE_CHUNK = 512  # scores per digest update: the update's cost is mostly per call
LATENCY_QUANTILES = (0.5, 0.9, 0.99)


class Summarizable(Protocol):
    def summary(self) -> dict[str, Any]: ...


A = TypeVar("A")


def digest_quantiles(d: TDigest, qs: Iterable[float], digits: int = 6) -> dict[str, float | None]:
    """``{"p50": …}`` for each quantile, None for an empty digest."""
    return {f"p{round(q * 100)}": (round(d.quantile(q), digits) if d.n_values else None)
            for q in qs}


class WindowRing(Generic[A]):
    """The open window's accumulator and the summaries of recent closed windows."""

    def __init__(self, factory: Callable[[], A], *, width_s: float = 60.0, keep: int = 60,
                 summarize: Callable[[A], dict[str, Any]] | None = None) -> None:
        if width_s <= 0 or keep < 1:
            raise ValueError(f"window width {width_s} s and ring size {keep} must be positive")
        self.factory = factory
        self.width_ns = int(width_s * 1e9)
        self.closed: deque[dict[str, Any]] = deque(maxlen=keep)
        self.current: A = factory()
        self.start_ns: int | None = None
        self._summarize = summarize or (lambda acc: acc.summary())  # type: ignore[attr-defined]

    def _start_of(self, t_ns: int) -> int:
        return t_ns - t_ns % self.width_ns

    def holds(self, t_ns: int) -> bool:
        """Whether ``at(t_ns)`` returns the open accumulator without closing it: what a
        caller that adds a batch at once checks before each point."""
        return self.start_ns is not None and t_ns < self.start_ns + self.width_ns

    def roll(self, now_ns: int) -> list[dict[str, Any]]:
        """Close the open window if ``now_ns`` is past its end; returns what closed."""
        if self.start_ns is None:
            self.start_ns = self._start_of(now_ns)
            return []
        if now_ns < self.start_ns + self.width_ns:
            return []
        summary = {"start_ns": self.start_ns, "end_ns": self.start_ns + self.width_ns,
                   **self._summarize(self.current)}
        self.closed.append(summary)
        self.current = self.factory()
        self.start_ns = self._start_of(now_ns)
        return [summary]

    def at(self, t_ns: int) -> A:
        """The accumulator for data stamped ``t_ns``. Data older than the open window (late
        arrivals) is counted in the open window: closed summaries never change."""
        self.roll(t_ns)
        return self.current

    def series(self, *, include_open: bool = True) -> list[dict[str, Any]]:
        """Closed summaries, oldest first, then the open window's summary so far."""
        out = list(self.closed)
        if include_open and self.start_ns is not None:
            out.append({"start_ns": self.start_ns, "end_ns": self.start_ns + self.width_ns,
                        "open": True, **self._summarize(self.current)})
        return out

    def to_state(self) -> dict[str, Any]:
        return {"width_ns": self.width_ns, "closed": list(self.closed)}

    def restore(self, state: dict[str, Any]) -> None:
        """Take back the closed summaries a previous run saved (same window width only)."""
        if state.get("width_ns") == self.width_ns:
            self.closed.extend(state.get("closed", []))


@dataclass(slots=True)
class ModelWindow:
    """One model in one window: statuses, latency, how often chosen, score distributions."""

    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    chosen: int = 0
    latency: TDigest = field(default_factory=lambda: TDigest(max_centroids=100))
    scores: TDigest = field(default_factory=lambda: TDigest(max_centroids=100))
    classes: Counter[str] = field(default_factory=Counter)
    pending: list[float] = field(default_factory=list)  # scores not yet in ``scores``

    def add_outcome(self, status: str, latency_ms: float | None, chosen: bool) -> None:
        self.add_outcomes((status,), () if latency_ms is None or status == "error"
                          else (latency_ms,), int(chosen))

    def add_outcomes(self, statuses: Sequence[str], latencies_ms: Iterable[float],
                     chosen: int) -> None:
        """Many requests' ``add_outcome`` at once: their statuses, the latencies of those
        that did not fail (in order: the digest sees them one by one, as there), and how
        many chose this model."""
        self.requests += len(statuses)
        self.statuses.update(statuses)
        update = self.latency.update
        for ms in latencies_ms:
            update(ms)
        self.chosen += chosen

    def add_scores(self, scores: Sequence[float], labels: Iterable[str] = ()) -> None:
        """Score values (one per row) and, for a classifier, the predicted classes: of one
        request or of many (the digest sees the same values in the same chunks either way)."""
        if scores:
            self.pending += scores
            self._flush(SCORE_CHUNK)
        self.classes.update(labels)

    def _flush(self, chunk: int = 0) -> None:
        """Move pending scores into the digest: all (``chunk`` 0) or whole chunks only."""
        if not chunk:
            if self.pending:
                self.scores.batch_update(self.pending)
                self.pending = []
            return
        while len(self.pending) >= chunk:
            self.scores.batch_update(self.pending[:chunk])
            del self.pending[:chunk]

    def to_state(self) -> dict[str, Any]:
        """Everything, digests included, as JSON-able data (``from_state`` takes it back)."""
        self._flush()
        return {"requests": self.requests, "statuses": dict(self.statuses),
                "chosen": self.chosen, "latency": self.latency.to_dict(),
                "scores": self.scores.to_dict(), "classes": dict(self.classes)}

    @classmethod
    def from_state(cls, raw: dict[str, Any]) -> ModelWindow:
        return cls(requests=raw["requests"], statuses=Counter(raw["statuses"]),
                   chosen=raw["chosen"], latency=TDigest.from_dict(raw["latency"]),
                   scores=TDigest.from_dict(raw["scores"]), classes=Counter(raw["classes"]))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"requests": self.requests, "statuses": dict(self.statuses),
                               "chosen": self.chosen,
                               "latency_ms": digest_quantiles(self.latency, LATENCY_QUANTILES,
                                                              3)}
        self._flush()
        if self.scores.n_values:
            out["score"] = {"n": self.scores.n_values,
                            **digest_quantiles(self.scores, SCORE_QUANTILES)}
        if self.classes:
            total = sum(self.classes.values())
            out["class_rates"] = {k: round(v / total, 6) for k, v in self.classes.items()}
        return out
