"""A worker scores every request of its deployment with one model version.

It reads the whole input stream in its own consumer group, takes everything waiting as one
micro-batch, hands the batch's exact bytes to wherever the model lives (``Scoring``: a model
host process by default, or a model thread) and appends what comes back, one framed record of
``Score``s per batch, before acknowledging the batch.

Of its model's role it knows only what ``follow`` derives from the schedule: how urgent it is.

- A candidate's worker is *prompt*: it wakes before the other consumers of the input topic (the
  champion first) and takes the next batch while the previous one's scores are still being
  made durable (``MAX_RECORDING`` batches at most), so the engine's commit is never between a
  request and the champion's model host.
- A shadow's worker (challengers, the canary, a model the policy does not name) is *paced*: it
  takes a batch at most every ``RENDEZVOUS_SHADOW_BATCH_MS``. Shadows never answer, so scoring
  them a few milliseconds later costs no client anything, and scoring what gathered meanwhile
  as one batch keeps the cores for the candidates. The time a request waited only because of
  the pacing is recorded in its ``Score.held_ns``, and latencies leave it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from rendezvous import config
from rendezvous.core import messages
from rendezvous.core.policy import Schedule
from rendezvous.errors import StreamError
from rendezvous.roles.scoring import BatchScorer, input_digest, one_thread_each
from rendezvous.streams.base import Batch, Record, Start, Stream

__all__ = ["Scoring", "ThreadScoring", "Worker", "group_name", "held_ns", "input_digest",
           "urgency"]

log = logging.getLogger(__name__)


RETRY_FIRST_S, RETRY_MAX_S = 0.05, 5.0  # backoff of scores that failed to be recorded
MAX_RECORDING = 4  # batches whose scores may still be on their way to the log
SHADOW_PRIORITY = 1  # after every candidate and the other consumers (priority 0)


def group_name(model: str) -> str:
    return f"model-{model}"


def urgency(schedule: Schedule, model: str, *, shadow_batch_s: float) -> tuple[int, float]:
    """``(priority, pace_s)`` of ``model``'s worker under ``schedule``: candidates wake first,
    the champion before its fallbacks, and take every batch at once; the others wake last and
    take a batch at most every ``shadow_batch_s``.

    >>> from rendezvous.core.policy import Candidate
    >>> s = Schedule("d", 1, 100.0, (Candidate("a@1", 50.0), Candidate("b@1", 80.0)),
    ...              shadows=("c@1",))
    >>> [urgency(s, m, shadow_batch_s=0.05) for m in ("a@1", "b@1", "c@1")]
    [(-2, 0.0), (-1, 0.0), (1, 0.05)]
    """
    order = [c.model for c in schedule.candidates]
    if model in order:
        return order.index(model) - len(order), 0.0
    return SHADOW_PRIORITY, shadow_batch_s


def held_ns(records: Sequence[Record], paused_ns: int, resumed_ns: int) -> list[int]:
    """How long each record waited only because its worker paused from ``paused_ns`` to
    ``resumed_ns`` (pure). A record appended during the pause waited from its append; one
    appended before it waited for the model anyway until the pause began.

    >>> held_ns([Record(1, b"", ts_ns=100), Record(2, b"", ts_ns=250)], 200, 300)
    [100, 50]
    """
    return [max(0, resumed_ns - max(r.ts_ns, paused_ns)) for r in records]


class Scoring(Protocol):
    """Where a model computes, seen from its worker."""

    async def score(self, records: Sequence[Record], held_ns: Sequence[int] = ()) -> bytes | None:
        """The encoded ``list[Score]`` for ``records``, or None when the model cannot take
        them now (its host is down): those requests then have no score from it (missing).
        ``held_ns``: how long each record waited only because its worker paused, kept in its
        score (empty: none did)."""


class ThreadScoring:
    """``isolation = "thread"``: the model computes on a thread of this process.

    Each model owns one thread (tried: one thread for every model of a process measured no
    better, within noise).
    """

    def __init__(self, scorer: BatchScorer) -> None:
        self.scorer = scorer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-"
                                            f"{scorer.model}", initializer=one_thread_each)

    async def warm_up(self, example: dict[str, list[Any]] | None) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.scorer.warm_up, example)

    async def score(self, records: Sequence[Record], held_ns: Sequence[int] = ()) -> bytes | None:
        loop = asyncio.get_running_loop()
        scores = await loop.run_in_executor(
            self._executor, functools.partial(
                self.scorer.score, [r.data for r in records], [r.offset for r in records],
                held_ns=held_ns))
        return messages.encode(scores) if scores else None

    def close(self) -> None:
        self._executor.shutdown(wait=False)


class Worker:
    """Scores one deployment's input stream with one model version.

    >>> # worker = Worker(stream, "demo", "demo-hgb@1", host); worker.follow(schedule)
    >>> # await worker.run()
    """

    def __init__(self, stream: Stream, deployment: str, model: str, scoring: Scoring, *,
                 max_batch: int = 256, start: Start = "latest") -> None:
        self.stream = stream
        self.deployment = deployment
        self.model = model
        self.scoring = scoring
        self.max_batch = max_batch
        self.start = start
        self.priority = 0
        self.pace_s = 0.0
        self._consumer: Any = None
        self._stopped = False
        self._scores_topic = messages.topic(deployment, "scores")
        self._recording: set[asyncio.Task[None]] = set()
        self._room = asyncio.Semaphore(MAX_RECORDING)
        self._paused = (0, 0)  # wall-clock ns of the last pause, for held_ns
        self._unpause = asyncio.Event()  # set by ``follow``: a pause ends at once
        self._failed: BaseException | None = None  # of a background recording

    def follow(self, schedule: Schedule) -> None:
        """Take the urgency of this model's role in ``schedule`` (at start, and whenever the
        policy changes: a promoted challenger turns prompt at once)."""
        self.priority, self.pace_s = urgency(schedule, self.model,
                                             shadow_batch_s=config.SHADOW_BATCH_MS.get() / 1000)
        if self._consumer is not None:
            self._consumer.priority = self.priority
        self._unpause.set()

    async def run(self) -> None:
        self._consumer = self.stream.consume(
            messages.topic(self.deployment, "input"), group_name(self.model),
            start=self.start, max_batch=self.max_batch, priority=self.priority,
        )
        async for batch in self._consumer:
            took = time.monotonic()
            await self._handle(batch)
            pause = took + self.pace_s - time.monotonic()
            if pause > 0:
                paused = time.time_ns()
                self._unpause.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._unpause.wait(), pause)
                self._paused = (paused, time.time_ns())

    async def stop(self) -> None:
        self._stopped = True
        if self._consumer is not None:
            await self._consumer.close()
        # Scores on their way to the log are written (or, failing, left unacknowledged:
        # the batch comes back after a restart).
        await asyncio.gather(*self._recording, return_exceptions=True)

    async def _handle(self, batch: Batch) -> None:
        if self._failed is not None:
            # The engine could not confirm an earlier batch's ack: fail like a synchronous
            # ack would, so the role is started again (this batch comes back unacknowledged).
            failed, self._failed = self._failed, None
            raise failed
        held = (held_ns(batch.records, *self._paused)
                if self._paused[1] > batch.records[0].ts_ns else [])
        data = await self.scoring.score(batch.records, held)
        # The next batch need not wait for this one's scores to be durable: record them in
        # the background, at most MAX_RECORDING batches at a time.
        await self._room.acquire()
        task = asyncio.ensure_future(self._record(batch, data))
        self._recording.add(task)
        task.add_done_callback(self._recorded)

    def _recorded(self, task: asyncio.Task[None]) -> None:
        self._recording.discard(task)
        self._room.release()
        exc = None if task.cancelled() else task.exception()
        if exc is None:
            return
        # Not acknowledged: the batch comes back to the group (after a restart).
        if self._stopped:
            log.info("worker %s: a batch not recorded while stopping (%s)", self.model, exc)
        else:
            self._failed = exc

    async def _record(self, batch: Batch, data: bytes | None) -> None:
        if data is not None:
            first = batch.records[0]
            # Re-deliveries of the same batch append nothing new (engines de-duplicate ids).
            await self._append(data, f"{self.model}:{first.msg_id or first.offset}:"
                                     f"{len(batch.records)}")
        await batch.ack()

    async def _append(self, data: bytes, msg_id: str) -> None:
        """Append the scores; while the log cannot be written (a full disk), retry with
        backoff rather than drop them: the batch is acknowledged only once they are durable."""
        delay = RETRY_FIRST_S
        while True:
            try:
                await self.stream.append(self._scores_topic, [data], [msg_id])
                return
            except StreamError as exc:
                if self._stopped:
                    raise  # not acknowledged: the batch is redelivered after a restart
                log.warning("worker %s: cannot record scores (%s); retrying in %.2g s",
                            self.model, exc, delay)
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX_S, delay * 2)
