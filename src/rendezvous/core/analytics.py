"""One deployment's meta-analytics, assembled from the pure pieces. Pure: no I/O, no clocks.

``DeploymentAnalytics`` takes what the monitor reads (results, scores, inputs, feedback),
keeps per-window and cumulative statistics, runs the drift and accuracy detectors and the
alarm rules, and answers the JSON documents of ``/compare``, ``/drift``, ``/accuracy`` and
``/alarms``. Alarm state changes are queued in ``events`` for the webhook.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rendezvous.core.accuracy import DropDetector, LabelStats, PairedDetector, PairedOutcomes
from rendezvous.core.alarms import AlarmBook, AlarmSettings, window_checks
from rendezvous.core.compare import PairStats, ScoreBook, Scored, label_key, reduce
from rendezvous.core.drift import DriftDetector, DriftReport
from rendezvous.core.labelled import HORIZON_NS, LabelledIds
from rendezvous.core.messages import Feedback, Reason, ResultSummary, Score, Status
from rendezvous.core.windows import ModelWindow, WindowRing

__all__ = ["DeploymentAnalytics", "WindowAcc"]

# too_late: the request is older than the label horizon (see ``core.labelled``)
FEEDBACK_OUTCOMES = ("joined", "duplicate", "unknown", "invalid", "too_late")
# Recent requests' scores kept in memory: enough to pair every model with the champion (a few
# seconds) and to join prompt labels; older labels are joined from the score archive.
SCORE_BOOK = 20_000


_ERROR = Status.ERROR


class Timed(Protocol):
    """What ``add_reduced`` reads of a score besides its reduction."""

    @property
    def request_id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def started_ns(self) -> int: ...
    @property
    def finished_ns(self) -> int: ...


@dataclass(slots=True)
class _Outcomes:
    """One model's outcomes in a batch of results."""

    statuses: list[Status] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # of those that did not fail
    chosen: int = 0


@dataclass(slots=True)
class _Gathered:
    """What a batch of results or scores adds to one window (and to the totals), gathered
    first so that each accumulator is updated once per batch instead of once per record."""

    requests: int = 0
    reasons: list[Reason] = field(default_factory=list)
    outcomes: dict[str, _Outcomes] = field(default_factory=dict)
    scores: dict[str, tuple[list[float], list[str]]] = field(default_factory=dict)
    pairs: dict[str, list[tuple[Scored, Scored]]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.requests or self.scores or self.pairs)

    def clear(self) -> None:
        self.requests = 0
        self.reasons = []
        self.outcomes = {}
        self.scores = {}
        self.pairs = {}


@dataclass(slots=True)
class WindowAcc:
    """Everything one window keeps."""

    requests: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    models: dict[str, ModelWindow] = field(default_factory=dict)
    pairs: dict[str, PairStats] = field(default_factory=dict)
    labels: dict[str, LabelStats] = field(default_factory=dict)
    drift: dict[str, dict[str, Any]] = field(default_factory=dict)  # worst report per kind

    def model(self, name: str) -> ModelWindow:
        m = self.models.get(name)
        if m is None:
            m = self.models[name] = ModelWindow()
        return m

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "reasons": dict(self.reasons),
            "models": {m: w.summary() for m, w in sorted(self.models.items())},
            "compare": {m: p.summary() for m, p in sorted(self.pairs.items())},
            "accuracy": {m: s.to_dict() for m, s in sorted(self.labels.items())},
            "drift": self.drift,
        }


def _drift_point(report: DriftReport) -> dict[str, Any]:
    """What a window remembers of a drift check: per column -log10(p), effect, threshold."""
    import math

    def lp(p: float) -> float:
        return round(-math.log10(max(p, 1e-300)), 4)

    return {"alpha": report.alpha, "threshold": lp(report.alpha), "drifted": report.drifted,
            "columns": {c: {"neg_log10_p": lp(t.p_value), "effect": round(t.effect, 6)}
                        for c, t in report.columns.items()}}


