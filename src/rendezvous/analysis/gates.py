"""Promotion gates and the watch after a promotion, evaluated on the monitor's documents.
Pure: documents and times are arguments.

``evaluate`` turns a policy's ``Gates`` (``core.policy``) and the deployment's ``compare``,
``accuracy`` and ``windows`` documents (``core.analytics``) into one ``GateRow`` per gate:
what it requires, what was observed, ``pass``, ``fail`` or ``not enough data``, and the
evidence. A promotion is refused when a row fails, or lacks data and is ``blocking``.

``watch_verdict`` says why a freshly promoted champion should be rolled back (nothing: keep
it): its error-rate alarm fires, the SLA-miss alarm went off after the promotion, or the
previous champion (now a challenger) beats it on the same labels by more than the margin.

>>> from rendezvous.core.policy import Gates, ModelSpec, Policy, Role
>>> pol = Policy(models=[ModelSpec("a@1", Role.CHAMPION), ModelSpec("b@1", Role.CHALLENGER)])
>>> docs = {"compare": {"models": {"b@1": {"requests": 50}}}, "accuracy": {}, "windows": []}
>>> report = evaluate(Gates(), pol, "b@1", **docs)
>>> report.passed, [r.outcome.value for r in report.rows][:1]
(False, ['not enough data'])
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rendezvous.core.policy import Gates, Policy

__all__ = ["MIN_PAIRS", "GateReport", "GateRow", "Outcome", "Watch", "evaluate",
           "watch_verdict"]

MIN_PAIRS = 10  # labelled pairs before the accuracy gate (or the watch) judges at all


class Outcome(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NO_DATA = "not enough data"


@dataclass(frozen=True, slots=True)
class GateRow:
    gate: str
    required: str
    observed: str
    outcome: Outcome
    blocking: bool = True  # whether "not enough data" refuses the promotion
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def refuses(self) -> bool:
        return self.outcome is Outcome.FAIL or (self.outcome is Outcome.NO_DATA
                                                and self.blocking)

    def to_dict(self) -> dict[str, Any]:
        return {"gate": self.gate, "required": self.required, "observed": self.observed,
                "outcome": self.outcome.value, "blocking": self.blocking,
                "refuses": self.refuses, "evidence": self.evidence}


@dataclass(frozen=True, slots=True)
class GateReport:
    """Every gate's row for promoting ``model`` over ``champion``."""

    model: str
    champion: str | None
    rows: tuple[GateRow, ...]

    @property
    def passed(self) -> bool:
        return not any(r.refuses for r in self.rows)

    @property
    def failing(self) -> list[GateRow]:
        return [r for r in self.rows if r.refuses]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "champion": self.champion, "passed": self.passed,
                "rows": [r.to_dict() for r in self.rows]}


