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
from rendezvous.core.policy import Policy
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
    cols = ["request_id", "model", "error", "started_ns", "finished_ns"]
    recorded = evidence.scores(home, deployment, span, ids=ids, columns=cols)
    served = set(recorded["model"].to_pylist())
    replayed: dict[str, pa.Table] = {}
    for cand in new.candidates:
        if cand.model in served:
            continue
        table = evidence.scores(home, deployment, span, ids=ids, replay_of=cand.model,
                                columns=cols)
        if table.num_rows == 0:
            raise ReplayNeededError(deployment, cand.model, " ".join(
                ["rendezvous replay", deployment, "--model", cand.model, range_flags]).strip())
        replayed[cand.model] = table
    keys = {k for k in {new.split_key, *(s.split_key for s in schedules.values())} if k}
    metas = {k: evidence.split_keys(home, deployment, span, sig, k) for k in keys}
    records = _records(res, recorded, replayed)
    actual, fresh = _Column(), _Column()
    matched = exact = changed = 0
    mismatched: list[dict[str, Any]] = []
    for row, rec in zip(res.to_pylist(), records, strict=True):
        rid = rec.request_id
        sched = schedules.get(row["policy_version"])
        actual.add(rid, row["chosen"], row["reason"], row["responded_ns"] - row["received_ns"])
        out: Outcome
        if sched is not None:
            rec.split_key = metas.get(sched.split_key, {}).get(rid, "")
            again, is_exact = reproduce(rec, sched)
            exact += is_exact
            if (again.model, again.reason.value) == (row["chosen"], row["reason"]):
                matched += 1
            elif len(mismatched) < MISMATCHES_SHOWN:
                mismatched.append({"request_id": rid, "recorded": [row["chosen"], row["reason"]],
                                   "reproduced": [again.model, again.reason.value]})
        rec.split_key = metas.get(new.split_key, {}).get(rid, "")
        if sched is not None and same_rule(sched, new):
            out, _ = reproduce(rec, sched)
        else:
            out = simulate(rec, new)
        fresh.add(rid, out.model, out.reason.value, out.decided_ns - rec.received_ns)
        changed += out.model != row["chosen"]
    tally = await _accuracy(home, deployment, span, {"actual": actual, "new": fresh}, replayed)
    return {
        "deployment": deployment, "range": span.describe(), "requests": len(records),
        "actual": actual.document(tally, "actual"), "new": fresh.document(tally, "new"),
        "changed_answers": changed,
        "reproduced": {"matched": matched, "exact_record": exact, "of": len(records),
                       "mismatches": mismatched},
        "replayed_models": {m: t.num_rows for m, t in replayed.items()},
        "new_policy": msgspec.to_builtins(policy),
    }


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
        at = o.get("filed_ns", 0)
        if not at and any(m.get("filed_ns") for m in models.values()):
            # Kept filing times, yet none for this score: it came after the decision was
            # recorded (missing), so after the response.
            at = max(s["finished_ns"], mine.responded_ns + 1)
        mine.scores[s["model"]] = Arrival(s["error"] is None, s["finished_ns"], at)
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

