"""The what-if core against an emulated rendezvous server: ``reproduce`` gives back every
decision the server made from what it recorded, and ``simulate`` matches a server whose timers
fire on time."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from hypothesis import example, given, settings
from hypothesis import strategies as st

from rendezvous.core.messages import Reason
from rendezvous.core.policy import Candidate, Decision, Mailbox, Schedule, ScoreState, decide
from rendezvous.core.whatif import Arrival, Recorded, deadline_of, reproduce, same_rule, simulate

MS = 1_000_000
RECEIVED = 1_700_000_000_123_456_789  # not on a millisecond: rounding matters


@dataclass
class Served:
    model: str | None
    reason: Reason
    responded_ns: int
    filed: dict[str, int]


def serve_one(sched: Schedule, scores: dict[str, tuple[bool, int, int]], request_filed: int,
              lags: list[int]) -> Served:
    """An event-driven server as ``roles.rendezvous`` runs one request: it files each score
    (``ok, finished_ns, filed_ns``) and the request when they come, decides with one clock
    reading per filing, each later than the one before (``RendezvousServer._reading``: a
    filing at the same nanosecond as the one before reads one nanosecond later), and sets a
    timer (rounded up to the millisecond, firing ``lag`` late) whenever ``decide`` asks to
    wait."""
    box = Mailbox()
    events: list[tuple[int, int, str]] = [(request_filed, 0, "")]
    events += [(filed, 0, m) for m, (_, _, filed) in scores.items()]
    heapq.heapify(events)
    filed: dict[str, int] = {}
    lag = iter(lags)
    last = 0

    def reading(at: int) -> int:
        nonlocal last
        last = max(at, last + 1)
        return last

    while events:
        at, kind, what = heapq.heappop(events)
        now = reading(at)
        if kind == 0 and what == "":
            box.received_ns, box.deadline_ns = RECEIVED, deadline_of(RECEIVED, sched.deadline_ms)
            box.split_key = "req"
        elif kind == 0:
            ok, finished, _ = scores[what]
            box.scores[what] = ScoreState(ok, finished)
            filed[what] = now
            if box.received_ns is None:
                continue
        out = decide(box, sched, now)
        if isinstance(out, Decision):
            while events:  # later scores are still filed and recorded
                at, kind, what = heapq.heappop(events)
                if kind == 0:
                    filed[what] = reading(at)
            return Served(out.model, out.reason, now, filed)
        if out.until_ns is not None:
            fire = -(-out.until_ns // MS) * MS + next(lag, 0)
            heapq.heappush(events, (fire, 1, "timer"))
    raise AssertionError("the server never decided")


@st.composite
def cases(draw: st.DrawFn) -> tuple[Schedule, dict[str, tuple[bool, int, int]], int, list[int]]:
    deadline = draw(st.integers(5, 100))
    n = draw(st.integers(1, 3))
    names = [f"m{i}@1" for i in range(n + 1)]
    cands = tuple(Candidate(names[i], float(draw(st.integers(0, deadline)))) for i in range(n))
    split = ((names[0], 1.0), (names[1], 2.0)) if n > 1 and draw(st.booleans()) else ()
    sched = Schedule("d", 1, float(deadline), cands, shadows=(names[n],), split=split)
    scores = {}
    for m in names:
        if draw(st.booleans()) or m == names[0]:
            finished = RECEIVED + draw(st.integers(-2 * MS, 160 * MS))
            filed = finished + draw(st.integers(0, 5 * MS))
            scores[m] = (draw(st.floats(0, 1)) < 0.85, finished, filed)
    request_filed = RECEIVED + draw(st.integers(0, 4 * MS))
    lags = draw(st.lists(st.integers(0, 3 * MS), max_size=6))
    return sched, scores, request_filed, lags


def recorded(scores: dict[str, tuple[bool, int, int]], served: Served) -> Recorded:
    return Recorded("req", RECEIVED, responded_ns=served.responded_ns,
                    scores={m: Arrival(ok, fin, served.filed[m])
                            for m, (ok, fin, _) in scores.items()})


# Found by the search: the request and a score arrive in the same nanosecond, the request is
# filed first and decided without the score; the score's filing must not read as that instant.
_TIE = (Schedule("d", 1, 5.0, (Candidate("m0@1", 0.0), Candidate("m1@1", 0.0),
                               Candidate("m2@1", 0.0)), shadows=("m3@1",)),
        {"m0@1": (True, RECEIVED, RECEIVED + 1), "m1@1": (True, RECEIVED, RECEIVED)},
        RECEIVED + 1, [])


@settings(max_examples=400, deadline=None)
@given(cases())
@example(_TIE)
def test_reproduce_gives_back_every_recorded_decision(
        case: tuple[Schedule, dict[str, tuple[bool, int, int]], int, list[int]]) -> None:
    sched, scores, request_filed, lags = case
    served = serve_one(sched, scores, request_filed, lags)
    out, exact = reproduce(recorded(scores, served), sched)
    assert exact
    assert (out.model, out.reason, out.decided_ns) == \
        (served.model, served.reason, served.responded_ns)


@settings(max_examples=400, deadline=None)
@given(cases())
def test_simulate_is_a_server_whose_timers_fire_on_time(
        case: tuple[Schedule, dict[str, tuple[bool, int, int]], int, list[int]]) -> None:
    sched, scores, _, _ = case
    served = serve_one(sched, scores, RECEIVED, [])
    out = simulate(recorded(scores, served), sched)
    assert (out.model, out.reason, out.decided_ns) == \
        (served.model, served.reason, served.responded_ns)


def test_a_record_without_filing_times_is_not_exact() -> None:
    sched = Schedule("d", 1, 50.0, (Candidate("a@1", 50.0),))
    rec = Recorded("r", 0, responded_ns=3 * MS, scores={"a@1": Arrival(True, 2 * MS)})
    out, exact = reproduce(rec, sched)
    assert (out.model, out.reason, exact) == ("a@1", Reason.PREFERRED, False)


def test_a_longer_wait_turns_a_fallback_into_the_champion() -> None:
    rec = Recorded("r", 0, scores={"a@1": Arrival(True, 20 * MS, 21 * MS),
                                   "b@1": Arrival(True, 1 * MS, 2 * MS)})
    short = Schedule("d", 1, 100.0, (Candidate("a@1", 10.0), Candidate("b@1", 100.0)))
    long = Schedule("d", 2, 100.0, (Candidate("a@1", 30.0), Candidate("b@1", 100.0)))
    assert simulate(rec, short).model == "b@1" and simulate(rec, short).decided_ns == 10 * MS
    assert simulate(rec, long).model == "a@1" and simulate(rec, long).decided_ns == 21 * MS
    assert not same_rule(short, long) and same_rule(short, Schedule(
        "other", 9, 100.0, (Candidate("a@1", 10.0), Candidate("b@1", 100.0))))


def test_a_shorter_deadline_makes_a_slow_answer_late() -> None:
    rec = Recorded("r", 0, scores={"a@1": Arrival(True, 40 * MS, 41 * MS)})
    out = simulate(rec, Schedule("d", 1, 30.0, (Candidate("a@1", 30.0),)))
    assert (out.model, out.reason, out.decided_ns) == (None, Reason.SLA_MISS, 30 * MS)


async def test_the_rendezvous_servers_readings_never_tie_even_when_the_clock_stands_still(
        tmp_path, monkeypatch) -> None:
    """What the emulator above assumes of ``roles.rendezvous``: each filing or decision reads
    a later time than the one before, so the records never make a tie ``reproduce`` would
    have to guess at."""
    from rendezvous.hosting.returns import LocalReturns
    from rendezvous.roles import rendezvous as rv
    from rendezvous.streams.embedded.log import EmbeddedStream

    stream = await EmbeddedStream.open(tmp_path / "streams.db")
    try:
        server = rv.RendezvousServer(stream, "d", Schedule("d", 1, 50.0, (Candidate("a@1", 5.0),)),
                                     LocalReturns())
        monkeypatch.setattr(rv.time, "time_ns", lambda: RECEIVED)  # a clock too coarse to move
        readings = [server._reading() for _ in range(5)]
    finally:
        await stream.close()
    assert readings == [RECEIVED + i for i in range(5)]
