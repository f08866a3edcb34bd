"""The embedded stream engine: in-process fan-out plus a durable SQLite (WAL) log.

One process, nothing to install. Appended records are handed to in-process consumers at once
(from a small in-memory window) while a writer thread commits them to SQLite in groups: every
append waiting at that moment shares one transaction (group commit). ``append`` returns only
after its records are committed, so the proxy acknowledges nothing that a process crash could
lose. Consumers that fall behind the in-memory window catch up from SQLite.

Group positions (the highest offset below which everything was acknowledged) are committed by
the same writer, riding along with the next transaction (``writer``), so a restarted consumer
resumes where its group left off, give or take the acknowledgements of the last
``writer.POSITION_DELAY_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rendezvous import config
from rendezvous.errors import ConfigError, StreamError
from rendezvous.streams.base import (
    Health,
    Record,
    Retention,
    Start,
    dead_letter_topic,
    register_engine,
)
from rendezvous.streams.embedded import guard
from rendezvous.streams.embedded.writer import FIRST_SINCE, Writer, connect

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL, offset INTEGER NOT NULL, msg_id TEXT NOT NULL, ts_ns INTEGER NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (topic, offset)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS positions (
    topic TEXT NOT NULL, grp TEXT NOT NULL, committed INTEGER NOT NULL,
    PRIMARY KEY (topic, grp)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS topics (
    topic TEXT PRIMARY KEY, max_age_s REAL, max_records INTEGER);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

DEDUP_WINDOW = 100_000  # message ids remembered per topic for de-duplication


@dataclass
class _Group:
    name: str
    cursor: int  # next offset to hand out from the log
    committed: int  # every offset <= committed is acknowledged
    acked: set[int] = field(default_factory=set)
    redeliver: deque[Record] = field(default_factory=deque)
    attached: int = 0

    def ack(self, offsets: Sequence[int]) -> bool:
        """Mark offsets done; return True when the committed position moved."""
        self.acked.update(offsets)
        moved = False
        while self.committed + 1 in self.acked:
            self.committed += 1
            self.acked.discard(self.committed)
            moved = True
        return moved


@dataclass
class _Topic:
    name: str
    next_offset: int = 1
    durable: int = 0  # highest offset committed to SQLite
    first_offset: int = 1  # oldest offset still in the log (retention moves it)
    # Recent records, window[i] has offset window_base + i. A list (not a deque) so that a
    # consumer's slice costs O(batch), not O(position in the window).
    window: list[Record] = field(default_factory=list)
    window_base: int = 1
    dedup: OrderedDict[str, int] = field(default_factory=OrderedDict)
    groups: dict[str, _Group] = field(default_factory=dict)
    retention: Retention | None = None
    # Waiting consumers by priority: ``notify`` wakes the lowest first, so the champion's
    # worker hands a new request to its model host before anything else runs.
    wakeups: dict[int, asyncio.Future[None]] = field(default_factory=dict)

    def notify(self) -> None:
        if not self.wakeups:
            return
        wakeups, self.wakeups = self.wakeups, {}
        for priority in sorted(wakeups):
            if not wakeups[priority].done():
                wakeups[priority].set_result(None)

    def wait(self, priority: int = 0) -> asyncio.Future[None]:
        fut = self.wakeups.get(priority)
        if fut is None:
            fut = self.wakeups[priority] = asyncio.get_running_loop().create_future()
        return fut

    def trim_window(self) -> None:
        # Keep only what an attached group has yet to read and what is not durable yet;
        # everything else can be read back from SQLite. This keeps memory flat.
        active = [g.cursor for g in self.groups.values() if g.attached]
        keep_from = min([*active, self.durable + 1])
        drop = keep_from - self.window_base
        # Cut the front only when it is a good part of the list: amortized O(1) per record.
        if drop > 0 and (drop >= len(self.window) or drop * 2 >= len(self.window)):
            del self.window[:drop]
            self.window_base += drop


class _Batch:
    __slots__ = ("_consumer", "_done", "records")

    def __init__(self, consumer: EmbeddedConsumer, records: list[Record]) -> None:
        self._consumer = consumer
        self.records = records
        self._done = False

    async def ack(self) -> None:
        if not self._done:
            self._done = True
            await self._consumer._ack(self.records)

    async def nak(self, delay_s: float = 0.0) -> None:
        if not self._done:
            self._done = True
            await self._consumer._nak(self.records, delay_s)


class EmbeddedConsumer:
    """One member of a consumer group on the embedded engine."""

    def __init__(
        self, stream: EmbeddedStream, topic: str, group: str, start: Start,
        max_batch: int, max_deliveries: int, priority: int = 0,
    ) -> None:
        self.priority = priority
        self._stream = stream
        self._topic_name = topic
        self._group_name = group
        self._start = start
        self._max_batch = max_batch
        self._max_deliveries = max_deliveries
        self._closed = False
        self._unacked: dict[int, Record] = {}
        self._topic: _Topic | None = None
        self._group: _Group | None = None
        self._released = False

    def __aiter__(self) -> AsyncIterator[_Batch]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[_Batch]:
        self._topic, self._group = await self._stream._attach(
            self._topic_name, self._group_name, self._start
        )
        try:
            while not self._closed:
                records = await self._next_records(self._topic, self._group)
                if records:
                    for rec in records:
                        self._unacked[rec.offset] = rec
                    yield _Batch(self, records)
        finally:
            self._release()

    async def _next_records(self, topic: _Topic, group: _Group) -> list[Record]:
        if group.redeliver:
            n = min(self._max_batch, len(group.redeliver))
            return [group.redeliver.popleft() for _ in range(n)]
        if group.cursor < topic.first_offset:
            group.cursor = topic.first_offset
        if group.cursor < topic.next_offset:
            lo = group.cursor
            if lo >= topic.window_base:
                idx = lo - topic.window_base
                records = topic.window[idx:idx + self._max_batch]
            else:
                hi = min(lo + self._max_batch, topic.window_base)
                group.cursor = hi  # claim the range before awaiting, so peers skip it
                records = await self._stream._read_range(topic.name, lo, hi)
                if not records:  # trimmed by retention meanwhile
                    return []
            group.cursor = max(group.cursor, records[-1].offset + 1)
            topic.trim_window()
            return records
        await topic.wait(self.priority)
        return []

    async def _ack(self, records: list[Record]) -> None:
        group = self._group
        assert group is not None  # a batch exists only after _attach
        for rec in records:
            self._unacked.pop(rec.offset, None)
        self._ack_offsets(group, [r.offset for r in records])

    async def _nak(self, records: list[Record], delay_s: float) -> None:
        group, topic = self._group, self._topic
        assert group is not None and topic is not None
        dead = [r for r in records if r.deliveries >= self._max_deliveries]
        again = [
            Record(r.offset, r.data, r.msg_id, r.ts_ns, r.deliveries + 1)
            for r in records if r.deliveries < self._max_deliveries
        ]
        for rec in records:
            self._unacked.pop(rec.offset, None)
        if dead:
            await self._stream.append(
                dead_letter_topic(self._topic_name), [r.data for r in dead],
                [f"{self._topic_name}:{r.offset}" for r in dead],
            )
            self._ack_offsets(group, [r.offset for r in dead])
        if again:
            def requeue() -> None:
                group.redeliver.extend(again)
                topic.notify()

            if delay_s > 0:
                asyncio.get_running_loop().call_later(delay_s, requeue)
            else:
                requeue()

    def _ack_offsets(self, group: _Group, offsets: list[int]) -> None:
        if group.ack(offsets):
            self._stream._writing("acknowledge").position(
                self._topic_name, group.name, group.committed)

    def _release(self) -> None:
        if self._group is not None and not self._released:
            self._released = True
            self._group.attached -= 1
            # Whatever this consumer held unacknowledged goes back to its group.
            self._group.redeliver.extend(
                Record(r.offset, r.data, r.msg_id, r.ts_ns, r.deliveries + 1)
                for r in sorted(self._unacked.values(), key=lambda r: r.offset)
            )
            self._unacked.clear()
            if self._topic is not None:
                self._topic.notify()

    async def close(self) -> None:
        self._closed = True
        # Hand unacknowledged records back now: the generator's own cleanup only runs once
        # it is resumed or collected.
        self._release()
        if self._topic is not None:
            self._topic.notify()


class EmbeddedStream:
    """The default engine. Use ``await EmbeddedStream.open(path)`` or ``open_stream``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._topics: dict[str, _Topic] = {}
        self._read_conn: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._writer: Writer | None = None
        self._guard: guard.LogGuard | None = None
        self._closed = False

    @classmethod
    async def open(cls, path: Path, *, read_only: bool = False,
                   reset: bool = False) -> EmbeddedStream:
        """Open the log at ``path`` for writing: one writer per log (``LogInUseError`` names
        the process holding it), and the file must be the log recorded beside it
        (``LogMismatchError``; ``reset=True`` moves the old files aside and starts afresh).

        ``read_only=True`` opens it to read only (``read``, ``last_offset``), beside a server
        that may be writing it: no lock, nothing created."""
        self = cls(path)
        if read_only:
            self._read_conn = _read_only_connect(path)
            return self
        self._guard = await asyncio.to_thread(guard.acquire, path, reset=reset)
        try:
            conn = connect(path)
            conn.executescript(_SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('log_id', ?)",
                         (self._guard.log_id,))
            for suffix in ("", "-wal", "-shm"):
                side = path.with_name(path.name + suffix)
                if side.exists():
                    config.private_file(side)
        except BaseException:
            self._guard.release()
            raise
        self._read_conn = conn
        self._writer = Writer(path, asyncio.get_running_loop(), self._on_commit)
        for name, age, limit in conn.execute("SELECT topic, max_age_s, max_records FROM topics"):
            self._writer.retention[name] = Retention(age, limit)
        self._writer.start()
        return self

    def _writing(self, what: str) -> Writer:
        if self._writer is None:
            raise StreamError(f"cannot {what}: the log {self.path} is open read-only")
        return self._writer

    def _on_commit(self, committed: dict[str, int]) -> None:
        for name, offset in committed.items():
            t = self._topics.get(name)
            if t is not None and offset > t.durable:
                t.durable = offset
                if t.retention is not None and t.retention.max_records is not None:
                    t.first_offset = max(t.first_offset, t.durable - t.retention.max_records + 1)
                t.trim_window()

    def health(self) -> Health:
        """Whether the log can be written, and how many writes wait to be retried."""
        if self._writer is None:
            return Health(writable=False, error="open read-only")
        return Health(writable=not self._writer.error, backlog=self._writer.backlog,
                      error=self._writer.error)

    # -- topics -------------------------------------------------------------------------------

    def _load_topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is not None:
            return topic
        assert self._read_conn is not None
        with self._read_lock:
            lo, hi = self._read_conn.execute(
                "SELECT MIN(offset), MAX(offset) FROM records WHERE topic = ?", (name,)
            ).fetchone()
            recent = self._read_conn.execute(
                "SELECT msg_id, offset FROM records WHERE topic = ? AND msg_id != '' "
                "ORDER BY offset DESC LIMIT ?", (name, DEDUP_WINDOW),
            ).fetchall()
        topic = _Topic(name, next_offset=(hi or 0) + 1, durable=hi or 0, first_offset=lo or 1,
                       window_base=(hi or 0) + 1)
        topic.retention = self._writer.retention.get(name) if self._writer else None
        for msg_id, offset in reversed(recent):
            topic.dedup[msg_id] = offset
        self._topics[name] = topic
        return topic

    async def ensure_topic(self, topic: str, *, retention: Retention | None = None) -> None:
        t = self._load_topic(topic)
        if retention is not None:
            t.retention = retention
            await self._writing(f"set the retention of {topic!r}").submit(
                "topic", (topic, retention))

    # -- writing ------------------------------------------------------------------------------

    async def append(
        self, topic: str, records: Sequence[bytes], msg_ids: Sequence[str] | None = None
    ) -> list[int]:
        if self._closed:
            raise StreamError(f"cannot append to {topic!r}: the stream engine is closed")
        writer = self._writing(f"append to {topic!r}")
        t = self._load_topic(topic)
        now = time.time_ns()
        offsets: list[int] = []
        rows: list[tuple[str, int, str, int, bytes]] = []
        for i, data in enumerate(records):
            msg_id = msg_ids[i] if msg_ids is not None else ""
            if msg_id:
                seen = t.dedup.get(msg_id)
                if seen is not None:
                    offsets.append(seen)
                    continue
                t.dedup[msg_id] = t.next_offset
                if len(t.dedup) > DEDUP_WINDOW:
                    t.dedup.popitem(last=False)
            offset = t.next_offset
            t.next_offset += 1
            rec = Record(offset, bytes(data), msg_id, now)
            t.window.append(rec)
            rows.append((topic, offset, msg_id, now, rec.data))
            offsets.append(offset)
        if not rows:
            if offsets and max(offsets) > t.durable:
                # Seen before but not durable yet (in the commit under way, or in the backlog
                # of a failed write): answer only once it is.
                if writer.error:
                    raise StreamError(f"records of {topic!r} are not durable yet: the log "
                                      f"cannot be written ({writer.error}); retry shortly")
                await writer.submit("sync", None)
            return offsets
        t.notify()  # consumers see the records now; the caller waits for durability
        await writer.submit("append", rows)  # durability is recorded by _on_commit
        return offsets

    # -- reading ------------------------------------------------------------------------------

    async def _attach(self, topic: str, group: str, start: Start) -> tuple[_Topic, _Group]:
        t = self._load_topic(topic)
        g = t.groups.get(group)
        if g is None:
            assert self._read_conn is not None
            with self._read_lock:
                row = self._read_conn.execute(
                    "SELECT committed FROM positions WHERE topic = ? AND grp = ?", (topic, group)
                ).fetchone()
            if row is not None:
                committed = row[0]
            elif start == "earliest":
                committed = t.first_offset - 1
            elif start == "latest":
                committed = t.next_offset - 1
            elif isinstance(start, int) and start >= 1:
                committed = start - 1
            else:
                raise StreamError(
                    f"invalid start {start!r} for topic {topic!r}: use 'earliest', 'latest' "
                    "or an offset >= 1"
                )
            g = _Group(group, cursor=committed + 1, committed=committed)
            t.groups[group] = g
        g.attached += 1
        return t, g

    def consume(
        self, topic: str, group: str, *, start: Start = "earliest", max_batch: int = 256,
        max_deliveries: int = 5, priority: int = 0,
    ) -> EmbeddedConsumer:
        if max_batch < 1 or max_deliveries < 1:
            raise StreamError("max_batch and max_deliveries must be at least 1")
        return EmbeddedConsumer(self, topic, group, start, max_batch, max_deliveries, priority)

    def _select(self, sql: str, args: tuple[Any, ...]) -> list[Record]:
        assert self._read_conn is not None
        with self._read_lock:
            try:
                rows = self._read_conn.execute(sql, args).fetchall()
            except sqlite3.OperationalError as exc:
                raise StreamError(f"cannot read the stream log {self.path}: {exc}") from None
        return [Record(o, d, m, ts) for o, m, ts, d in rows]

    async def _read_range(self, topic: str, lo: int, hi: int) -> list[Record]:
        return await asyncio.to_thread(
            self._select,
            "SELECT offset, msg_id, ts_ns, data FROM records WHERE topic = ? AND offset >= ? "
            "AND offset < ? ORDER BY offset", (topic, lo, hi),
        )

    async def read(
        self, topic: str, *, from_offset: int | None = None, from_time_ns: int | None = None,
        limit: int = 1000,
    ) -> list[Record]:
        if from_time_ns is not None:
            sql = ("SELECT offset, msg_id, ts_ns, data FROM records WHERE topic = ? "
                   f"AND offset >= ({FIRST_SINCE}) ORDER BY offset LIMIT ?")
            args: tuple[Any, ...] = (topic, topic, from_time_ns, topic, limit)
        else:
            sql = ("SELECT offset, msg_id, ts_ns, data FROM records WHERE topic = ? "
                   "AND offset >= ? ORDER BY offset LIMIT ?")
            args = (topic, from_offset or 1, limit)
        return await asyncio.to_thread(self._select, sql, args)

    async def last_offset(self, topic: str) -> int:
        return self._load_topic(topic).durable

    def return_transport(self) -> None:
        """None: one process owns an embedded log, so results never leave it."""
        return None

    async def unread(self, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """None: every role reading an embedded log runs in its process, started before its
        proxy opens."""
        return []

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for t in self._topics.values():
            t.notify()
        if self._writer is not None:
            await self._writer.submit("close", None)
            await asyncio.to_thread(self._writer.join)
        if self._read_conn is not None:
            if self._guard is not None:
                with contextlib.suppress(sqlite3.Error, OSError):
                    (n,) = self._read_conn.execute("SELECT COUNT(*) FROM records").fetchone()
                    self._guard.record(records=n)
            self._read_conn.close()
        if self._guard is not None:
            self._guard.release()


DEFAULT_LOG = "streams.db"
_LOG_NAME = re.compile(r"streams[A-Za-z0-9_.-]*\.db")


def log_path(url: str, home: Path) -> Path:
    """The log file for ``embedded`` (``<home>/streams.db``) or ``embedded://NAME`` (another
    log under ``home``, e.g. one per partition when several processes serve).

    >>> log_path("embedded://streams-p1.db", Path("/h")).as_posix()
    '/h/streams-p1.db'
    """
    name = url.split("://", 1)[1] if "://" in url else DEFAULT_LOG
    if not _LOG_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid embedded log name {name!r} in {url!r}: use embedded://streams<suffix>.db "
            "(letters, digits, '_', '-', '.'; a file directly under the data directory)"
        )
    return home / name


