"""What a policy would have answered, from what was recorded. Pure: no I/O, no clocks.

Every request's record says when it was received and, for every model, whether its score was
an answer or an error, when the model finished and when the rendezvous server filed it. Two
ways to turn that into a decision with the pure ``decide()``:

- ``reproduce``: the decision the server made, exactly. The server files a score and decides
  with one clock reading, so the scores a decision saw are those filed no later than the
  recorded ``responded_ns``; ``decide()`` at that instant on that mailbox is the recorded
  decision. Records written before filing times were kept fall back to finish times, and
  are counted as ``inexact``.
- ``simulate``: what an ideal server would answer under another schedule: each score filed
  when it was recorded as filed (or, lacking that, when the model finished), ``decide()``
  run at every filing and at every time it asked to be woken (rounded up to the millisecond
  as the server's timers are), with the deadline of the schedule. The decision time is the
  response time.

>>> from rendezvous.core.policy import Candidate, Schedule
>>> sched = Schedule("d", 1, deadline_ms=50, candidates=(Candidate("a@1", 10),
...                                                       Candidate("b@1", 50)))
>>> rec = Recorded("r1", received_ns=0, scores={"a@1": Arrival(True, 20_000_000),
...                                             "b@1": Arrival(True, 2_000_000)})
>>> simulate(rec, sched)
Outcome(model='b@1', reason=<Reason.FALLBACK: 'fallback'>, decided_ns=10000000)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rendezvous.core.messages import Reason
from rendezvous.core.policy import Decision, Mailbox, Schedule, ScoreState, decide

__all__ = ["Arrival", "Outcome", "Recorded", "deadline_of", "reproduce", "same_rule",
           "simulate"]


@dataclass(frozen=True, slots=True)
class Arrival:
    """One model's score of one request: an answer (``ok``) or an error, when the model
    finished, and when the rendezvous server filed it (0: not recorded)."""

    ok: bool
    finished_ns: int
    filed_ns: int = 0

    @property
    def at_ns(self) -> int:
        """When the score reached the rendezvous server, as well as the record tells."""
        return self.filed_ns or self.finished_ns


@dataclass(slots=True)
class Recorded:
    """What was recorded of one request (``responded_ns`` 0 when unknown)."""

    request_id: str
    received_ns: int
    scores: dict[str, Arrival] = field(default_factory=dict)
    split_key: str = ""  # the request's split key; its id when empty
    responded_ns: int = 0


@dataclass(frozen=True, slots=True)
class Outcome:
    model: str | None
    reason: Reason
    decided_ns: int


def deadline_of(received_ns: int, deadline_ms: float) -> int:
    """A request's deadline, computed as the proxy computes it."""
    return received_ns + int(deadline_ms * 1e6)


def same_rule(a: Schedule, b: Schedule) -> bool:
    """Whether two schedules decide alike (whatever their deployment and version)."""
    return (a.deadline_ms, a.candidates, a.split, a.split_key) == \
        (b.deadline_ms, b.candidates, b.split, b.split_key)


def _mailbox(rec: Recorded, schedule: Schedule) -> Mailbox:
    return Mailbox(received_ns=rec.received_ns,
                   deadline_ns=deadline_of(rec.received_ns, schedule.deadline_ms),
                   split_key=rec.split_key or rec.request_id)


def reproduce(rec: Recorded, schedule: Schedule) -> tuple[Outcome, bool]:
    """The recorded decision under the schedule the request was served with, and whether the
    record determines it exactly (filing times of every score it holds were kept)."""
    box = _mailbox(rec, schedule)
    at = rec.responded_ns
    exact = True
    for model, s in rec.scores.items():
        if model not in schedule.models:
            continue
        exact = exact and s.filed_ns > 0
        if s.at_ns <= at:
            box.scores[model] = ScoreState(s.ok, s.finished_ns)
    out = decide(box, schedule, at)
    if not isinstance(out, Decision):  # the record contradicts itself: report what it says
        return Outcome(None, Reason.SLA_MISS, at), False
    return Outcome(out.model, out.reason, at), exact


def _ceil_ms(ns: int) -> int:
    return -(-ns // 1_000_000) * 1_000_000


def simulate(rec: Recorded, schedule: Schedule) -> Outcome:
    """The decision of an ideal server running ``schedule`` on this record (module doc)."""
    box = _mailbox(rec, schedule)
    wanted = set(schedule.models)
    arrivals = sorted((s.at_ns, model) for model, s in rec.scores.items() if model in wanted)
    now, i = rec.received_ns, 0
    while True:
        while i < len(arrivals) and arrivals[i][0] <= now:
            model = arrivals[i][1]
            state = rec.scores[model]
            box.scores[model] = ScoreState(state.ok, state.finished_ns)
            i += 1
        out = decide(box, schedule, now)
        if isinstance(out, Decision):
            return Outcome(out.model, out.reason, now)
        # A mailbox with its request always has a deadline, so until_ns is never None here.
        wake = _ceil_ms(out.until_ns if out.until_ns is not None else box.deadline_ns or now)
        now = min(wake, arrivals[i][0]) if i < len(arrivals) else wake
