"""The rendezvous server: one mailbox per request, the decision, the answer, the record.

It reads the input and the scores streams of one deployment, files each score in its request's
mailbox (a score may arrive before its request), runs the pure ``decide()`` whenever something
arrives or a timer it set fires (no polling), sends the ``Result`` to the proxy that owns the
request, and, once every model has reported or the late-grace window after the deadline has
passed, appends the final ``Result`` with every model's status to the results stream. Stream
batches are acknowledged only after all their requests are recorded, so a crash never loses a
decision that was not written down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgspec

from rendezvous.core import messages
from rendezvous.core.messages import (
    ModelOutcome,
    Reason,
    RequestHead,
    ResultOut,
    ScoreHead,
    Status,
)
from rendezvous.core.policy import Decision, Mailbox, Schedule, ScoreState, decide
from rendezvous.streams.base import Batch, ReturnChannel, Stream

log = logging.getLogger(__name__)

GROUP = "rendezvous"
ORPHAN_TTL_S = 60.0  # scores whose request never shows up are dropped after this
SWEEP_S = 0.05  # how often requests past their late-grace window are finalized
RETRY_FIRST_S, RETRY_MAX_S = 0.05, 5.0  # backoff of results that failed to be recorded
_NO_OUTPUTS = msgspec.Raw(messages.encode({}))


class _Acks:
    """Acknowledges a stream batch once every item it carried has been recorded."""

    __slots__ = ("batch", "pending", "sealed", "spawn")

    def __init__(self, batch: Batch, spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self.batch = batch
        self.spawn = spawn
        self.pending = 0
        self.sealed = False  # all records of the batch have been filed

    def hold(self) -> _Acks:
        self.pending += 1
        return self

    def done(self) -> None:
        self.pending -= 1
        if self.sealed and self.pending == 0:
            self.spawn(self.batch.ack())

    def seal(self) -> None:
        self.sealed = True
        if self.pending == 0:
            self.spawn(self.batch.ack())


@dataclass(slots=True)
class _Entry:
    box: Mailbox = field(default_factory=Mailbox)
    request: RequestHead | None = None
    schedule: Schedule | None = None
    scores: dict[str, ScoreHead] = field(default_factory=dict)
    filed: dict[str, int] = field(default_factory=dict)  # model -> when its score was filed
    decision: Decision | None = None
    responded_ns: int = 0
    acks: list[_Acks] = field(default_factory=list)
    created: float = field(default_factory=time.monotonic)


class RendezvousServer:
    """Decides and records every request of one deployment."""

    def __init__(
        self, stream: Stream, deployment: str, schedule: Schedule, returns: ReturnChannel, *,
        late_grace_ms: float = 2000.0,
    ) -> None:
        self.stream = stream
        self.deployment = deployment
        self.schedules: dict[int, Schedule] = {schedule.version: schedule}
        self.current = schedule
        self.returns = returns
        self.late_grace_ns = int(late_grace_ms * 1e6)
        self.mailboxes: dict[str, _Entry] = {}
        self._background: set[asyncio.Future[None]] = set()  # held until done
        self._consumers: list[Any] = []
        # Work for the end of this loop iteration: results to hand to proxies and results to
        # record. Batching them per iteration keeps tasks and stream appends off the
        # per-request path.
        self._outbox: list[tuple[str, bytes]] = []
        self._to_record: list[tuple[str, ResultOut, list[_Acks]]] = []
        self._flush_scheduled = False
        # (final_at_ns, request id) in arrival order; swept every SWEEP_S instead of one
        # timer per request.
        self._finals: deque[tuple[int, str]] = deque()
        self._wakeups: dict[int, list[str]] = {}  # millisecond -> requests to decide again
        self._results_topic = messages.topic(deployment, "results")
        self._loop: asyncio.AbstractEventLoop | None = None
        self.backlog = 0  # results that failed to be recorded and are being retried
        self._stopping = False
        self._last_reading = 0  # see _reading

    def _reading(self) -> int:
        """The wall clock for a filing or a decision, later than every earlier reading: two
        readings never tie, so a score filed after a decision never shows the decision's time
        and the records say exactly which scores each decision saw (``core.whatif``)."""
        now = time.time_ns()
        if now <= self._last_reading:
            now = self._last_reading + 1
        self._last_reading = now
        return now

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, holding a reference until it is done."""
        fut = asyncio.ensure_future(coro)
        self._background.add(fut)
        fut.add_done_callback(self._background.discard)

    def set_schedule(self, schedule: Schedule) -> None:
        """Requests stamped with this policy version (and unstamped ones) use it from now on."""
        self.schedules[schedule.version] = schedule
        self.current = schedule
        # Old versions stay until no mailbox refers to them; a few small objects at most.
        live = {e.schedule.version for e in self.mailboxes.values() if e.schedule}
        for v in [v for v in self.schedules if v not in live and v != schedule.version]:
            del self.schedules[v]

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        inputs = self.stream.consume(messages.topic(self.deployment, "input"), GROUP,
                                     start="latest", max_batch=512)
        scores = self.stream.consume(messages.topic(self.deployment, "scores"), GROUP,
                                     start="latest", max_batch=1024)
        self._consumers = [inputs, scores]
        sweepers = [asyncio.ensure_future(self._sweep_orphans()),
                    asyncio.ensure_future(self._sweep_finals())]
        try:
            await asyncio.gather(self._pump(inputs, self._on_request),
                                 self._pump(scores, self._on_score))
        finally:
            for t in sweepers:
                t.cancel()

    async def stop(self) -> None:
        self._stopping = True
        for c in self._consumers:
            await c.close()

    async def _pump(self, consumer: Any, handle: Callable[[bytes, _Acks], None]) -> None:
        async for batch in consumer:
            acks = _Acks(batch, self._spawn)
            for rec in batch.records:
                try:
                    handle(rec.data, acks)
                except msgspec.DecodeError:
                    log.error("rendezvous %s: undecodable record %s", self.deployment, rec.offset)
            acks.seal()

    # -- filing -------------------------------------------------------------------------------

    def _on_request(self, data: bytes, acks: _Acks) -> None:
        req = messages.request_head_decoder.decode(data)
        entry = self.mailboxes.get(req.request_id)
        if entry is None:
            entry = self.mailboxes[req.request_id] = _Entry()
        elif entry.request is not None:  # redelivered duplicate: already filed
            return
        entry.request = req
        entry.schedule = self.schedules.get(req.policy_version, self.current)
        entry.box.received_ns = req.received_ns
        entry.box.deadline_ns = req.deadline_ns
        entry.box.split_key = req.meta.get(entry.schedule.split_key, req.request_id) \
            if entry.schedule.split_key else req.request_id
        entry.acks.append(acks.hold())
        self._evaluate(req.request_id, entry, self._reading())

    def _on_score(self, data: bytes, acks: _Acks) -> None:
        for score in messages.score_heads_decoder.decode(data):
            rid = score.request_id
            entry = self.mailboxes.get(rid)
            if entry is None:
                entry = self.mailboxes[rid] = _Entry()
            if score.model in entry.scores:  # redelivered duplicate
                continue
            # One clock reading files the score and decides: the recorded filing times and
            # ``responded_ns`` then say exactly which scores each decision saw.
            now = self._reading()
            entry.scores[score.model] = score
            entry.filed[score.model] = now
            entry.acks.append(acks.hold())
            entry.box.scores[score.model] = ScoreState(score.error is None, score.finished_ns)
            if entry.request is None:
                continue
            if entry.decision is None:
                self._evaluate(rid, entry, now)
            elif self._complete(entry):
                self._finalize(rid)

    # -- deciding -----------------------------------------------------------------------------

    def _evaluate(self, rid: str, entry: _Entry, now: int) -> None:
        assert entry.schedule is not None
        outcome = decide(entry.box, entry.schedule, now)
        if isinstance(outcome, Decision):
            self._respond(rid, entry, outcome, now)
        elif outcome.until_ns is not None:
            self._wake_at(outcome.until_ns, now, rid)

    def _wake_at(self, until_ns: int, now: int, rid: str) -> None:
        """Decide ``rid`` again at ``until_ns`` (rounded up to the millisecond). Requests that
        wait for the same millisecond share one timer; a request decided meanwhile is skipped
        when it fires, so nothing is ever cancelled."""
        ms = -(-until_ns // 1_000_000)
        due = self._wakeups.get(ms)
        if due is None:
            due = self._wakeups[ms] = []
            loop = self._loop or asyncio.get_running_loop()
            loop.call_later(max(0.0, (ms * 1_000_000 - now) / 1e9), self._wake, ms)
        due.append(rid)

    def _wake(self, ms: int) -> None:
        for rid in self._wakeups.pop(ms, ()):
            entry = self.mailboxes.get(rid)
            if entry is not None and entry.decision is None and entry.request is not None:
                self._evaluate(rid, entry, self._reading())

    def _respond(self, rid: str, entry: _Entry, decision: Decision, now: int) -> None:
        entry.decision = decision
        entry.responded_ns = now
        req = entry.request
        assert req is not None
        if req.return_to:
            self._outbox.append((req.return_to, messages.encode(self._result(rid, entry))))
            self._schedule_flush()
        if self._complete(entry):
            self._finalize(rid)
        else:
            self._finals.append((req.deadline_ns + self.late_grace_ns, rid))

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            (self._loop or asyncio.get_running_loop()).call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._outbox:
            outbox, self._outbox = self._outbox, []
            self._spawn(self._send(outbox))
        if self._to_record:
            batch, self._to_record = self._to_record, []
            self._spawn(self._record(batch))

    async def _send(self, outbox: list[tuple[str, bytes]]) -> None:
        for return_to, data in outbox:
            try:
                await self.returns.send(return_to, data)
            except Exception as exc:  # the proxy may be gone; the result is still recorded
                log.warning("rendezvous %s: could not return a result to %s: %s",
                            self.deployment, return_to, exc)

    def _complete(self, entry: _Entry) -> bool:
        assert entry.schedule is not None
        return all(m in entry.scores for m in entry.schedule.models)

    def _result(self, rid: str, entry: _Entry) -> ResultOut:
        req, sched, decision = entry.request, entry.schedule, entry.decision
        assert req is not None and sched is not None and decision is not None
        outcomes: dict[str, ModelOutcome] = {}
        for model in sched.models:
            s = entry.scores.get(model)
            if s is None:
                outcomes[model] = ModelOutcome(status=Status.MISSING)
                continue
            latency = (s.ready_ns - req.received_ns) / 1e6  # a shadow's pacing left out
            filed = entry.filed.get(model, 0)
            held = s.held_ns / 1e6
            if s.error is not None:
                outcomes[model] = ModelOutcome(status=Status.ERROR, latency_ms=latency,
                                               error=s.error, filed_ns=filed, held_ms=held)
            else:
                late = s.ready_ns > req.deadline_ns
                outcomes[model] = ModelOutcome(
                    status=Status.LATE if late else Status.ON_TIME, latency_ms=latency,
                    filed_ns=filed, held_ms=held)
        chosen = entry.scores.get(decision.model) if decision.model else None
        error = None
        if decision.reason is Reason.ERROR:
            error = "; ".join(f"{m}: {o.error}" for m, o in outcomes.items() if o.error)
        elif decision.reason is Reason.SLA_MISS:
            error = f"no model answered within the {sched.deadline_ms:g} ms deadline"
        return ResultOut(
            request_id=rid, deployment=self.deployment, model=decision.model,
            reason=decision.reason, outputs=chosen.outputs if chosen else _NO_OUTPUTS,
            policy_version=sched.version, received_ns=req.received_ns,
            responded_ns=entry.responded_ns, models=outcomes, error=error,
        )

    def _finalize(self, rid: str) -> None:
        entry = self.mailboxes.pop(rid, None)
        if entry is None:
            return
        result = self._result(rid, entry)
        self._to_record.append((rid, result, entry.acks))
        self._schedule_flush()

    async def _record(self, batch: list[tuple[str, ResultOut, list[_Acks]]]) -> None:
        """Append results; on failure (a full disk) retry with backoff while running, so the
        results and the acknowledgements they hold back follow once the log is writable."""
        data = [messages.encode(r) for _, r, _ in batch]
        ids = [rid for rid, _, _ in batch]
        delay = RETRY_FIRST_S
        failed = False
        try:
            while True:
                try:
                    await self.stream.append(self._results_topic, data, ids)
                    break
                except Exception as exc:
                    if self._stopping:
                        # Not acknowledged: the requests are redelivered and decided again
                        # after a restart.
                        log.error("rendezvous %s: could not record %d results: %s",
                                  self.deployment, len(batch), exc)
                        return
                    if not failed:
                        failed = True
                        self.backlog += len(batch)
                        log.error("rendezvous %s: could not record %d results (%s); "
                                  "retrying", self.deployment, len(batch), exc)
                    await asyncio.sleep(delay)
                    delay = min(RETRY_MAX_S, delay * 2)
        finally:
            if failed:
                self.backlog -= len(batch)
        for _, _, acks in batch:
            for a in acks:
                a.done()

    async def _sweep_finals(self) -> None:
        """Finalize requests whose late-grace window has passed."""
        while True:
            await asyncio.sleep(SWEEP_S)
            now = time.time_ns()
            finals = self._finals
            while finals and finals[0][0] <= now:
                self._finalize(finals.popleft()[1])  # no-op if already finalized

    async def _sweep_orphans(self) -> None:
        """Drop scores whose request never arrived (e.g. the proxy failed to append it)."""
        while True:
            await asyncio.sleep(ORPHAN_TTL_S / 4)
            cutoff = time.monotonic() - ORPHAN_TTL_S
            for rid in [r for r, e in self.mailboxes.items()
                        if e.request is None and e.created < cutoff]:
                entry = self.mailboxes.pop(rid)
                for a in entry.acks:
                    a.done()
