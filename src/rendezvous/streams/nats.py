"""The ``nats`` stream engine: the ``Stream`` contract on NATS JetStream (DESIGN.md §4).

Mapping:

- topic ``demo.input`` -> JetStream stream ``RV_demo_input`` holding one subject
  ``rv.demo.input``; offsets are the stream's sequence numbers (first is 1).
- group ``scorers`` -> a durable pull consumer of that name (explicit ack); every member of the
  group binds the same durable, so they share its work and its acknowledged position.
- ``msg_id`` -> the ``Nats-Msg-Id`` header, de-duplicated by the stream's duplicate window
  (2 minutes, shortened to ``max_age`` when that is smaller).

Dead letters: JetStream's own ``max_deliver`` only stops redelivering (it has no dead-letter
topic), and a message stuck at that limit is silently lost if the consumer that should have
moved it crashes. So the server-side limit stays unlimited and the client routes: ``nak()`` of a
record already delivered ``max_deliveries`` times, and any fetched record delivered more often
than that (it was left unacknowledged), is appended to ``<topic>.dlq`` and then terminated.

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
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from uuid import uuid4

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from rendezvous.errors import ConfigError, RendezvousError, StreamError, UnavailableError
from rendezvous.streams.base import (
    Batch,
    Record,
    Retention,
    Start,
    dead_letter_topic,
    register_engine,
)
from rendezvous.streams.nats_server import LocalNatsServer

__all__ = ["NatsStream", "durable_name", "stream_name", "subject_for"]

log = logging.getLogger(__name__)

_TOPIC_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_MSG_ID = "Nats-Msg-Id"
_GROUP_KEY = "rendezvous_group"  # consumer metadata: the group name before sanitising
_DUPLICATE_WINDOW_S = 120.0
_CHUNK = 256  # publishes / acks in flight per append or ack call


# -- pure mapping helpers ------------------------------------------------------------------


def _check_topic(topic: str) -> str:
    if not _TOPIC_RE.fullmatch(topic):
        raise ConfigError(
            f"invalid topic name {topic!r}: use letters, digits, '_' and '-' in dot-separated "
            "parts, like 'demo.input'"
        )
    return topic


def stream_name(topic: str) -> str:
    """JetStream stream for ``topic``: stream names may not contain dots."""
    return "RV_" + _check_topic(topic).replace(".", "_")


def subject_for(topic: str) -> str:
    """The one subject the topic's stream holds."""
    return "rv." + _check_topic(topic)


