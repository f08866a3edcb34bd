"""Group consumers of the NATS engine: durable pull consumers, batches, dead letters.

Dead letters: JetStream's own ``max_deliver`` only stops redelivering (it has no dead-letter
topic), and a message stuck at that limit is silently lost if the consumer that should have
moved it crashes. So the server-side limit stays unlimited and the client routes instead:

- ``Batch.nak()`` of a record already delivered ``max_deliveries`` times, and
- any fetched record delivered more than ``max_deliveries`` times (it was left unacknowledged
  past ``ack_wait``, e.g. by a crashed worker)

is appended to ``<topic>.dlq`` (msg id ``<topic>:<offset>``, so a retry is de-duplicated) and
then terminated. A record is therefore handed to the group at most ``max_deliveries`` times.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from rendezvous.errors import ConfigError, RendezvousError, StreamError
from rendezvous.streams.base import Batch, dead_letter_topic
from rendezvous.streams.nats.mapping import (
    GROUP_KEY,
    chunks,
    durable_name,
    parse_ack_reply,
    stream_name,
    subject_for,
    to_record,
)

if TYPE_CHECKING:
    from rendezvous.streams.nats.engine import NatsStream

__all__ = ["NatsBatch", "NatsConsumer"]

log = logging.getLogger(__name__)

# A first record that came within BACKLOG_S was already waiting: pull the rest of the backlog,
# waiting at most BURST_WAIT_S (a few local round trips) for it.
BACKLOG_S = 0.001
BURST_WAIT_S = 0.002

# Errors that mean "the connection is (briefly) gone": a consumer idles through them.
_CONNECTION_ERRORS = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
)


def _deliveries(msg: Msg) -> int:
    return parse_ack_reply(msg.reply)[1]


class NatsBatch:
    """Records of one fetch; ``ack``/``nak`` settle them all (a second call is a no-op)."""

    def __init__(self, consumer: NatsConsumer, msgs: list[Msg]) -> None:
        self.records = [to_record(msg) for msg in msgs]
        self.msgs = msgs
        self.settled = False
        self._consumer = consumer

    async def ack(self) -> None:
        """Acknowledge; returns once the server has recorded the group's new position."""
        if not self.settled:
            await self._consumer.ack_msgs(self.msgs)
            self.settle()

    async def nak(self, delay_s: float = 0.0) -> None:
        """Redeliver after ``delay_s``, or dead-letter records out of deliveries."""
        if not self.settled:
            await self._consumer.nak_msgs(self.msgs, delay_s)
            self.settle()

    def settle(self) -> None:
        self.settled = True
        self._consumer.outstanding.discard(self)


