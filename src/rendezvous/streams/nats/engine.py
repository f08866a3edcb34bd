"""The ``nats`` stream engine: the ``Stream`` contract on NATS JetStream (DESIGN.md §4).

Each topic is a file-backed JetStream stream with one subject, each group a durable pull
consumer that all members bind, each ``msg_id`` a ``Nats-Msg-Id`` header (names in
``nats_mapping``; consumers and dead letters in ``nats_consumer``).

The connection reconnects forever, so a restarted server is picked up; while it is down,
``append`` raises ``UnavailableError`` at once instead of queueing, and consumers idle.

Example::

    stream = await open_stream("nats://127.0.0.1:4222", home=home)
    await stream.append("demo.input", [b"..."], msg_ids=["req-1"])
    consumer = stream.consume("demo.input", "scorers")
    async for batch in consumer:
        handle(batch.records)
        await batch.ack()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from uuid import uuid4

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api

from rendezvous import config
from rendezvous.errors import ConfigError, RendezvousError, StreamError, UnavailableError
from rendezvous.streams.base import Health, Record, Retention, Start, register_engine
from rendezvous.streams.nats.consumer import NatsConsumer
from rendezvous.streams.nats.mapping import (
    CHUNK,
    MSG_ID_HEADER,
    check_topic,
    deliver_policy,
    durable_name,
    parse_ack_reply,
    read_start,
    stream_config,
    stream_name,
    subject_for,
    to_record,
)
from rendezvous.streams.nats.returns import NatsReturns
from rendezvous.streams.nats.server import LocalNatsServer

__all__ = ["NatsStream"]

log = logging.getLogger(__name__)

# nats-py errors meaning the server did not answer: retrying later may work.
_UNAVAILABLE = (
    TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)


class NatsStream:
    """``Stream`` on a NATS server or cluster with JetStream enabled.

    Open it with ``open_stream("nats://host:4222", home=...)`` or ``NatsStream.connect(url)``;
    ``open_stream("local-nats", home=...)`` also starts a private server under ``home/nats``.
    ``nc`` and ``js`` are the underlying nats-py connection and JetStream context.
    """

    def __init__(
        self,
        nc: Client,
        url: str,
        *,
        server: LocalNatsServer | None = None,
        ack_wait_s: float = 30.0,
        ack_timeout_s: float = 2.0,
        fetch_timeout_s: float = 0.5,
    ) -> None:
        self.nc = nc
        # JetStream API calls (stream/consumer management) may take seconds on a cluster;
        # outages are caught earlier by require_connected().
        self.js: JetStreamContext = nc.jetstream(timeout=max(5.0, ack_timeout_s))
        self.url = url
        self.ack_wait_s = ack_wait_s
        self.ack_timeout_s = ack_timeout_s
        self.fetch_timeout_s = fetch_timeout_s
        self._server = server
        self._known_topics: set[str] = set()
        self._consumers: set[NatsConsumer] = set()
        self._down = asyncio.Event()  # set while the connection is lost
        self._closed = False

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        server: LocalNatsServer | None = None,
        name: str = "rendezvous",
        ack_wait_s: float = 30.0,
        ack_timeout_s: float = 2.0,
        fetch_timeout_s: float = 0.5,
    ) -> NatsStream:
        """Connect to ``url``; once connected, reconnect forever until ``close()``.

        ``ack_wait_s``: how long a delivered, unacknowledged record waits before redelivery
        (fixed when a group is first created). ``ack_timeout_s``: how long ``append`` and
        ``Batch.ack`` wait for the server before raising ``UnavailableError``.
        ``fetch_timeout_s``: longest idle wait of one fetch, which bounds ``Consumer.close()``.
        ``server``: a private server to stop on ``close()``.
        """
        holder: list[NatsStream] = []

        async def on_disconnect() -> None:
            if holder:
                holder[0]._down.set()

        async def on_reconnect() -> None:
            if holder:
                holder[0]._down.clear()
            log.info("reconnected to NATS at %s", url)

        async def on_error(exc: Exception) -> None:
            # The default callback logs a traceback for every failed reconnect attempt.
            log.warning("NATS connection to %s: %s", url, exc or type(exc).__name__)

        try:
            nc = await nats.connect(
                url,
                name=name,
                connect_timeout=2,
                reconnect_time_wait=0.5,  # seconds; fast pick-up of a restarted server
                # A finite count makes the *first* connect fail fast; made infinite below.
                max_reconnect_attempts=1,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                error_cb=on_error,
            )
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            raise UnavailableError(
                f"cannot connect to NATS at {url}: {exc or type(exc).__name__}; is the server "
                "running, with JetStream enabled (nats-server -js)?"
            ) from exc
        # nats-py reads this option on every reconnect attempt: from now on a restarted server
        # is picked up however long it was down (-1 = forever).
        nc.options["max_reconnect_attempts"] = -1
        stream = cls(
            nc, url, server=server, ack_wait_s=ack_wait_s, ack_timeout_s=ack_timeout_s,
            fetch_timeout_s=fetch_timeout_s,
        )
        holder.append(stream)
        return stream

    # -- Stream protocol -------------------------------------------------------------------

    async def ensure_topic(self, topic: str, *, retention: Retention | None = None) -> None:
        """Create the topic's stream if missing; apply ``retention`` if given."""
        config = stream_config(topic, retention or Retention())
        self.require_connected("create", topic)
        with self.translate_errors("create", topic):
            try:
                info = await self.js.stream_info(stream_name(topic))
            except nats.js.errors.NotFoundError:
                # Concurrent creators are fine: add_stream with an identical config succeeds.
                await self.js.add_stream(config)
                self._known_topics.add(topic)
                return
            if info.config.subjects != config.subjects:
                raise ConfigError(
                    f"topic {topic!r} maps to the JetStream stream {stream_name(topic)!r}, which "
                    f"already holds {info.config.subjects}; rename one of the topics"
                )
            if retention is not None and (
                info.config.max_age != config.max_age or info.config.max_msgs != config.max_msgs
            ):
                await self.js.update_stream(config)
        self._known_topics.add(topic)

    async def append(
        self, topic: str, records: Sequence[bytes], msg_ids: Sequence[str] | None = None
    ) -> list[int]:
        """Publish and wait for every JetStream ack (the record is stored); a duplicate
        ``msg_id`` gets the original offset back. Creates a missing topic."""
        if msg_ids is not None and len(msg_ids) != len(records):
            raise ValueError(
                f"append to {topic!r}: {len(records)} records but {len(msg_ids)} msg_ids"
            )
        if not records:
            return []
        await self.ensure_known(topic)
        ids = msg_ids if msg_ids is not None else [""] * len(records)
        offsets: list[int] = []
        for start in range(0, len(records), CHUNK):
            end = start + CHUNK
            offsets += await self._publish(topic, records[start:end], ids[start:end])
        return offsets

    def consume(
        self,
        topic: str,
        group: str,
        *,
        start: Start = "earliest",
        max_batch: int = 256,
        max_deliveries: int = 5,
        priority: int = 0,
    ) -> NatsConsumer:
        """Consume ``topic`` in ``group``; the durable consumer is bound on first iteration.
        (``priority`` is kept but changes nothing: each consumer fetches from the server on
        its own.)"""
        if self._closed:
            raise StreamError(f"cannot consume topic {topic!r}: the NATS engine is closed")
        if max_batch < 1 or max_deliveries < 1:
            raise ConfigError(
                f"consume {topic!r}: max_batch ({max_batch}) and max_deliveries "
                f"({max_deliveries}) must be >= 1"
            )
        consumer = NatsConsumer(self, check_topic(topic), group, deliver_policy(start),
                                max_batch, max_deliveries, priority)
        self._consumers.add(consumer)
        return consumer

    async def read(
        self,
        topic: str,
        *,
        from_offset: int | None = None,
        from_time_ns: int | None = None,
        limit: int = 1000,
    ) -> list[Record]:
        """Read in offset order through a short-lived ephemeral consumer (no acks, no group).

        A missing topic reads as empty. With both bounds given, both apply.
        """
        name = stream_name(topic)
        if limit <= 0:
            return []
        self.require_connected("read", topic)
        with self.translate_errors("read", topic):
            try:
                state = (await self.js.stream_info(name)).state
            except nats.js.errors.NotFoundError:
                return []
            if state.messages == 0 or (from_offset or 0) > state.last_seq:
                return []
            config = api.ConsumerConfig(
                name=f"rv_read_{uuid4().hex}",
                ack_policy=api.AckPolicy.NONE,
                filter_subject=subject_for(topic),
                mem_storage=True,
                inactive_threshold=30.0,  # the server cleans up if we die mid-read
                **read_start(from_offset, from_time_ns),
            )
            info = await self.js.add_consumer(name, config)
            try:
                return await self._read_from(name, info, limit, from_time_ns or 0)
            finally:
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await self.js.delete_consumer(name, info.name)

    async def last_offset(self, topic: str) -> int:
        """The stream's last sequence number; 0 when the topic is empty or missing."""
        self.require_connected("inspect", topic)
        with self.translate_errors("inspect", topic):
            try:
                info = await self.js.stream_info(stream_name(topic))
            except nats.js.errors.NotFoundError:
                return 0
        return int(info.state.last_seq)

    async def unread(self, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Pairs whose durable consumer does not exist yet or has no pull waiting: a member
        that pulls has bound the group, so whatever is appended from then on reaches it."""
        missing = []
        for topic, group in pairs:
            try:
                info = await self.js.consumer_info(stream_name(topic), durable_name(group))
                if not info.num_waiting:
                    missing.append((topic, group))
            except (nats.js.errors.NotFoundError, nats.errors.Error, TimeoutError):
                missing.append((topic, group))
        return missing

    def return_transport(self) -> NatsReturns:
        """Results travel to proxies in other processes over core NATS on this connection."""
        return NatsReturns(self.nc)
    def health(self) -> Health:
        """Writable while connected: JetStream keeps no client-side backlog."""
        ok = self.nc.is_connected and not self._closed
        return Health(writable=ok, error="" if ok else f"not connected to {self.url}")

    async def close(self) -> None:
        """Close consumers (releasing unacknowledged batches), drain the connection, and
        stop the private server if this engine started one. Idempotent."""
        if self._closed:
            return
        for consumer in list(self._consumers):
            with contextlib.suppress(RendezvousError):
                await consumer.close()
        self._closed = True
        try:
            if self.nc.is_connected:
                await self.nc.drain()
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("draining the NATS connection to %s failed: %s", self.url, exc)
        finally:
            if not self.nc.is_closed:
                await self.nc.close()
            if self._server is not None:
                await asyncio.to_thread(self._server.stop)

    # -- shared with NatsConsumer ----------------------------------------------------------

    async def ensure_known(self, topic: str) -> None:
        """Create ``topic`` with the default retention unless this engine has seen it."""
        if topic not in self._known_topics:
            await self.ensure_topic(topic)

    def forget(self, consumer: NatsConsumer) -> None:
        self._consumers.discard(consumer)

    @property
    def flush_timeout(self) -> int:
        """``ack_timeout_s`` for ``nc.flush``, which takes whole seconds (at least 1)."""
        return max(1, round(self.ack_timeout_s))

    def require_connected(self, action: str, topic: str) -> None:
        """Raise at once while reconnecting, instead of queueing into nats-py's buffer and
        timing out later."""
        if self._closed:
            raise StreamError(f"cannot {action} topic {topic!r}: the NATS engine is closed")
        if not self.nc.is_connected:
            raise UnavailableError(
                f"cannot {action} topic {topic!r}: not connected to NATS at {self.url} "
                "(reconnecting); retry shortly"
            )

    @contextlib.contextmanager
    def translate_errors(self, action: str, topic: str) -> Iterator[None]:
        """Map nats-py errors to ``UnavailableError`` (retry may work) or ``StreamError``."""
        try:
            yield
        except _UNAVAILABLE as exc:
            if self._closed:
                raise StreamError(f"cannot {action} topic {topic!r}: engine closed") from exc
            self._known_topics.discard(topic)  # re-check the stream exists next time
            raise UnavailableError(
                f"cannot {action} topic {topic!r}: NATS at {self.url} did not answer "
                f"({type(exc).__name__}); retry shortly"
            ) from exc
        except nats.errors.MaxPayloadError as exc:
            raise StreamError(
                f"cannot {action} topic {topic!r}: a record exceeds the NATS server's "
                f"max_payload of {self.nc.max_payload} bytes; send smaller records"
            ) from exc
        except nats.errors.Error as exc:
            raise StreamError(f"NATS failed to {action} topic {topic!r}: {exc}") from exc

    # -- internals -------------------------------------------------------------------------

    async def _publish(
        self, topic: str, records: Sequence[bytes], msg_ids: Sequence[str]
    ) -> list[int]:
        subject = subject_for(topic)
        futures: list[asyncio.Future[api.PubAck]] = []
        self.require_connected("append to", topic)
        try:
            with self.translate_errors("append to", topic):
                for data, msg_id in zip(records, msg_ids, strict=True):
                    headers = {MSG_ID_HEADER: msg_id} if msg_id else None
                    futures.append(await self.js.publish_async(subject, data, headers=headers))
                acks = await self._wait_acks(topic, futures)
        finally:
            # Cancelling frees nats-py's in-flight slots held by acks that will never come.
            for future in futures:
                future.cancel()
        return [ack.seq for ack in acks]

    async def _wait_acks(
        self, topic: str, futures: list[asyncio.Future[api.PubAck]]
    ) -> list[api.PubAck]:
        """All acks, or ``UnavailableError`` once the connection drops or ``ack_timeout_s``
        passes (an ack lost with the connection would otherwise be waited for forever)."""
        acks = asyncio.gather(*futures, return_exceptions=True)
        lost = asyncio.ensure_future(self._down.wait())
        waiters: set[asyncio.Future[Any]] = {acks, lost}
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=self.ack_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            lost.cancel()
        if acks not in done:
            # Not acks.cancel(): the caller cancels the futures, which completes the gather
            # with their CancelledErrors as results instead of leaving an unretrieved error.
            why = "lost the connection" if lost in done else f"no ack in {self.ack_timeout_s:g} s"
            raise UnavailableError(
                f"append to topic {topic!r} is not confirmed ({why} from NATS at {self.url}); "
                "retry with the same msg_ids to avoid duplicates"
            )
        results: list[api.PubAck | BaseException] = acks.result()
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results  # type: ignore[return-value]  # no exceptions left

    async def _read_from(
        self, stream: str, info: api.ConsumerInfo, limit: int, min_ts_ns: int
    ) -> list[Record]:
        records: list[Record] = []
        if not info.num_pending:
            return records
        sub = await self.js.pull_subscribe_bind(consumer=info.name, stream=stream)
        try:
            while len(records) < limit:
                try:
                    msgs = await sub.fetch(min(limit - len(records), CHUNK),
                                           timeout=self.ack_timeout_s)
                except TimeoutError:
                    break  # records were trimmed by retention while we read
                for msg in msgs:
                    record = to_record(msg)
                    if record.ts_ns >= min_ts_ns and len(records) < limit:
                        records.append(record)
                if parse_ack_reply(msgs[-1].reply)[3] == 0:
                    break  # no records after this one
        finally:
            await sub.unsubscribe()
        return records


# -- registration --------------------------------------------------------------------------


async def _open_nats(url: str, *, home: Path, **_: bool) -> NatsStream:
    """``nats://host:port``: an existing server or cluster with JetStream enabled."""
    return await NatsStream.connect(url, ack_wait_s=config.NATS_ACK_WAIT_S.get())


async def _open_local_nats(url: str, *, home: Path, **_: bool) -> NatsStream:
    """``local-nats``: start a private server storing under ``home/nats``; ``close()`` stops it."""
    server = LocalNatsServer(home / "nats")
    await asyncio.to_thread(server.start)
    try:
        return await NatsStream.connect(server.url, server=server,
                                        ack_wait_s=config.NATS_ACK_WAIT_S.get())
    except BaseException:
        await asyncio.to_thread(server.stop)
        raise


register_engine("nats", _open_nats, shared=True)
register_engine("local-nats", _open_local_nats, shared=True, starts_server=True)