def durable_name(group: str) -> str:
    """Durable consumer name for ``group`` (characters NATS forbids become ``_``)."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", group)
    if not name:
        raise ConfigError("consumer group name must not be empty")
    return name


def _stream_config(topic: str, retention: Retention) -> api.StreamConfig:
    max_age = retention.max_age_s or 0.0  # 0 = unlimited for JetStream
    # The server rejects a duplicate window longer than max_age.
    window = min(_DUPLICATE_WINDOW_S, max_age) if max_age else _DUPLICATE_WINDOW_S
    return api.StreamConfig(
        name=stream_name(topic),
        description=f"rendezvous topic {topic}",
        subjects=[subject_for(topic)],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        discard=api.DiscardPolicy.OLD,
        max_age=max_age,
        max_msgs=retention.max_records if retention.max_records is not None else -1,
        duplicate_window=window,
    )


def _deliver_policy(start: Start) -> dict[str, Any]:
    if start == "earliest":
        return {"deliver_policy": api.DeliverPolicy.ALL}
    if start == "latest":
        return {"deliver_policy": api.DeliverPolicy.NEW}
    if isinstance(start, int) and not isinstance(start, bool) and start >= 1:
        return {"deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": start}
    raise ConfigError(f"invalid start {start!r}: use 'earliest', 'latest' or an offset >= 1")


def _parse_ack_reply(reply: str) -> tuple[int, int, int, int]:
    """``(stream_seq, num_delivered, ts_ns, num_pending)`` from a JetStream ack subject.

    Parsed here rather than through ``Msg.metadata`` because that rounds the timestamp to a
    float datetime and ``Record.ts_ns`` needs the exact nanoseconds.
    """
    tokens = reply.split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        offset = 2
    elif len(tokens) >= 11:  # $JS.ACK.<domain>.<account>.<stream>... (v2, with a trailing token)
        offset = 4
    else:
        raise StreamError(f"not a JetStream message reply subject: {reply!r}")
    delivered, sseq, _cseq, ts, pending = (int(t) for t in tokens[offset + 2 : offset + 7])
    return sseq, delivered, ts, pending


def _to_record(msg: Msg) -> Record:
    sseq, delivered, ts_ns, _ = _parse_ack_reply(msg.reply)
    msg_id = msg.headers.get(_MSG_ID, "") if msg.headers else ""
    return Record(offset=sseq, data=msg.data, msg_id=msg_id, ts_ns=ts_ns, deliveries=delivered)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- the engine ----------------------------------------------------------------------------


class NatsStream:
    """``Stream`` on a NATS server or cluster with JetStream enabled.

    Open it with ``open_stream("nats://host:4222", home=...)`` or ``NatsStream.connect(url)``;
    ``open_stream("local-nats", home=...)`` also starts a private server under ``home/nats``.
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
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream(timeout=ack_timeout_s)
        self._url = url
        self._server = server
        self.ack_wait_s = ack_wait_s
        self.ack_timeout_s = ack_timeout_s
        self.fetch_timeout_s = fetch_timeout_s
        self._known_topics: set[str] = set()
        self._consumers: set[_NatsConsumer] = set()
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
        """Connect to ``url`` and keep reconnecting for as long as the engine is open.

        ``ack_wait_s``: how long a delivered, unacknowledged record waits before redelivery.
        ``ack_timeout_s``: how long ``append`` and ``Batch.ack`` wait for the server before
        raising ``UnavailableError``. ``fetch_timeout_s``: longest idle wait of one fetch, which
        bounds how long ``Consumer.close()`` takes.
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
                reconnect_time_wait=0.5,  # type: ignore[arg-type]  # seconds, float is fine
                # A finite count makes the *first* connect fail fast; set to forever below.
                max_reconnect_attempts=1,
                allow_reconnect=True,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                error_cb=on_error,
            )
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            raise UnavailableError(
                f"cannot connect to NATS at {url}: {exc or type(exc).__name__}; is the server "
                "running and is JetStream enabled (nats-server -js)?"
            ) from exc
        # nats-py reads this option on every reconnect attempt: once connected, a restarted
        # server is picked up however long it was down (-1 = retry forever).
        nc.options["max_reconnect_attempts"] = -1
        stream = cls(
            nc, url, server=server, ack_wait_s=ack_wait_s, ack_timeout_s=ack_timeout_s,
            fetch_timeout_s=fetch_timeout_s,
        )
        holder.append(stream)
        return stream

    @property
    def url(self) -> str:
        return self._url

    # -- Stream protocol -------------------------------------------------------------------

    async def ensure_topic(self, topic: str, *, retention: Retention | None = None) -> None:
        """Create the topic's stream if missing; apply ``retention`` if given."""
        config = _stream_config(topic, retention or Retention())
        self._require_connected("create", topic)
        with self._translate("create", topic):
            try:
                info = await self._js.stream_info(config.name or "")
            except nats.js.errors.NotFoundError:
                # A concurrent creator with the same config is fine: add_stream is idempotent.
                await self._js.add_stream(config)
                self._known_topics.add(topic)
                return
            if info.config.subjects != config.subjects:
                raise ConfigError(
                    f"topic {topic!r} maps to JetStream stream {config.name!r}, which already "
                    f"holds {info.config.subjects}; rename one of the topics"
                )
            if retention is not None and (
                info.config.max_age != config.max_age or info.config.max_msgs != config.max_msgs
            ):
                await self._js.update_stream(config)
        self._known_topics.add(topic)

    async def append(
        self, topic: str, records: Sequence[bytes], msg_ids: Sequence[str] | None = None
    ) -> list[int]:
        """Publish and wait for every JetStream ack; duplicates return the original offset."""
        if msg_ids is not None and len(msg_ids) != len(records):
            raise ValueError(
                f"append to {topic!r}: {len(records)} records but {len(msg_ids)} msg_ids"
            )
        if not records:
            return []
        if topic not in self._known_topics:
            await self.ensure_topic(topic)
        ids = msg_ids if msg_ids is not None else [""] * len(records)
        offsets: list[int] = []
        for start in range(0, len(records), _CHUNK):
            chunk = records[start : start + _CHUNK]
            offsets += await self._publish(topic, chunk, ids[start : start + _CHUNK])
        return offsets

    def consume(
        self,
        topic: str,
        group: str,
        *,
        start: Start = "earliest",
        max_batch: int = 256,
        max_deliveries: int = 5,
    ) -> _NatsConsumer:
        """Consume ``topic`` in ``group``; the durable consumer is bound on first iteration."""
        if self._closed:
            raise StreamError(f"cannot consume {topic!r}: the NATS engine is closed")
        if max_batch < 1 or max_deliveries < 1:
            raise ConfigError(
                f"consume {topic!r}: max_batch ({max_batch}) and max_deliveries "
                f"({max_deliveries}) must be >= 1"
            )
        consumer = _NatsConsumer(
            self, _check_topic(topic), group, _deliver_policy(start), max_batch, max_deliveries
        )
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

        With both ``from_offset`` and ``from_time_ns`` given, both are lower bounds.
        """
        name = stream_name(topic)
        if limit <= 0:
            return []
        self._require_connected("read", topic)
        with self._translate("read", topic):
            try:
                state = (await self._js.stream_info(name)).state
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
                **self._read_start(from_offset, from_time_ns),
            )
            info = await self._js.add_consumer(name, config)
            try:
                return await self._read_from(name, info, limit, from_time_ns or 0)
            finally:
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await self._js.delete_consumer(name, info.name)

    async def last_offset(self, topic: str) -> int:
        """The stream's last sequence number; 0 when the topic is empty or missing."""
        self._require_connected("inspect", topic)
        with self._translate("inspect", topic):
            try:
                info = await self._js.stream_info(stream_name(topic))
            except nats.js.errors.NotFoundError:
                return 0
        return int(info.state.last_seq)

    async def close(self) -> None:
        """Close consumers (releasing unacknowledged batches), drain the connection, and stop
        the private server if this engine started one."""
        if self._closed:
            return
        for consumer in list(self._consumers):
            with contextlib.suppress(RendezvousError):
                await consumer.close()
        self._closed = True
        try:
            if self._nc.is_connected:
                await self._nc.drain()
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("draining the NATS connection to %s failed: %s", self._url, exc)
        finally:
            if not self._nc.is_closed:
                await self._nc.close()
            if self._server is not None:
                await asyncio.to_thread(self._server.stop)

    # -- internals -------------------------------------------------------------------------

    def _require_connected(self, action: str, topic: str) -> None:
        if self._closed:
            raise StreamError(f"cannot {action} topic {topic!r}: the NATS engine is closed")
        if not self._nc.is_connected:
            # Fail fast instead of queueing into nats-py's reconnect buffer and timing out.
            raise UnavailableError(
                f"cannot {action} topic {topic!r}: not connected to NATS at {self._url} "
                "(reconnecting); retry shortly"
            )

    @contextlib.contextmanager
    def _translate(self, action: str, topic: str) -> Iterator[None]:
        """Map nats-py errors to ``UnavailableError`` (retry may work) or ``StreamError``."""
        try:
            yield
        except (
            TimeoutError,
            nats.errors.ConnectionClosedError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.NoRespondersError,
            nats.errors.OutboundBufferLimitError,
            nats.errors.StaleConnectionError,
            nats.js.errors.NoStreamResponseError,
            nats.js.errors.ServiceUnavailableError,
        ) as exc:
            if self._closed:
                raise StreamError(f"cannot {action} topic {topic!r}: engine closed") from exc
            # The stream may have been deleted behind our back: re-create it next time.
            self._known_topics.discard(topic)
            raise UnavailableError(
                f"cannot {action} topic {topic!r}: NATS at {self._url} did not answer "
                f"({type(exc).__name__}); retry shortly"
            ) from exc
        except nats.errors.MaxPayloadError as exc:
            raise StreamError(
                f"cannot {action} topic {topic!r}: a record exceeds the NATS server's "
                f"max_payload of {self._nc.max_payload} bytes; send smaller records"
            ) from exc
        except nats.errors.Error as exc:
            raise StreamError(f"NATS failed to {action} topic {topic!r}: {exc}") from exc

    async def _publish(
        self, topic: str, records: Sequence[bytes], msg_ids: Sequence[str]
    ) -> list[int]:
        subject = subject_for(topic)
        futures: list[asyncio.Future[api.PubAck]] = []
        self._require_connected("append to", topic)
        try:
            with self._translate("append to", topic):
                for data, msg_id in zip(records, msg_ids, strict=True):
                    headers = {_MSG_ID: msg_id} if msg_id else None
                    futures.append(await self._js.publish_async(subject, data, headers=headers))
                acks = await self._wait_acks(topic, futures)
        finally:
            # Cancelling releases nats-py's in-flight slots for acks that will never come.
            for future in futures:
                future.cancel()
        return [ack.seq for ack in acks]

    async def _wait_acks(
        self, topic: str, futures: list[asyncio.Future[api.PubAck]]
    ) -> list[api.PubAck]:
        """Wait for all acks, giving up when the connection drops or ``ack_timeout_s`` passes."""
        acks = asyncio.gather(*futures, return_exceptions=True)
        lost = asyncio.ensure_future(self._down.wait())
        try:
            done, _ = await asyncio.wait(
                {acks, lost}, timeout=self.ack_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            lost.cancel()
        if acks not in done:
            acks.cancel()
            why = "lost the connection" if lost in done else (
                f"no ack within {self.ack_timeout_s:g} s"
            )
            raise UnavailableError(
                f"append to topic {topic!r} is not confirmed: {why} to NATS at {self._url}; "
                "retry with the same msg_ids to avoid duplicates"
            )
        results = acks.result()
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    def _read_start(self, from_offset: int | None, from_time_ns: int | None) -> dict[str, Any]:
        if from_offset is not None and from_offset > 1:
            return {"deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE,
                    "opt_start_seq": from_offset}
        if from_time_ns is not None:
            # JetStream takes RFC 3339 with nanoseconds; the exact bound is re-checked per record.
            return {"deliver_policy": api.DeliverPolicy.BY_START_TIME,
                    "opt_start_time": _rfc3339(from_time_ns)}
        return {"deliver_policy": api.DeliverPolicy.ALL}

    async def _read_from(
        self, stream: str, info: api.ConsumerInfo, limit: int, min_ts_ns: int
    ) -> list[Record]:
        records: list[Record] = []
        if not info.num_pending:
            return records
        sub = await self._js.pull_subscribe_bind(consumer=info.name, stream=stream)
        try:
            while len(records) < limit:
                want = min(limit - len(records), _CHUNK)
                try:
                    msgs = await sub.fetch(want, timeout=self.ack_timeout_s)
                except TimeoutError:
                    break  # records trimmed by retention while we read
                for msg in msgs:
                    record = _to_record(msg)
                    if record.ts_ns >= min_ts_ns and len(records) < limit:
                        records.append(record)
                if _parse_ack_reply(msgs[-1].reply)[3] == 0:
                    break  # that was the newest record
        finally:
            await sub.unsubscribe()
        return records


def _rfc3339(ts_ns: int) -> str:
    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


# -- consumers -----------------------------------------------------------------------------


class _NatsBatch:
    """Records of one fetch; ``ack``/``nak`` settle them all (a second call is a no-op)."""

    def __init__(self, consumer: _NatsConsumer, msgs: list[Msg]) -> None:
        self.records = [_to_record(msg) for msg in msgs]
        self._consumer = consumer
        self._msgs = msgs
        self.settled = False

    async def ack(self) -> None:
        if not self.settled:
            await self._consumer._ack(self._msgs)
            self._settle()

    async def nak(self, delay_s: float = 0.0) -> None:
        if not self.settled:
            await self._consumer._nak(self._msgs, delay_s)
            self._settle()

    def _settle(self) -> None:
        self.settled = True
        self._consumer._outstanding.discard(self)


class _NatsConsumer:
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
    ) -> None:
        self._engine = engine
        self.topic = topic
        self.group = group
        self._policy = policy
        self._max_batch = max_batch
        self._max_deliveries = max_deliveries
        self._sub: JetStreamContext.PullSubscription | None = None
        self._fetch_task: asyncio.Task[list[Msg]] | None = None
        self._outstanding: set[_NatsBatch] = set()
        self._closed = False

    def __aiter__(self) -> _NatsConsumer:
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
                batch = _NatsBatch(self, msgs)
                self._outstanding.add(batch)
                return batch
        raise StopAsyncIteration

    async def close(self) -> None:
        """Stop iterating and release unacknowledged batches for redelivery (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._engine._consumers.discard(self)
        pending: list[Msg] = []
        task, self._fetch_task = self._fetch_task, None
        if task is not None:
            timeout = self._engine.fetch_timeout_s + self._engine.ack_timeout_s
            try:
                pending += await asyncio.wait_for(asyncio.shield(task), timeout)
            except (TimeoutError, RendezvousError, nats.errors.Error):
                task.cancel()
        for batch in list(self._outstanding):
            pending += batch._msgs
            batch._settle()
        try:
            await self._release(pending)
        finally:
            if self._sub is not None:
                with contextlib.suppress(nats.errors.Error):
                    await self._sub.unsubscribe()
                self._sub = None

    async def _bind(self) -> None:
        engine, topic = self._engine, self.topic
        if topic not in engine._known_topics:
            await engine.ensure_topic(topic)
        stream, name = stream_name(topic), durable_name(self.group)
        engine._require_connected("consume", topic)
        with engine._translate("consume", topic):
            try:
                info = await engine._js.consumer_info(stream, name)
            except nats.js.errors.NotFoundError:
                info = await self._create_durable(stream, name)
            owner = (info.config.metadata or {}).get(_GROUP_KEY, self.group)
            if owner != self.group:
                raise ConfigError(
                    f"groups {self.group!r} and {owner!r} both map to the NATS consumer {name!r} "
                    f"on topic {topic!r}; rename one of them"
                )
            self._sub = await engine._js.pull_subscribe_bind(consumer=name, stream=stream)
        if self._closed:  # closed while binding
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None

    async def _create_durable(self, stream: str, name: str) -> api.ConsumerInfo:
        config = api.ConsumerConfig(
            name=name,
            durable_name=name,
            description=f"rendezvous group {self.group} on topic {self.topic}",
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self._engine.ack_wait_s,
            max_deliver=-1,  # dead letters are routed by the client, see the module docstring
            filter_subject=subject_for(self.topic),
            metadata={_GROUP_KEY: self.group},
            **self._policy,
        )
        try:
            return await self._engine._js.add_consumer(stream, config)
        except nats.js.errors.APIError as exc:
            # Another member created it first, possibly with another start: join theirs.
            try:
                return await self._engine._js.consumer_info(stream, name)
            except nats.js.errors.NotFoundError:
                raise exc from None

    async def _fetch(self) -> list[Msg]:
        engine = self._engine
        if not engine._nc.is_connected or self._sub is None:
            # Reconnecting: a fetch would sit in nats-py's buffer; idle, then try again.
            await asyncio.sleep(engine.fetch_timeout_s)
            return []
        try:
            return await self._sub.fetch(self._max_batch, timeout=engine.fetch_timeout_s)
        except TimeoutError:
            return []  # nothing new within fetch_timeout_s
        except (
            nats.errors.ConnectionClosedError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.StaleConnectionError,
            nats.errors.OutboundBufferLimitError,
        ):
            await asyncio.sleep(engine.fetch_timeout_s)
            return []
        except nats.errors.Error as exc:
            raise StreamError(
                f"fetching topic {self.topic!r} for group {self.group!r} failed: {exc}"
            ) from exc

    async def _divert_exhausted(self, msgs: list[Msg]) -> list[Msg]:
        """Dead-letter records left unacknowledged ``max_deliveries`` times; return the rest."""
        live = [m for m in msgs if _parse_ack_reply(m.reply)[1] <= self._max_deliveries]
        if len(live) < len(msgs):
            exhausted = [m for m in msgs if m not in live]
            try:
                await self._dead_letter(exhausted)
            except RendezvousError as exc:
                # They stay unacknowledged, come back after ack_wait and are retried then.
                log.warning("dead-lettering %d records of %r failed: %s", len(exhausted),
                            self.topic, exc)
        return live

    async def _dead_letter(self, msgs: list[Msg]) -> None:
        """Append to ``<topic>.dlq`` first, then terminate: a crash in between duplicates
        (de-duplicated by msg id within the window) rather than loses."""
        records = [_to_record(m) for m in msgs]
        await self._engine.append(
            dead_letter_topic(self.topic),
            [r.data for r in records],
            [r.msg_id or f"{self.topic}#{r.offset}" for r in records],
        )
        with self._engine._translate("dead-letter records of", self.topic):
            for msg in msgs:
                with contextlib.suppress(nats.errors.MsgAlreadyAckdError):
                    await msg.term()
            await self._engine._nc.flush(timeout=max(1, int(self._engine.ack_timeout_s)))

    async def _ack(self, msgs: list[Msg]) -> None:
        # ack_sync waits for the server to record the ack, so the group's position is durable
        # when ack() returns; chunks keep a bounded number of requests in flight.
        engine = self._engine
        engine._require_connected("acknowledge records of", self.topic)
        with engine._translate("acknowledge records of", self.topic):
            for chunk in _chunks(msgs):
                results = await asyncio.gather(
                    *(self._ack_one(msg) for msg in chunk), return_exceptions=True
                )
                for result in results:
                    if isinstance(result, BaseException):
                        raise result

    async def _ack_one(self, msg: Msg) -> None:
        with contextlib.suppress(nats.errors.MsgAlreadyAckdError):
            await msg.ack_sync(timeout=self._engine.ack_timeout_s)

    async def _nak(self, msgs: list[Msg], delay_s: float) -> None:
        engine = self._engine
        engine._require_connected("nak records of", self.topic)
        last = [m for m in msgs if _parse_ack_reply(m.reply)[1] >= self._max_deliveries]
        if last:
            await self._dead_letter(last)
        with engine._translate("nak records of", self.topic):
            for msg in msgs:
                if msg not in last:
                    with contextlib.suppress(nats.errors.MsgAlreadyAckdError):
                        await msg.nak(delay=delay_s or None)
            await engine._nc.flush(timeout=max(1, int(engine.ack_timeout_s)))

    async def _release(self, msgs: list[Msg]) -> None:
        """Nak without dead-lettering: these records were never handled, only held."""
        if not msgs or not self._engine._nc.is_connected:
            return  # if we cannot reach the server, ack_wait hands them out again
        with self._engine._translate("release records of", self.topic):
            for msg in msgs:
                with contextlib.suppress(nats.errors.MsgAlreadyAckdError):
                    await msg.nak()
            await self._engine._nc.flush(timeout=max(1, int(self._engine.ack_timeout_s)))


# -- registration --------------------------------------------------------------------------


async def _open_nats(url: str, *, home: Path) -> NatsStream:
    """``nats://host:port``: an existing server or cluster with JetStream enabled."""
    return await NatsStream.connect(url)


async def _open_local_nats(url: str, *, home: Path) -> NatsStream:
    """``local-nats``: start a private server storing under ``home/nats``; ``close()`` stops it."""
    server = LocalNatsServer(home / "nats")
    await asyncio.to_thread(server.start)
    try:
        return await NatsStream.connect(server.url, server=server)
    except BaseException:
        await asyncio.to_thread(server.stop)
        raise


register_engine("nats", _open_nats)
register_engine("local-nats", _open_local_nats)
