"""What-if: what another policy would have answered, from the recorded evidence.

For each request of a range, the record (``results`` and ``scores`` archives) says when it was
received, what every model answered, when each model finished and when the rendezvous server
filed each score. ``core.whatif`` turns that into the decision of a policy with the same pure
``decide()`` the server runs: the actual policy's decision is reproduced exactly from the
recorded filing times (a request whose policy the new one does not change is answered as it
was), and another policy's is simulated on an ideal server. A model the new policy returns that
was never served is taken from its replay (``rendezvous replay``), arriving after its replay
latency; without one the evaluation stops and names the replay to run.

>>> # doc = await whatif(home, "demo", new_policy, span=Span())
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa

from rendezvous.analysis import evidence
from rendezvous.analysis.outcomes import LabelTally, quantiles_ms
from rendezvous.analysis.times import Span, TimeRangeError
from rendezvous.core.compare import reduce
from rendezvous.core.policy import Policy, Schedule
from rendezvous.core.whatif import Arrival, Outcome, Recorded, reproduce, same_rule, simulate
from rendezvous.errors import NotFoundError
from rendezvous.registry import Registry

__all__ = ["ReplayNeededError", "whatif"]

MISMATCHES_SHOWN = 10


class ReplayNeededError(NotFoundError):
    """A model the new policy may return has no recorded or replayed scores in the range."""

    def __init__(self, deployment: str, model: str, command: str) -> None:
        self.deployment = deployment
        self.model = model
        self.command = command
        super().__init__("scores of model", model,
                         f"it never scored requests of {deployment!r} in this range; run "
                         f"`{command}` first")


@dataclass(slots=True)
class _Column:
    """One policy's answers over the range."""

    chosen: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    response_ns: list[int] = field(default_factory=list)
    answers: dict[str, str | None] = field(default_factory=dict)  # request id -> model

    def add(self, rid: str, model: str | None, reason: str, response_ns: int) -> None:
        self.chosen[model or "(none)"] += 1
        self.reasons[reason] += 1
        self.response_ns.append(response_ns)
        self.answers[rid] = model

    def document(self, tally: LabelTally, name: str) -> dict[str, Any]:
        n = sum(self.chosen.values())
        return {"requests": n,
                "share": {m: round(c / n, 6) for m, c in self.chosen.most_common()},
                "reasons": dict(self.reasons.most_common()),
                "sla_miss_rate": round(self.reasons["sla_miss"] / n, 6) if n else None,
                "response_ms": quantiles_ms(self.response_ns),
                "labels": tally.to_dict().get(name, {"labels": 0})}


@dataclass(slots=True)
class _Evaluation:
    """Both columns, and how well the record reproduces the actual decisions."""

    actual: _Column = field(default_factory=_Column)
    new: _Column = field(default_factory=_Column)
    matched: int = 0
    exact: int = 0
    changed: int = 0
    mismatched: list[dict[str, Any]] = field(default_factory=list)

    def add(self, row: dict[str, Any], rec: Recorded, served: Schedule | None, new: Schedule,
            metas: dict[str, dict[str, str]]) -> None:
        """One request: ``row`` its archived result, ``served`` the schedule it was served
        with (None when its policy version is unknown), ``metas`` split keys by tag."""
        rid, recorded = rec.request_id, (row["chosen"], row["reason"])
        self.actual.add(rid, row["chosen"], row["reason"],
                        row["responded_ns"] - row["received_ns"])
        out: Outcome | None = None
        if served is not None:
            rec.split_key = metas.get(served.split_key, {}).get(rid, "")
            again, exact = reproduce(rec, served)
            self.exact += exact
            if (again.model, again.reason.value) == recorded:
                self.matched += 1
            elif len(self.mismatched) < MISMATCHES_SHOWN:
                self.mismatched.append({"request_id": rid, "recorded": list(recorded),
                                        "reproduced": [again.model, again.reason.value]})
            if same_rule(served, new):  # the policy does not change: answered as it was
                out = again
        if out is None:
            rec.split_key = metas.get(new.split_key, {}).get(rid, "")
            out = simulate(rec, new)
        self.new.add(rid, out.model, out.reason.value, out.decided_ns - rec.received_ns)
        self.changed += out.model != row["chosen"]