class DeploymentAnalytics:
    """See the module docstring. ``references``: model -> the ``reference`` recorded in its
    version's ``data_summary`` at registration (may be empty). ``label_horizon_ns``: how old
    a request may be for its label to count (``core.labelled``)."""

    def __init__(self, deployment: str, *, settings: AlarmSettings | None = None,
                 label_horizon_ns: int = HORIZON_NS) -> None:
        self.deployment = deployment
        self.settings = settings or AlarmSettings()
        s = self.settings
        self.ring: WindowRing[WindowAcc] = WindowRing(WindowAcc, width_s=s.window_s,
                                                      keep=s.windows_kept)
        self.book = ScoreBook(capacity=SCORE_BOOK)
        self.pairs: dict[str, PairStats] = {}
        # Per model since the monitor first started (kept across restarts): what each window
        # keeps, cumulative.
        self.totals: dict[str, ModelWindow] = {}
        self.labels: dict[str, LabelStats] = {}
        self.alarms = AlarmBook()
        self.events: deque[dict[str, Any]] = deque(maxlen=1000)
        self.champion: str | None = None
        self.canary: str | None = None
        self.deadline_ms = 100.0
        self.models: list[str] = []
        self.column_drift: DriftDetector | None = None
        self.canary_drift: DriftDetector | None = None
        self.drops: dict[str, DropDetector] = {}
        self.paired: dict[str, PairedDetector] = {}
        # model -> its labelled outcomes minus the champion's, since that champion took over
        self.paired_labels: dict[str, PairedOutcomes] = {}
        self.paired_with: str | None = None  # the champion of ``paired_labels``
        self.class_cols: dict[str, dict[str, int]] = {}  # model -> class label -> column
        self.labelled = LabelledIds(horizon_ns=label_horizon_ns)
        self.feedback: Counter[str] = Counter({k: 0 for k in FEEDBACK_OUTCOMES})
        self._judged_ns = -1  # start of the last window the threshold rules have judged

    # -- configuration ------------------------------------------------------------------------

    def set_policy(self, *, models: Sequence[str], champion: str | None, canary: str | None,
                   deadline_ms: float, references: Mapping[str, dict[str, Any]]) -> None:
        """Follow a policy (version): which model is champion and canary, and their
        references. Detectors restart only when their reference changes."""
        s = self.settings
        if champion != self.champion or self.column_drift is None:
            cols = (references.get(champion or "") or {}).get("columns") or {}
            self.column_drift = DriftDetector(
                cols, rate_per_million=s.drift_rate_per_million, block_rows=s.drift_block_rows,
                min_effect=s.drift_min_effect) if cols and s.column_drift else None
        if champion != self.paired_with:  # label evidence is paired with one champion
            self.paired_labels, self.paired_with, self.paired = {}, champion, {}
        if canary != self.canary or (canary and self.canary_drift is None):
            scores = (references.get(canary or "") or {}).get("scores") or {}
            # One series is enough: the score when the model has one, else the prediction.
            pick = {k: v for k, v in scores.items() if k == "score"} or scores
            self.canary_drift = DriftDetector(
                pick, rate_per_million=s.drift_rate_per_million, block_rows=s.drift_block_rows,
                min_effect=s.drift_min_effect) if pick and s.canary_drift else None
        self.champion, self.canary = champion, canary
        self.deadline_ms = deadline_ms
        self.models = list(models)

    # -- intake -------------------------------------------------------------------------------

    def add_result(self, result: ResultSummary) -> None:
        self.add_results((result,))

    def add_results(self, results: Iterable[ResultSummary]) -> None:
        """Results, in order: the same as ``add_result`` one by one, gathered per window and
        model first (``_Gathered``) so that each accumulator is updated once per batch."""
        g = _Gathered()
        ring = self.ring
        try:
            for result in results:
                at = result.received_ns or 0
                if not ring.holds(at):
                    self._apply(g)
                    ring.at(at)
                g.requests += 1
                g.reasons.append(result.reason)
                chosen = result.model
                for model, outcome in result.models.items():
                    status = outcome.status
                    o = g.outcomes.get(model)
                    if o is None:
                        o = g.outcomes[model] = _Outcomes()
                    o.statuses.append(status)
                    if outcome.latency_ms is not None and status is not _ERROR:
                        o.latencies.append(outcome.latency_ms)
                    if model == chosen:
                        o.chosen += 1
        finally:  # what came before a record that raised counts, as one by one
            self._apply(g)

    def _total(self, model: str) -> ModelWindow:
        t = self.totals.get(model)
        if t is None:
            t = self.totals[model] = ModelWindow()
        return t

    def add_scores(self, scores: Sequence[Score]) -> None:
        """Scores, in order (e.g. a worker's batch)."""
        self.add_reduced([(s, self.learn(s.model, reduce(s.outputs, error=s.error is not None)))
                          for s in scores])

    def learn(self, model: str, scored: Scored) -> Scored:
        """Until every column is named, which of ``model``'s probability columns is which
        class; returns ``scored``. Raises on outputs of an odd shape (``TypeError``,
        ``ValueError``), as ``core.compare.reduce`` does, so that a caller can skip those
        alone: what was reduced and learnt without error, ``add_reduced`` counts without
        error."""
        if scored.probabilities and len(self.class_cols.get(model, ())) < len(
                scored.probabilities[0]):  # every column named: nothing left to learn
            self._learn_classes(model, scored)
        return scored

    def add_reduced(self, scores: Sequence[tuple[Timed, Scored]]) -> None:
        """Scores (a ``Score`` or a ``ScoreSummary``) with their reductions (``reduce`` and
        ``learn``), in order. The same as one at a time, but what each model's window and
        total accumulators get is gathered first (``_Gathered``) and added once per window,
        and the pairs with the champion go through ``PairStats`` as one list."""
        g = _Gathered()
        ring, book, champion, canary_model = self.ring, self.book, self.champion, self.canary
        canary: list[float] = []
        canary_labels: list[str] = []
        canary_at = 0
        try:
            for s, scored in scores:
                at = s.finished_ns or s.started_ns
                if not ring.holds(at):
                    self._apply(g)
                    ring.at(at)
                model = s.model
                mine = g.scores.get(model)
                if mine is None:
                    mine = g.scores[model] = ([], [])
                mine[0].extend(scored.scores)
                mine[1].extend(scored.labels)
                for other, theirs, champ in book.add(s.request_id, model, scored, at,
                                                     champion):
                    pairs = g.pairs.get(other)
                    if pairs is None:
                        pairs = g.pairs[other] = []
                    pairs.append((theirs, champ))
                if model == canary_model and not scored.error:
                    canary.extend(scored.scores)
                    canary_labels.extend(scored.labels)
                    canary_at = at
        finally:  # what came before a score that raised counts, as one by one
            self._apply(g)
        if canary or canary_labels:  # one call per batch: the detector's cost is per call
            self.add_canary_scores(canary, canary_labels, canary_at)

    def _apply(self, g: _Gathered) -> None:
        """Add what was gathered to the open window and the totals, and start afresh."""
        if g.empty:
            return
        acc = self.ring.current
        acc.requests += g.requests
        acc.reasons.update(map(str, g.reasons))  # a StrEnum's str is its value
        for model, o in g.outcomes.items():
            statuses = list(map(str, o.statuses))
            acc.model(model).add_outcomes(statuses, o.latencies, o.chosen)
            self._total(model).add_outcomes(statuses, o.latencies, o.chosen)
        for model, (values, labels) in g.scores.items():
            acc.model(model).add_scores(values, labels)
            self._total(model).add_scores(values, labels)
        for model, pairs in g.pairs.items():
            window, total = acc.pairs.get(model), self.pairs.get(model)
            if window is None:
                window = acc.pairs[model] = PairStats()
            if total is None:
                total = self.pairs[model] = PairStats()
            PairStats.add_all((window, total), pairs)
        g.clear()

    def _learn_classes(self, model: str, scored: Scored) -> None:
        """Which probability column is which class: a classifier predicts the class of its
        highest probability, so each (prediction, argmax) pair names one column."""
        cols = self.class_cols.get(model)
        if cols is None:
            cols = self.class_cols[model] = {}
        for label, probs in zip(scored.labels, scored.probabilities, strict=False):
            if label not in cols:
                cols[label] = max(range(len(probs)), key=probs.__getitem__)

    def add_canary_scores(self, scores: Sequence[float], labels: Sequence[str],
                          at_ns: int) -> None:
        """The canary's scores (and predicted classes) of some rows, for its drift test."""
        if self.canary_drift is not None:
            series: dict[str, Sequence[Any]] = {"score": scores, "prediction": labels}
            for report in self.canary_drift.add(series):
                self._drift("canary_drift", report, at_ns)

    def add_inputs(self, columns: Mapping[str, Sequence[Any]], at_ns: int) -> None:
        if self.column_drift is not None:
            for report in self.column_drift.add(columns):
                self._drift("column_drift", report, at_ns)

    def _drift(self, kind: str, report: DriftReport, at_ns: int) -> None:
        point = _drift_point(report)
        acc = self.ring.at(at_ns)
        prev = acc.drift.get(kind)
        if prev is None or report.drifted or not prev["drifted"]:
            acc.drift[kind] = point
        self._alarm(kind, bool(report.drifted), report.to_dict(), at_ns)

    def add_feedback(self, fb: Feedback, scored: Mapping[str, Scored] | None,
                     at_ns: int) -> str:
        """Join one label with every model's score of its request; returns the outcome
        (``joined``, ``duplicate``, ``unknown``, ``invalid`` or ``too_late``), counted once
        per id."""
        verdict = self.labelled.check(fb.request_id, at_ns)
        if verdict != "new":
            self.feedback[verdict] += 1
            return verdict
        if not scored:
            self.feedback["unknown"] += 1
            return "unknown"
        labels = [label_key(v) for v in fb.labels]
        acc = self.ring.at(at_ns)
        outcomes: dict[str, list[float]] = {}
        for model, sc in scored.items():
            if sc.error:
                continue
            got = self._outcomes(model, sc, labels, fb.labels)
            if got is None:
                self.feedback["invalid"] += 1
                return "invalid"
            outcomes[model] = got
        self.labelled.add(fb.request_id, at_ns)
        self.feedback["joined"] += 1
        for model, sc in scored.items():
            if model not in outcomes:
                continue
            kind = "classification" if sc.classifier else "regression"
            for target in (self.labels, acc.labels):
                stats = target.get(model)
                if stats is None:
                    stats = target[model] = LabelStats(kind)
                self._count(stats, model, sc, fb.labels)
        self._label_alarms(outcomes, at_ns)
        return "joined"

    def _outcomes(self, model: str, sc: Scored, labels: list[str],
                  raw: list[Any]) -> list[float] | None:
        if sc.classifier:
            return [float(p == y) for p, y in zip(sc.labels, labels, strict=False)]
        try:
            return [-abs(p - float(y)) for p, y in zip(sc.scores, raw, strict=False)]
        except (TypeError, ValueError):
            return None

    def _count(self, stats: LabelStats, model: str, sc: Scored, raw: list[Any]) -> None:
        if not sc.classifier:
            for p, y in zip(sc.scores, raw, strict=False):
                stats.add_error(p - float(y))
            return
        cols = self.class_cols.get(model, {})
        for i, (pred, y) in enumerate(zip(sc.labels, raw, strict=False)):
            y = label_key(y)
            probs = sc.probabilities[i] if i < len(sc.probabilities) else ()
            col = cols.get(y)
            prob_true = probs[col] if probs and col is not None else None
            binary = len(probs) == 2 and col is not None
            stats.add_outcome(correct=pred == y, prob_true=prob_true,
                              score=probs[1] if binary else None,
                              positive=(col == 1) if binary else None)

    def _label_alarms(self, outcomes: dict[str, list[float]], at_ns: int) -> None:
        s = self.settings
        for model, values in outcomes.items():
            if s.accuracy_drop:
                det = self.drops.get(model)
                if det is None:
                    det = self.drops[model] = DropDetector(
                        baseline=s.accuracy_baseline_labels, min_drop=s.accuracy_min_drop,
                        rate_per_million=s.labels_rate_per_million)
                for v in values:
                    check = det.add(v)
                    if check is not None:
                        self._alarm(f"accuracy_drop:{model}", check.firing, check.evidence,
                                    at_ns)
        champ = outcomes.get(self.champion or "")
        if champ is None:
            return
        for model, values in outcomes.items():
            if model != self.champion:
                paired = self.paired_labels.get(model)
                if paired is None:
                    paired = self.paired_labels[model] = PairedOutcomes()
                for mine, theirs in zip(values, champ, strict=False):
                    paired.add(mine - theirs)
        if not s.champion_worse:
            return
        rivals = [m for m in outcomes if m != self.champion and m != self.canary]
        for model in rivals:
            det2 = self.paired.get(model)
            if det2 is None:
                det2 = self.paired[model] = PairedDetector(
                    rate_per_million=s.labels_rate_per_million, n_challengers=len(rivals))
            for mine, theirs in zip(outcomes[model], champ, strict=False):
                check = det2.add(mine - theirs)
                if check is not None:
                    self._alarm(f"champion_worse:{model}", check.firing, check.evidence, at_ns)

    def _alarm(self, name: str, firing: bool, evidence: dict[str, Any], at_ns: int) -> None:
        change = self.alarms.update(name, firing, evidence, now_ns=at_ns,
                                    clear_after=self.settings.clear_after)
        if change is not None:
            self.events.append({"deployment": self.deployment, "alarm": name,
                                "state": change, "at_ns": at_ns, "evidence": evidence})

    def tick(self, now_ns: int) -> None:
        """Close the window if its time is up; judge every window closed since the last tick
        (by this call or by data that arrived later) by the threshold rules, and close the
        drift blocks early so that slow traffic is tested too."""
        self.ring.roll(now_ns)
        fresh = [w for w in self.ring.closed if w["start_ns"] > self._judged_ns]
        if not fresh:
            return
        self._judged_ns = fresh[-1]["start_ns"]
        for w in fresh:
            for name, firing, evidence in window_checks(
                    w, champion=self.champion, deadline_ms=self.deadline_ms,
                    settings=self.settings):
                self._alarm(name, firing, evidence, now_ns)
        for kind, det in (("column_drift", self.column_drift),
                          ("canary_drift", self.canary_drift)):
            report = det.flush() if det is not None else None
            if report is not None:
                self._drift(kind, report, now_ns)

    # -- documents ----------------------------------------------------------------------------

    def compare(self) -> dict[str, Any]:
        return {"deployment": self.deployment, "champion": self.champion,
                "models": {m: p.summary() for m, p in sorted(self.pairs.items())},
                "cumulative": {m: t.summary() for m, t in sorted(self.totals.items())},
                "windows": [{"start_ns": w["start_ns"], "compare": w["compare"]}
                            for w in self.ring.series()]}

    def drift(self) -> dict[str, Any]:
        def det(d: DriftDetector | None) -> dict[str, Any] | None:
            if d is None:
                return None
            return {"rows_seen": d.rows_seen, "block_rows": d.block_rows,
                    "rate_per_million": d.rate, "min_effect": d.min_effect,
                    "last": d.last.to_dict() if d.last else None}

        return {"deployment": self.deployment, "canary": self.canary,
                "reference_model": self.champion,
                "designed_false_alarms_per_million_rows":
                    (self.settings.drift_rate_per_million
                     * sum(d is not None for d in (self.column_drift, self.canary_drift))),
                "canary_drift": det(self.canary_drift), "column_drift": det(self.column_drift),
                "windows": [{"start_ns": w["start_ns"], "drift": w["drift"]}
                            for w in self.ring.series()]}

    def accuracy(self) -> dict[str, Any]:
        return {"deployment": self.deployment, "feedback": dict(self.feedback),
                "models": {m: s.to_dict() for m, s in sorted(self.labels.items())},
                "paired": self.paired_doc(),
                "windows": [{"start_ns": w["start_ns"], "accuracy": w["accuracy"]}
                            for w in self.ring.series()]}

    def paired_doc(self) -> dict[str, Any]:
        """Each model's labelled outcomes minus the current champion's on the same rows."""
        return {"champion": self.champion,
                "models": {m: {**p.to_dict(), "kind": self.labels[m].kind
                               if m in self.labels else None}
                           for m, p in sorted(self.paired_labels.items())}}

    def alarms_doc(self) -> dict[str, Any]:
        return {"deployment": self.deployment, "firing": self.alarms.firing,
                "alarms": self.alarms.to_list(), "settings": dataclasses.asdict(_Shown(
                    self.settings.clear_after, self.settings.webhook_url != ""))}

    def windows(self) -> list[dict[str, Any]]:
        return self.ring.series()

    def document(self, kind: str) -> dict[str, Any]:
        """The document ``kind`` (compare, drift, accuracy, alarms or windows) as its
        endpoint answers it."""
        if kind == "windows":
            return {"deployment": self.deployment, "champion": self.champion,
                    "canary": self.canary, "deadline_ms": self.deadline_ms,
                    "models": list(self.models), "windows": self.windows()}
        docs = {"compare": self.compare, "drift": self.drift, "accuracy": self.accuracy,
                "alarms": self.alarms_doc}
        if kind not in docs:
            raise KeyError(f"unknown analytics document {kind!r}; known: windows, "
                           f"{', '.join(docs)}")
        return docs[kind]()

    def gauges(self) -> dict[str, Any]:
        """What Prometheus and ``status`` show of the analytics, at a glance: alarm states,
        agreement with the champion, live quality, the last drift effects, label outcomes.

        >>> sorted(DeploymentAnalytics("d").gauges())
        ['agreement', 'alarms', 'drift', 'feedback', 'firing', 'quality']
        """
        drift = {kind: ({col: t.effect for col, t in det.last.columns.items()}
                        if det is not None and det.last is not None else {})
                 for kind, det in (("column", self.column_drift),
                                   ("canary", self.canary_drift))}
        return {"alarms": {st.name: st.state for st in self.alarms.states.values()},
                "firing": list(self.alarms.firing),
                "agreement": {m: p.agree / p.compared for m, p in self.pairs.items()
                              if p.compared},
                "quality": {m: s.to_dict() for m, s in self.labels.items()},
                "drift": drift, "feedback": dict(self.feedback)}

    # -- persistence --------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {"ring": self.ring.to_state(), "alarms": self.alarms.to_list(),
                "labelled": self.labelled.to_state(), "feedback": dict(self.feedback),
                "totals": {m: t.to_state() for m, t in self.totals.items()},
                "labels": {m: _label_state(s) for m, s in self.labels.items()},
                "paired": {"champion": self.paired_with,
                           "models": {m: [p.n, p.total, p.total_sq]
                                      for m, p in self.paired_labels.items()}},
                # The label detectors' recent outcomes: a restart goes on testing where it
                # left off instead of waiting for thousands of labels again.
                "detectors": {"drops": {m: d.to_state() for m, d in self.drops.items()},
                              "champion": self.champion,
                              "paired": {m: d.to_state() for m, d in self.paired.items()}}}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.ring.restore(state.get("ring", {}))
        if self.ring.closed:
            self._judged_ns = self.ring.closed[-1]["start_ns"]
        self.alarms.restore(state.get("alarms", []))
        self.labelled.restore(state.get("labelled", []))
        self.feedback.update(state.get("feedback", {}))
        for model, raw in state.get("totals", {}).items():
            self.totals[model] = ModelWindow.from_state(raw)
        for model, raw in state.get("labels", {}).items():
            self.labels[model] = _label_from(raw)
        paired = state.get("paired") or {}
        pairs = {}
        for model, raw in (paired.get("models") or {}).items():
            with contextlib.suppress(TypeError, ValueError):  # e.g. a NaN saved as null
                n, total, total_sq = raw
                pairs[model] = PairedOutcomes(int(n), float(total), float(total_sq))
        # Restored before the first policy, or under the same champion; the next policy
        # with another champion starts the pairs afresh.
        if self.champion is None or paired.get("champion") == self.champion:
            self.paired_labels, self.paired_with = pairs, paired.get("champion")
        self._restore_detectors(state.get("detectors") or {})

    def _restore_detectors(self, state: Mapping[str, Any]) -> None:
        s = self.settings
        for model, raw in (state.get("drops") or {}).items():
            with contextlib.suppress(TypeError, ValueError, AttributeError):
                det = DropDetector(baseline=s.accuracy_baseline_labels,
                                   min_drop=s.accuracy_min_drop,
                                   rate_per_million=s.labels_rate_per_million)
                det.restore(raw)
                self.drops[model] = det
        # Paired with one champion, like the paired outcomes above.
        if self.champion is not None and state.get("champion") != self.champion:
            return
        rivals = state.get("paired") or {}
        for model, raw in rivals.items():
            with contextlib.suppress(TypeError, ValueError, AttributeError):
                det2 = PairedDetector(rate_per_million=s.labels_rate_per_million,
                                      n_challengers=len(rivals))
                det2.restore(raw)
                self.paired[model] = det2


@dataclass(frozen=True, slots=True)
class _Shown:
    clear_after: int
    webhook: bool


def _label_state(s: LabelStats) -> dict[str, Any]:
    return {f.name: (list(getattr(s, f.name)) if f.name in ("pos", "neg")
                     else getattr(s, f.name)) for f in dataclasses.fields(s)}


def _label_from(raw: Mapping[str, Any]) -> LabelStats:
    s = LabelStats(raw.get("kind", "classification"))
    for f in dataclasses.fields(s):
        if f.name in raw and f.name not in ("pos", "neg", "kind"):
            setattr(s, f.name, raw[f.name])
    s.pos.extend(raw.get("pos", []))
    s.neg.extend(raw.get("neg", []))
    return s