class NatsConsumer:
    """One member of a group: an async iterator of batches from a shared durable consumer.

    Iterate from one task at a time. ``close()`` ends the iteration within about
    ``fetch_timeout_s`` and naks batches still unacknowledged, so the group gets them again
    at once instead of after ``ack_wait_s``.
    """

    def __init__(
        self,
        engine: NatsStream,
        topic: str,
        group: str,
        policy: dict[str, Any],
        max_batch: int,
        max_deliveries: int,
        priority: int = 0,
    ) -> None:
        self.topic = topic
        self.group = group
        self.priority = priority  # see ``Consumer.priority``: the server decides who fetches first
        self.outstanding: set[NatsBatch] = set()
        self._engine = engine
        self._policy = policy
        self._max_batch = max_batch
        self._max_deliveries = max_deliveries
        self._sub: JetStreamContext.PullSubscription | None = None
        self._fetch_task: asyncio.Task[list[Msg]] | None = None
        self._closed = False

    def __aiter__(self) -> NatsConsumer:
        return self

    async def __anext__(self) -> Batch:
        while not self._closed:
            if self._sub is None:
                await self._bind()
                continue
            if self._fetch_task is None:
                self._fetch_task = asyncio.create_task(self._fetch())
            try:
                # Shielded: when our caller is cancelled (a timeout around anext) the fetch
                # carries on and the next call hands its messages out instead of losing them.
                msgs = await asyncio.shield(self._fetch_task)
            except asyncio.CancelledError:
                raise
            except BaseException:
                self._fetch_task = None
                raise
            if self._closed:
                break  # close() owns the fetched messages and releases them
            self._fetch_task = None
            msgs = await self._divert_exhausted(msgs)
            if msgs and self._closed:
                await self._release(msgs)
            elif msgs:
                batch = NatsBatch(self, msgs)
                self.outstanding.add(batch)
                return batch
        raise StopAsyncIteration

    async def close(self) -> None:
        """Stop iterating and release unacknowledged batches for redelivery (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._engine.forget(self)
        pending: list[Msg] = []
        task, self._fetch_task = self._fetch_task, None
        if task is not None:
            timeout = self._engine.fetch_timeout_s + self._engine.ack_timeout_s
            try:
                pending += await asyncio.wait_for(asyncio.shield(task), timeout)
            except (TimeoutError, RendezvousError, nats.errors.Error):
                task.cancel()
        for batch in list(self.outstanding):
            pending += batch.msgs
            batch.settle()
        try:
            pending += await self._queued()
            await self._release(pending)
        finally:
            await self._unsubscribe()

    async def _queued(self) -> list[Msg]:
        """Messages the server delivered after a pull stopped waiting for them (a burst fetch
        that timed out), still in the subscription's queue. They are this member's until
        released: left there, the group would get them back only after ``ack_wait_s``."""
        if self._sub is None or not self._engine.nc.is_connected:
            return []
        with contextlib.suppress(nats.errors.Error):
            await self._engine.nc.flush(timeout=self._engine.flush_timeout)
        # After the flush's round trip, whatever the server sent before it is queued here.
        # nats-py takes queued messages only inside a fetch, which would pull more, so its
        # queue is read directly; where a nats-py lacks it they come back after ack_wait.
        queue = getattr(getattr(self._sub, "_sub", None), "_pending_queue", None)
        if queue is None:
            return []
        msgs: list[Msg] = []
        while not queue.empty():
            msg = queue.get_nowait()
            if not JetStreamContext.is_status_msg(msg):
                msgs.append(msg)
        return msgs

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _bind(self) -> None:
        engine, topic = self._engine, self.topic
        await engine.ensure_known(topic)
        stream, name = stream_name(topic), durable_name(self.group)
        engine.require_connected("consume", topic)
        with engine.translate_errors("consume", topic):
            try:
                info = await engine.js.consumer_info(stream, name)
            except nats.js.errors.NotFoundError:
                info = await self._create_durable(stream, name)
            owner = (info.config.metadata or {}).get(GROUP_KEY, self.group)
            if owner != self.group:
                raise ConfigError(
                    f"groups {self.group!r} and {owner!r} both map to the NATS consumer "
                    f"{name!r} on topic {topic!r}; rename one of them"
                )
            self._sub = await engine.js.pull_subscribe_bind(consumer=name, stream=stream)
        if self._closed:  # closed while we were binding
            await self._unsubscribe()

    async def _create_durable(self, stream: str, name: str) -> api.ConsumerInfo:
        config = api.ConsumerConfig(
            name=name,
            durable_name=name,
            description=f"rendezvous group {self.group} on topic {self.topic}",
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self._engine.ack_wait_s,
            max_deliver=-1,  # dead letters are routed here, see the module docstring
            filter_subject=subject_for(self.topic),
            metadata={GROUP_KEY: self.group},
            **self._policy,
        )
        try:
            return await self._engine.js.add_consumer(stream, config)
        except nats.js.errors.APIError as exc:
            # Another member created it first, maybe with another start: join theirs.
            try:
                return await self._engine.js.consumer_info(stream, name)
            except nats.js.errors.NotFoundError:
                raise exc from None

    async def _fetch(self) -> list[Msg]:
        engine = self._engine
        if not engine.nc.is_connected or self._sub is None:
            # Reconnecting: a fetch would only sit in nats-py's buffer. Idle, then retry.
            await asyncio.sleep(engine.fetch_timeout_s)
            return []
        waited = time.monotonic()
        try:
            # Wait for one record, then take whatever else is already there. One pull for a
            # whole batch waits for the batch to fill (or the fetch to time out): tens of
            # milliseconds per request at low load.
            first = await self._sub.fetch(1, timeout=engine.fetch_timeout_s)
        except TimeoutError:
            return []  # nothing new within fetch_timeout_s
        except _CONNECTION_ERRORS:
            await asyncio.sleep(engine.fetch_timeout_s)
            return []
        except nats.errors.Error as exc:
            raise StreamError(
                f"fetching topic {self.topic!r} for group {self.group!r} failed: {exc}"
            ) from exc
        if self._max_batch == 1 or time.monotonic() - waited > BACKLOG_S:
            # The record had to be waited for: nothing else is queued behind it, and a second
            # pull would only add its own wait to this record's latency.
            return first
        try:
            # It was there at once: more probably are. Under load this pull returns full
            # batches, so batching is kept. Records arriving after it returns wait in the
            # subscription's queue, where the next fetch finds them first.
            return first + await self._sub.fetch(self._max_batch - 1, timeout=BURST_WAIT_S)
        except (TimeoutError, nats.errors.Error):
            return first  # an outage shows on the next fetch; these are ours to hand out

    async def _divert_exhausted(self, msgs: list[Msg]) -> list[Msg]:
        """Dead-letter records left unacknowledged ``max_deliveries`` times; return the rest."""
        exhausted = [m for m in msgs if _deliveries(m) > self._max_deliveries]
        if not exhausted:
            return msgs
        try:
            await self._dead_letter(exhausted)
        except RendezvousError as exc:
            # They stay unacknowledged, come back after ack_wait and are retried then.
            log.warning("dead-lettering %d records of %r failed: %s", len(exhausted),
                        self.topic, exc)
        return [m for m in msgs if _deliveries(m) <= self._max_deliveries]

    async def _dead_letter(self, msgs: list[Msg]) -> None:
        # Append first, then terminate: a crash in between duplicates the dead letter (and the
        # msg id de-duplicates that) rather than losing the record.
        records = [to_record(m) for m in msgs]
        await self._engine.append(
            dead_letter_topic(self.topic),
            [r.data for r in records],
            [f"{self.topic}:{r.offset}" for r in records],
        )
        await self._settle_each(msgs, "dead-letter records of", lambda m: m.term())

    async def ack_msgs(self, msgs: list[Msg]) -> None:
        """Acknowledge ``msgs`` and wait until the server has recorded it."""
        engine = self._engine
        engine.require_connected("acknowledge records of", self.topic)
        with engine.translate_errors("acknowledge records of", self.topic):
            for chunk in chunks(msgs):
                results = await asyncio.gather(
                    *(self._ack_one(msg) for msg in chunk), return_exceptions=True
                )
                for result in results:
                    if isinstance(result, BaseException):
                        raise result

    async def _ack_one(self, msg: Msg) -> None:
        # ack_sync: the group's position is durable when Batch.ack() returns.
        with contextlib.suppress(nats.errors.MsgAlreadyAckdError):
            await msg.ack_sync(timeout=self._engine.ack_timeout_s)

    async def nak_msgs(self, msgs: list[Msg], delay_s: float) -> None:
        """Redeliver ``msgs`` after ``delay_s``; dead-letter those out of deliveries."""
        self._engine.require_connected("nak records of", self.topic)
        last = [m for m in msgs if _deliveries(m) >= self._max_deliveries]
        if last:
            await self._dead_letter(last)
        again = [m for m in msgs if _deliveries(m) < self._max_deliveries]
        await self._settle_each(again, "nak records of", lambda m: m.nak(delay=delay_s or None))

    async def _release(self, msgs: list[Msg]) -> None:
        """Nak without dead-lettering: these records were only held, never handled."""
        if msgs and self._engine.nc.is_connected:  # if not, ack_wait hands them out again
            await self._settle_each(msgs, "release records of", lambda m: m.nak())

    async def _settle_each(
        self, msgs: list[Msg], action: str, settle: Callable[[Msg], Awaitable[None]]
    ) -> None:
        """Fire-and-forget ``settle(msg)`` for each message, then one flush to be sure the
        server has them (nak/term have no reply to wait for)."""
        engine = self._engine
        if not msgs:
            return
        with engine.translate_errors(action, self.topic):
            for msg in msgs:
                with contextlib.suppress(nats.errors.MsgAlreadyAckdError):
                    await settle(msg)
            await engine.nc.flush(timeout=engine.flush_timeout)