async def whatif(home: Path, deployment: str, policy: Policy, *, span: Span = Span(),
                 registry_url: str | None = None, range_flags: str = "") -> dict[str, Any]:
    """What ``policy`` would have answered for the requests of ``span``, beside what the
    policies in force did; ``range_flags`` (e.g. ``--from 2h``) goes into the replay command a
    missing model's error names."""
    with Registry(home, url=registry_url) as reg:
        reg.policy(deployment)  # an unknown deployment fails here
        policy = reg.resolve_policy(deployment, policy)
        schedules = {r.version: msgspec.convert(r.body, Policy).schedule(deployment, r.version)
                     for r in reg.policy_history(deployment)}
        sig = reg.deployment_signature(deployment)
    new = policy.schedule(deployment, version=0)
    res = evidence.results(home, deployment, span)
    if res.num_rows == 0:
        raise TimeRangeError(f"no decisions of {deployment!r} archived from {span.describe()}; "
                             "widen --from/--to", span.describe())
    ids = res["request_id"].to_pylist()
    cols = ["request_id", "model", "error", "started_ns", "finished_ns", "held_ns"]
    recorded = evidence.scores(home, deployment, span, ids=ids, columns=cols)
    missing = [c.model for c in new.candidates
               if c.model not in set(recorded["model"].to_pylist())]
    replayed = _replayed(home, deployment, span, ids, missing, range_flags)
    keys = {k for k in {new.split_key, *(s.split_key for s in schedules.values())} if k}
    metas = {k: evidence.split_keys(home, deployment, span, sig, k) for k in keys}
    ev = _Evaluation()
    for row, rec in zip(res.to_pylist(), _records(res, recorded, replayed), strict=True):
        ev.add(row, rec, schedules.get(row["policy_version"]), new, metas)
    actual, fresh = ev.actual, ev.new
    tally = await _accuracy(home, deployment, span, {"actual": actual, "new": fresh}, replayed)
    return {
        "deployment": deployment, "range": span.describe(), "requests": res.num_rows,
        "actual": actual.document(tally, "actual"), "new": fresh.document(tally, "new"),
        "changed_answers": ev.changed,
        "reproduced": {"matched": ev.matched, "exact_record": ev.exact, "of": res.num_rows,
                       "mismatches": ev.mismatched},
        "replayed_models": {m: t.num_rows for m, t in replayed.items()},
        "new_policy": msgspec.to_builtins(policy),
    }


def _replayed(home: Path, deployment: str, span: Span, ids: list[str], models: list[str],
              range_flags: str) -> dict[str, pa.Table]:
    """The replayed scores of ``models`` (which never served these requests)."""
    found = {}
    for model in models:
        table = evidence.scores(home, deployment, span, ids=ids, replay_of=model,
                                columns=["request_id", "model", "error", "started_ns",
                                         "finished_ns"])
        if table.num_rows == 0:
            raise ReplayNeededError(deployment, model, " ".join(
                ["rendezvous replay", deployment, "--model", model, range_flags]).strip())
        found[model] = table
    return found


def _records(res: pa.Table, recorded: pa.Table,
             replayed: dict[str, pa.Table]) -> list[Recorded]:
    by_id: dict[str, Recorded] = {}
    out = []
    filed: dict[str, dict[str, Any]] = {}
    for row in res.to_pylist():
        rec = Recorded(row["request_id"], row["received_ns"],
                       responded_ns=row["responded_ns"] or 0)
        by_id[rec.request_id] = rec
        out.append(rec)
        filed[rec.request_id] = msgspec.json.decode(row["models"] or "{}")
    for s in recorded.to_pylist():
        mine = by_id.get(s["request_id"])
        if mine is None:
            continue
        models = filed[mine.request_id]
        o = models.get(s["model"], {})
        # A shadow's worker held the request while it gathered a batch: promoted, it would
        # not have (``Score.held_ns``; null in parts archived before it was recorded).
        held = s.get("held_ns") or 0
        at = max(0, o.get("filed_ns", 0) - held)
        if not at and any(m.get("filed_ns") for m in models.values()):
            # Kept filing times, yet none for this score: it came after the decision was
            # recorded (missing), so after the response.
            at = max(s["finished_ns"] - held, mine.responded_ns + 1)
        mine.scores[s["model"]] = Arrival(s["error"] is None, s["finished_ns"] - held, at)
    for model, table in replayed.items():
        for s in table.to_pylist():
            mine = by_id.get(s["request_id"])
            if mine is not None:  # arrives after its replay latency
                took = s["finished_ns"] - s["started_ns"]
                mine.scores[model] = Arrival(s["error"] is None, mine.received_ns + took)
    return out


async def _accuracy(home: Path, deployment: str, span: Span, columns: dict[str, _Column],
                    replayed: dict[str, pa.Table]) -> LabelTally:
    """Each policy's answers judged against the labels of the requests that have one."""
    tally = LabelTally()
    ids = list(next(iter(columns.values())).answers)
    labels = await evidence.labels(home, deployment, ids)
    if not labels:
        return tally
    wanted = sorted(labels)
    cols = ["request_id", "model", "outputs", "error"]
    tables = [evidence.scores(home, deployment, span, ids=wanted, columns=cols)]
    tables += [evidence.scores(home, deployment, span, ids=wanted, replay_of=m, columns=cols)
               for m in replayed]
    scored: dict[tuple[str, str], Any] = {}
    for table in tables:
        for row in table.to_pylist():
            scored[(row["request_id"], row["model"])] = reduce(
                evidence.decode_outputs(row["outputs"]), error=row["error"] is not None)
    for name, column in columns.items():
        for rid in wanted:
            model = column.answers.get(rid)
            got = scored.get((rid, model)) if model else None
            if got is not None:
                tally.add(name, got, labels[rid])
    return tally

