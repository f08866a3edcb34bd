"""A worker scores every request of its deployment with one model version.

It reads the whole input stream in its own consumer group, takes everything waiting as one
micro-batch, hands the batch's exact bytes to wherever the model lives (``Scoring``: a model
host process by default, or a model thread) and appends what comes back, one framed record of
``Score``s per batch, before acknowledging the batch. It knows nothing about roles or deadlines.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from rendezvous.core import messages
from rendezvous.errors import StreamError
from rendezvous.roles.scoring import BatchScorer, input_digest, one_thread_each
from rendezvous.streams.base import Batch, Record, Start, Stream

__all__ = ["Scoring", "ThreadScoring", "Worker", "group_name", "input_digest"]

log = logging.getLogger(__name__)


RETRY_FIRST_S, RETRY_MAX_S = 0.05, 5.0  # backoff of scores that failed to be recorded


def group_name(model: str) -> str:
    return f"model-{model}"


class Scoring(Protocol):
    """Where a model computes, seen from its worker."""

    async def score(self, records: Sequence[Record]) -> bytes | None:
        """The encoded ``list[Score]`` for ``records``, or None when the model cannot take
        them now (its host is down): those requests then have no score from it (missing)."""


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

    async def score(self, records: Sequence[Record]) -> bytes | None:
        loop = asyncio.get_running_loop()
        scores = await loop.run_in_executor(
            self._executor, self.scorer.score, [r.data for r in records],
            [r.offset for r in records])
        return messages.encode(scores) if scores else None

    def close(self) -> None:
        self._executor.shutdown(wait=False)


class Worker:
    """Scores one deployment's input stream with one model version."""

    def __init__(self, stream: Stream, deployment: str, model: str, scoring: Scoring, *,
                 max_batch: int = 256, start: Start = "latest") -> None:
        self.stream = stream
        self.deployment = deployment
        self.model = model
        self.scoring = scoring
        self.max_batch = max_batch
        self.start = start
        self._consumer: Any = None
        self._stopped = False
        self._scores_topic = messages.topic(deployment, "scores")

    async def run(self) -> None:
        self._consumer = self.stream.consume(
            messages.topic(self.deployment, "input"), group_name(self.model),
            start=self.start, max_batch=self.max_batch,
        )
        async for batch in self._consumer:
            await self._handle(batch)

    async def stop(self) -> None:
        self._stopped = True
        if self._consumer is not None:
            await self._consumer.close()

    async def _handle(self, batch: Batch) -> None:
        data = await self.scoring.score(batch.records)
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