def partition_url(index: int) -> str:
    """Engine URL of partition ``index`` of ``serve --processes N`` (0 is the default log, so
    a single process and process 0 of several read and write the same file)."""
    return "embedded" if index == 0 else f"embedded://streams-p{index}.db"


def partition_urls(home: Path) -> list[str]:
    """Every embedded log under ``home`` as an engine URL: the default one first, then the
    logs of further partitions (``serve --processes N``)."""
    extra = sorted(p.name for p in home.glob("streams?*.db") if p.name != DEFAULT_LOG)
    return ["embedded", *(f"embedded://{name}" for name in extra)]


def _read_only_connect(path: Path) -> sqlite3.Connection:
    """A connection that reads ``path`` and never writes it; an empty in-memory log when
    there is no file yet."""
    if not path.exists() or path.stat().st_size == 0:
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        conn.executescript(_SCHEMA)
        return conn
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA query_only=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


async def _factory(url: str, *, home: Path, read_only: bool = False,
                   reset_log: bool = False) -> EmbeddedStream:
    return await EmbeddedStream.open(log_path(url, home), read_only=read_only, reset=reset_log)


def _partitions(url: str, home: Path) -> list[str]:
    return partition_urls(home) if url == "embedded" else [url]


register_engine("embedded", _factory, partitions=_partitions)
