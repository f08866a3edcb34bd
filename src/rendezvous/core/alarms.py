"""Alarm rules, their settings, and their states. Pure: verdicts and times are arguments.

Rules (each on by default, thresholds from the policy spec's ``[alarms]`` table):

- ``canary_drift``: the canary's scores drifted from their reference (``core.drift``);
- ``column_drift``: at least one input column drifted from the training reference;
- ``accuracy_drop:<model>``: a model's labelled accuracy (or error) fell below its baseline;
- ``champion_worse:<challenger>``: a challenger beats the champion on the same labels;
- ``error_rate:<model>``: share of errors in the last closed window above ``max_error_rate``;
- ``sla_miss_rate``: share of ``sla_miss`` answers in the last window above the maximum;
- ``p99_over_deadline``: the champion's p99 latency in the last window above the deadline.

States: ``ok`` (never fired), ``firing`` (since the check that fired), ``resolved`` (since the
``clear_after``-th clean check in a row after firing); each carries the evidence of its last
check.

>>> book = AlarmBook()
>>> book.update("sla_miss_rate", True, {"rate": 0.2}, now_ns=5, clear_after=1)
'firing'
>>> book.update("sla_miss_rate", False, {"rate": 0.0}, now_ns=9, clear_after=1)
'resolved'
>>> book.states["sla_miss_rate"].since_ns
9
"""

from __future__ import annotations

from typing import Any

import msgspec

from rendezvous.errors import ConfigError

__all__ = ["AlarmBook", "AlarmSettings", "AlarmState", "window_checks"]


class AlarmSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``[alarms]`` table of a deployment spec; every key optional."""

    window_s: float = 60.0  # width of the tumbling windows
    windows_kept: int = 60  # closed windows kept (and persisted) per deployment
    canary_drift: bool = True
    column_drift: bool = True
    drift_rate_per_million: float = 0.05  # designed false alarms per 10⁶ rows, per detector
    drift_block_rows: int = 500
    drift_min_effect: float = 0.05  # KS / total-variation distance below which nobody cares
    accuracy_drop: bool = True
    accuracy_baseline_labels: int = 2000
    accuracy_min_drop: float = 0.02
    champion_worse: bool = True
    labels_rate_per_million: float = 1.0  # designed false alarms per 10⁶ labels
    max_error_rate: float = 0.05
    max_sla_miss_rate: float = 0.01
    p99_over_deadline: bool = True
    min_requests: int = 20  # a window with fewer requests is not judged
    clear_after: int = 3  # clean checks in a row before a firing alarm is resolved
    webhook_url: str = ""  # JSON POST of every state change; empty: none

    @classmethod
    def parse(cls, raw: dict[str, Any] | None) -> AlarmSettings:
        """Settings from a policy's ``alarms`` table; a bad key or value is a
        ``ConfigError`` naming it."""
        try:
            s = msgspec.convert(raw or {}, cls)
        except msgspec.ValidationError as exc:
            known = ", ".join(cls.__struct_fields__)
            raise ConfigError(f"[alarms]: {exc}; known keys: {known}") from None
        for name in ("window_s", "drift_rate_per_million", "labels_rate_per_million"):
            if getattr(s, name) <= 0:
                raise ConfigError(f"[alarms] {name} = {getattr(s, name)} must be positive")
        for name in ("windows_kept", "drift_block_rows", "accuracy_baseline_labels",
                     "clear_after"):
            if getattr(s, name) < 1:
                raise ConfigError(f"[alarms] {name} = {getattr(s, name)} must be at least 1")
        for name in ("max_error_rate", "max_sla_miss_rate", "drift_min_effect"):
            if not 0 <= getattr(s, name) <= 1:
                raise ConfigError(f"[alarms] {name} = {getattr(s, name)} must be in [0, 1]")
        return s


class AlarmState(msgspec.Struct, kw_only=True):
    name: str
    state: str = "ok"  # ok | firing | resolved
    since_ns: int = 0
    evidence: dict[str, Any] = {}
    fired: int = 0  # how many times it went to firing
    clean: int = 0  # clean checks in a row


class AlarmBook:
    """Every alarm's state; ``update`` returns the new state when it changed."""

    def __init__(self) -> None:
        self.states: dict[str, AlarmState] = {}

    def update(self, name: str, firing: bool, evidence: dict[str, Any], *, now_ns: int,
               clear_after: int = 3) -> str | None:
        st = self.states.get(name)
        if st is None:
            st = self.states[name] = AlarmState(name=name, since_ns=now_ns)
        st.evidence = evidence
        if firing:
            st.clean = 0
            if st.state != "firing":
                st.state, st.since_ns = "firing", now_ns
                st.fired += 1
                return st.state
            return None
        st.clean += 1
        if st.state == "firing" and st.clean >= clear_after:
            st.state, st.since_ns = "resolved", now_ns
            return st.state
        return None

    @property
    def firing(self) -> list[str]:
        return sorted(n for n, s in self.states.items() if s.state == "firing")

    def to_list(self) -> list[dict[str, Any]]:
        return [msgspec.to_builtins(s) for _, s in sorted(self.states.items())]

    def restore(self, states: list[dict[str, Any]]) -> None:
        for raw in states:
            st = msgspec.convert(raw, AlarmState)
            self.states[st.name] = st


def window_checks(summary: dict[str, Any], *, champion: str | None, deadline_ms: float,
                  settings: AlarmSettings) -> list[tuple[str, bool, dict[str, Any]]]:
    """Threshold rules on one closed window's summary: (alarm, firing, evidence) each.
    A window with fewer than ``min_requests`` requests is not judged (no verdict)."""
    n = summary.get("requests", 0)
    if n < settings.min_requests:
        return []
    checks: list[tuple[str, bool, dict[str, Any]]] = []
    misses = summary.get("reasons", {}).get("sla_miss", 0)
    checks.append(("sla_miss_rate", misses / n > settings.max_sla_miss_rate,
                   {"rate": round(misses / n, 6), "max": settings.max_sla_miss_rate,
                    "requests": n}))
    for model, m in summary.get("models", {}).items():
        total = m.get("requests", 0)
        if total < settings.min_requests:
            continue
        errors = m.get("statuses", {}).get("error", 0)
        checks.append((f"error_rate:{model}", errors / total > settings.max_error_rate,
                       {"rate": round(errors / total, 6), "max": settings.max_error_rate,
                        "requests": total}))
    if settings.p99_over_deadline and champion in summary.get("models", {}):
        p99 = summary["models"][champion].get("latency_ms", {}).get("p99")
        if p99 is not None:
            checks.append(("p99_over_deadline", p99 > deadline_ms,
                           {"model": champion, "p99_ms": p99, "deadline_ms": deadline_ms}))
    return checks