def _f(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def evaluate(gates: Gates, policy: Policy, model: str, *, compare: Mapping[str, Any],
             accuracy: Mapping[str, Any], windows: Sequence[Mapping[str, Any]]) -> GateReport:
    """The gate rows for promoting ``model`` (see the module docstring)."""
    pair = (compare.get("models") or {}).get(model) or {}
    rows = [_requests(gates, pair)]
    if gates.min_agreement is not None:
        rows.append(_agreement(gates.min_agreement, pair))
    if gates.max_score_diff is not None:
        rows.append(_score_diff(gates.max_score_diff, pair))
    rows.append(_accuracy(gates, policy.champion, model, accuracy))
    mine = [w["models"][model] for w in windows
            if (w.get("models") or {}).get(model, {}).get("requests")]
    if gates.p99_within_wait:
        rows.append(_latency(policy, mine))
    rows.append(_errors(gates.max_error_rate, mine))
    return GateReport(model, policy.champion, tuple(rows))


def _requests(gates: Gates, pair: Mapping[str, Any]) -> GateRow:
    n = int(pair.get("requests", 0))
    return GateRow("requests", f">= {gates.min_requests} compared with the champion", str(n),
                   Outcome.PASS if n >= gates.min_requests else Outcome.NO_DATA,
                   evidence={"requests": n, "errors": pair.get("errors", 0)})


def _agreement(minimum: float, pair: Mapping[str, Any]) -> GateRow:
    agreement = pair.get("agreement")
    if agreement is None:
        return GateRow("agreement", f">= {minimum:g}", "no classes compared", Outcome.NO_DATA)
    return GateRow("agreement", f">= {minimum:g}", _f(agreement),
                   Outcome.PASS if agreement >= minimum else Outcome.FAIL,
                   evidence={"agreement": agreement, "ci": pair.get("agreement_ci"),
                             "rows": pair.get("rows")})


def _score_diff(maximum: float, pair: Mapping[str, Any]) -> GateRow:
    diff = pair.get("diff") or {}
    p5, p95 = diff.get("p5"), diff.get("p95")
    if p5 is None or p95 is None:
        return GateRow("score_diff", f"|diff| p5/p95 <= {maximum:g}", "no scores compared",
                       Outcome.NO_DATA)
    worst = max(abs(p5), abs(p95))
    return GateRow("score_diff", f"|diff| p5/p95 <= {maximum:g}", _f(worst),
                   Outcome.PASS if worst <= maximum else Outcome.FAIL,
                   evidence={"diff": dict(diff), "mean_abs_diff": pair.get("mean_abs_diff")})


def _paired(accuracy: Mapping[str, Any], champion: str | None,
            model: str) -> tuple[int, float, float]:
    """(pairs, mean, sd) of ``model``'s labelled outcomes minus ``champion``'s."""
    paired = accuracy.get("paired") or {}
    if champion is None or paired.get("champion") != champion:
        return 0, math.nan, math.nan
    p = (paired.get("models") or {}).get(model) or {}
    n = int(p.get("pairs", 0))
    if n == 0:
        return 0, math.nan, math.nan
    return n, float(p["mean_diff"]), float(p["sd"])


def _metric(accuracy: Mapping[str, Any], model: str) -> str:
    paired = ((accuracy.get("paired") or {}).get("models") or {}).get(model) or {}
    kind = paired.get("kind") or ((accuracy.get("models") or {}).get(model) or {}).get("kind")
    return "-MAE" if kind == "regression" else "accuracy"


def _bounds(n: int, mean: float, sd: float, conf: float) -> tuple[float, float] | None:
    """``core.accuracy.paired_bounds`` once there are ``MIN_PAIRS`` pairs. Imported here:
    it loads SciPy, which a serving process (which imports the gates for ``promote``) needs
    not otherwise."""
    if n < MIN_PAIRS:
        return None
    from rendezvous.core.accuracy import paired_bounds

    return paired_bounds(n, mean, sd, conf)


def _accuracy(gates: Gates, champion: str | None, model: str,
              accuracy: Mapping[str, Any]) -> GateRow:
    margin, conf = gates.accuracy_margin, gates.confidence
    metric = _metric(accuracy, model)
    required = (f"{metric} not worse than the champion's by > {margin:g} at "
                f"{conf:.0%}, >= {gates.min_labels} labelled pairs")
    n, mean, sd = _paired(accuracy, champion, model)
    bounds = _bounds(n, mean, sd, conf)
    evidence: dict[str, Any] = {"pairs": n, "metric": metric, "margin": margin,
                                "confidence": conf}
    if bounds is None:
        labels = (accuracy.get("feedback") or {}).get("joined", 0)
        # No labels at all: a deployment without feedback is not held back by default.
        blocking = gates.require_labels or labels > 0
        return GateRow("accuracy", required, f"{n} labelled pairs", Outcome.NO_DATA,
                       blocking, evidence)
    lo, hi = bounds
    evidence.update(mean_diff=mean, sd=sd, lower=round(lo, 6), upper=round(hi, 6))
    observed = f"diff {mean:+.4f} (one-sided bounds {lo:+.4f}, {hi:+.4f}), {n} pairs"
    if hi < -margin:
        outcome = Outcome.FAIL
    elif lo >= -margin and n >= gates.min_labels:
        outcome = Outcome.PASS
    else:
        outcome = Outcome.NO_DATA
    return GateRow("accuracy", required, observed, outcome, True, evidence)


def _latency(policy: Policy, mine: Sequence[Mapping[str, Any]]) -> GateRow:
    champ = next((m for m in policy.models if m.model == policy.champion), None)
    wait = champ.wait_ms if champ is not None and champ.wait_ms is not None \
        else policy.deadline_ms
    p99s = [p for w in mine if (p := (w.get("latency_ms") or {}).get("p99")) is not None]
    required = f"p99 <= {wait:g} ms (the champion's wait)"
    if not p99s:
        return GateRow("p99_latency", required, "no latencies", Outcome.NO_DATA)
    worst = max(p99s)
    return GateRow("p99_latency", required, f"{worst:.1f} ms (worst window)",
                   Outcome.PASS if worst <= wait else Outcome.FAIL,
                   evidence={"p99_ms": worst, "wait_ms": wait, "windows": len(p99s)})


def _errors(maximum: float, mine: Sequence[Mapping[str, Any]]) -> GateRow:
    total = sum(int(w.get("requests", 0)) for w in mine)
    errors = sum(int((w.get("statuses") or {}).get("error", 0)) for w in mine)
    required = f"<= {maximum:.2%}"
    if total == 0:
        return GateRow("error_rate", required, "no requests", Outcome.NO_DATA)
    rate = errors / total
    return GateRow("error_rate", required, f"{rate:.2%} of {total}",
                   Outcome.PASS if rate <= maximum else Outcome.FAIL,
                   evidence={"errors": errors, "requests": total, "rate": round(rate, 6)})


# -- the watch after a promotion ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Watch:
    """A promotion under watch: policy ``version`` made ``champion`` the champion in place of
    ``previous`` at ``started_ns``; watched until ``until_ns``."""

    version: int
    champion: str
    previous: str | None
    started_ns: int
    until_ns: int
    gates: Gates


def watch_verdict(watch: Watch, *, alarms: Sequence[Mapping[str, Any]],
                  accuracy: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Why the watched champion should be rolled back: one ``{"reason", "evidence"}`` per
    cause; empty when it holds up.

    >>> w = Watch(2, "b@1", "a@1", 100, 10**12, Gates())
    >>> watch_verdict(w, alarms=[{"name": "error_rate:b@1", "state": "firing",
    ...                           "since_ns": 50, "evidence": {"rate": 0.5}}], accuracy={})
    [{'reason': 'error_rate:b@1 is firing', 'evidence': {'rate': 0.5}}]
    """
    reasons = []
    for st in alarms:
        if st.get("state") != "firing":
            continue
        name = st.get("name", "")
        # An SLA-miss alarm that was firing before the promotion is not the new champion's.
        if name == f"error_rate:{watch.champion}" or (
                name == "sla_miss_rate" and st.get("since_ns", 0) >= watch.started_ns):
            reasons.append({"reason": f"{name} is firing", "evidence": st.get("evidence", {})})
    if watch.previous is not None:
        n, mean, sd = _paired(accuracy, watch.champion, watch.previous)
        bounds = _bounds(n, mean, sd, watch.gates.confidence)
        margin = watch.gates.accuracy_margin
        if bounds is not None and bounds[0] > margin:
            metric = _metric(accuracy, watch.champion)
            reasons.append({
                "reason": f"the previous champion {watch.previous} beats {watch.champion} on "
                          f"{metric} by more than {margin:g} at {watch.gates.confidence:.0%}",
                "evidence": {"pairs": n, "mean_gain": mean, "sd": sd,
                             "lower": round(bounds[0], 6), "margin": margin}})
    return reasons
