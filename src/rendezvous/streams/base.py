"""The ``Stream`` contract every engine implements (DESIGN.md §4).

Topics are append-only logs of opaque ``bytes`` records, each with a per-topic offset starting at
1. Consumers read a topic in a named *group*: every group sees every record (fan-out), the
consumers inside one group share the work, and a group's position survives restarts once its
batches are acknowledged. Delivery is at-least-once; appends carrying a ``msg_id`` already seen
on that topic (within the engine's de-duplication window) are dropped and return the original
offset, so client retries do not duplicate requests.

Engines register themselves by URL scheme (``open_stream("embedded", home=...)``,
``open_stream("nats://127.0.0.1:4222")``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import msgspec

from rendezvous.errors import ConfigError

Start = Literal["earliest", "latest"] | int


class Record(msgspec.Struct, frozen=True, gc=False):
    """One record of a topic. (A gc-untracked struct: engines hold many of them.)"""

    offset: int
    data: bytes
    msg_id: str = ""
    ts_ns: int = 0
    deliveries: int = 1  # 1 on first delivery, more on redelivery


@dataclass(frozen=True, slots=True)
class Retention:
    """How long a topic keeps records: whichever limit is hit first. ``None`` = unlimited."""

    max_age_s: float | None = 7 * 24 * 3600.0
    max_records: int | None = None


@dataclass(frozen=True, slots=True)
class Health:
    """Whether an engine can take writes now, and how many writes it holds to retry."""

    writable: bool
    backlog: int = 0
    error: str = ""


class Batch(Protocol):
    """Records handed to one consumer; acknowledge them (or nak for redelivery) once handled."""

    records: list[Record]

    async def ack(self) -> None: ...

    async def nak(self, delay_s: float = 0.0) -> None: ...


@runtime_checkable
class Consumer(Protocol):
    """Async iterator of batches for one (topic, group); ``close()`` stops it.

    ``priority`` (lower first; a change counts from the consumer's next wait) orders the
    consumers an engine wakes in one process when records arrive: the embedded engine wakes
    them in that order, so the champion's worker dispatches a request before other consumers
    run. On NATS each consumer fetches from the server on its own and the value changes
    nothing.
    """

    priority: int

    def __aiter__(self) -> AsyncIterator[Batch]: ...

    async def close(self) -> None: ...


class Source(Protocol):
    """What a role that only reads needs of a stream: consumers (see ``Stream.consume``).
    The analytics host's roles read a relay of their serving process's consumers."""

    def consume(self, topic: str, group: str, *, start: Start = "earliest",
                max_batch: int = 256, max_deliveries: int = 5,
                priority: int = 0) -> Consumer: ...


@runtime_checkable
class Stream(Protocol):
    """One stream engine. All methods are coroutine-safe within one event loop."""

    async def ensure_topic(self, topic: str, *, retention: Retention | None = None) -> None:
        """Create the topic if missing (idempotent); update its retention if given."""

    async def append(
        self, topic: str, records: Sequence[bytes], msg_ids: Sequence[str] | None = None
    ) -> list[int]:
        """Durably append records; return their offsets once durable.

        A record whose ``msg_id`` was already appended to the topic is not appended again; the
        original offset is returned in its place.
        """

    def consume(
        self,
        topic: str,
        group: str,
        *,
        start: Start = "earliest",
        max_batch: int = 256,
        max_deliveries: int = 5,
        priority: int = 0,
    ) -> Consumer:
        """Consume ``topic`` as member of ``group``.

        ``start`` applies only when the group has no committed position yet; ``priority``
        is the consumer's wake order (``Consumer.priority``). A record nak'ed or
        left unacknowledged ``max_deliveries`` times goes to the topic's dead-letter topic
        (``<topic>.dlq``) instead of being delivered again.
        """

    async def read(
        self,
        topic: str,
        *,
        from_offset: int | None = None,
        from_time_ns: int | None = None,
        limit: int = 1000,
    ) -> list[Record]:
        """Read records in offset order, from an offset or a time, without any group."""

    async def last_offset(self, topic: str) -> int:
        """Offset of the newest record, 0 for an empty topic."""

    def health(self) -> Health:
        """Whether appends can be made durable now (readiness reports it) and the backlog of
        writes that failed and are being retried."""

    async def close(self) -> None:
        """Flush pending appends and release resources."""

    def return_transport(self) -> ReturnTransport | None:
        """How results reach a proxy in another process on this engine; None when the engine
        lives in one process (proxies and rendezvous servers then meet in memory). An engine
        with a transport is shared: roles of one deployment may run in several processes."""

    async def unread(self, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The (topic, group) pairs no member is reading yet. Groups start at the newest
        record, so a record appended before its group has a reader would be missed by it: a
        proxy opens a deployment to traffic once this is empty for the roles it needs."""


class ReturnChannel(Protocol):
    """Delivers a ``Result`` (encoded) to the proxy that owns a return address."""

    async def send(self, return_to: str, data: bytes) -> None: ...


class ReturnTransport(Protocol):
    """Carries encoded ``Result``s between processes to the proxy owning a return address."""

    @property
    def connected(self) -> bool: ...

    def listen(self, address: str, handler: Callable[[bytes], None]) -> None: ...

    def forget(self, address: str) -> None: ...

    async def ready(self) -> None: ...

    async def send(self, return_to: str, data: bytes) -> None: ...

    async def close(self) -> None: ...


EngineFactory = Callable[..., Awaitable[Stream]]


@dataclass(frozen=True, slots=True)
class Engine:
    """What callers may ask of an engine before opening one (they never compare names).

    ``shared``: several processes, on several machines, can share its streams, so roles may
    run apart (``serve --role``). ``starts_server``: serving on it starts a private server on
    this machine and every role as its own process. ``partitions(url, home)``: the URLs of
    every log a deployment's records may be spread over (``serve --processes N``).
    """

    open: EngineFactory
    shared: bool = False
    starts_server: bool = False
    partitions: Callable[[str, Path], list[str]] | None = None


_ENGINES: dict[str, Engine] = {}


def register_engine(scheme: str, factory: EngineFactory, *, shared: bool = False,
                    starts_server: bool = False,
                    partitions: Callable[[str, Path], list[str]] | None = None) -> None:
    _ENGINES[scheme] = Engine(factory, shared, starts_server, partitions)


def engine(url: str) -> Engine:
    """The engine for ``url``: ``embedded``, ``local-nats`` or ``nats://host:port``."""
    # Import engines here so each registers itself without import-time side effects elsewhere.
    from rendezvous.streams import embedded  # noqa: F401

    with contextlib.suppress(ImportError):  # the nats engine needs nats-py
        from rendezvous.streams import nats  # noqa: F401
    scheme = url.split("://", 1)[0] if "://" in url else url
    found = _ENGINES.get(scheme)
    if found is None:
        known = ", ".join(sorted(_ENGINES))
        raise ConfigError(f"unknown stream engine {url!r}; known engines: {known}")
    return found


def partitions(url: str, *, home: Path) -> list[str]:
    """Every log a deployment's records may be in, as engine URLs (``url`` itself unless the
    engine partitions its logs)."""
    found = engine(url).partitions
    return found(url, home) if found is not None else [url]


def dead_letter_topic(topic: str) -> str:
    return f"{topic}.dlq"


async def open_stream(url: str, *, home: Path, read_only: bool = False,
                      reset_log: bool = False) -> Stream:
    """Open the engine for ``url``: ``embedded``, ``local-nats`` or ``nats://host:port``.

    ``read_only``: only to read (``status`` and other tools beside a running server; the
    embedded engine then takes no writer lock). ``reset_log``: start an embedded log afresh
    when the file on disk does not match the one recorded (the old files are kept aside)."""
    return await engine(url).open(url, home=home, read_only=read_only, reset_log=reset_log)
