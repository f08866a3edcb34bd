"""The embedded log's writer thread: group commit, and a backlog of what failed to write.

Appended records are visible to consumers (and hold their offsets) before they are durable, so
a write that fails (a full disk) cannot simply be dropped: the rows stay in a backlog that
rides along with the next transaction, and a retry with capped backoff commits it even when no
new write comes. Callers of the failed write get a ``StreamError`` at once (the proxy answers
503); ``health()`` reports the backlog and whether the log can be written.

Group positions (what consumers acknowledged) are not a transaction of their own: they ride
along with the next one, or are handed over ``POSITION_DELAY_S`` after the first one waiting
when no other write comes, and nobody waits for them (an acknowledgement returns at once, as
on NATS). A crash before they are committed means those records are delivered again, which
at-least-once delivery allows. Serving one request at a time, about half the transactions
used to commit only positions (a throwaway count); what it saves is in
``bench/results/positions``.

The thread runs as ``SCHED_BATCH`` (Linux), as the model hosts do: its wake-up, once per
event-loop iteration under load, does not push the event loop's thread off its core in the
middle of an iteration; it runs when a core frees up. Measured in ``bench/results/writer-batch``
(a likely small gain at c=32, nothing at c=1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rendezvous.errors import StreamError
from rendezvous.streams.base import Retention

log = logging.getLogger(__name__)

# The first offset of a topic stamped at or after a time (params: topic, time, topic); past
# the end when there is none. Walks the primary key from the oldest record.
FIRST_SINCE = ("COALESCE((SELECT offset FROM records WHERE topic = ? AND ts_ns >= ? "
               "ORDER BY offset LIMIT 1), (SELECT COALESCE(MAX(offset), 0) + 1 FROM records "
               "WHERE topic = ?))")
RETENTION_EVERY_S = 10.0
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 5.0
POSITION_DELAY_S = 0.1  # the longest a group position waits for a transaction to ride along

Row = tuple[str, int, str, int, bytes]
Op = tuple[str, Any, "asyncio.Future[Any] | None"]


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode survives a process crash (what "acknowledged" promises here); an OS
    # crash may lose the last transactions, the usual trade for group-commit throughput.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class Writer(threading.Thread):
    """Owns the write connection; executes queued operations in group-committed transactions.
    ``on_commit`` gets the highest offset committed per topic (called on the event loop)."""

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop,
                 on_commit: Callable[[dict[str, int]], None]) -> None:
        super().__init__(name="rendezvous-stream-writer", daemon=True)
        self.conn = connect(path)
        self.loop = loop
        self.on_commit = on_commit
        self.ops: queue.SimpleQueue[list[Op]] = queue.SimpleQueue()
        # Operations submitted during one event-loop iteration travel to the writer together:
        # one queue hand-off (and thread wake-up) per iteration, not per append.
        self._tick: list[Op] = []
        self.retention: dict[str, Retention] = {}
        self._last_retention = 0.0
        # What failed to write, retried with the next transaction (see the module docstring).
        self.backlog_rows: list[Row] = []
        self.backlog_positions: dict[tuple[str, str], int] = {}
        self.backlog_topics: dict[str, Retention] = {}
        self.error: str = ""  # the last write error, "" once a write succeeded again
        self._retry_s = RETRY_FIRST_S
        # Group positions waiting for the next hand-over (see the module docstring).
        self._positions: dict[tuple[str, str], int] = {}
        self._positions_due: asyncio.TimerHandle | None = None

    def submit(self, kind: str, payload: Any) -> asyncio.Future[Any]:
        fut = self.loop.create_future()
        if not self._tick:
            self.loop.call_soon(self._hand_over)
        self._tick.append((kind, payload, fut))
        return fut

    def position(self, topic: str, group: str, committed: int) -> None:
        """Record that ``group`` acknowledged every offset of ``topic`` up to ``committed``;
        committed with the next transaction (on the event loop; returns at once)."""
        key = (topic, group)
        self._positions[key] = max(committed, self._positions.get(key, 0))
        if self._positions_due is None and not self._tick:
            self._positions_due = self.loop.call_later(POSITION_DELAY_S, self._hand_over)

    def _hand_over(self) -> None:
        tick, self._tick = self._tick, []
        if self._positions:
            tick.append(("positions", self._positions, None))
            self._positions = {}
        if self._positions_due is not None:
            self._positions_due.cancel()
            self._positions_due = None
        if tick:
            self.ops.put(tick)

    @property
    def backlog(self) -> int:
        return len(self.backlog_rows) + len(self.backlog_positions) + len(self.backlog_topics)

    def run(self) -> None:
        with contextlib.suppress(AttributeError, OSError):  # elsewhere: the default policy
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        stop = False
        while not stop:
            try:
                # While a write has failed, retry on a timer even if nothing new comes: the
                # proxy takes no new requests until the log is writable again.
                batch = self.ops.get(timeout=self._retry_s if self.error else None)
            except queue.Empty:
                batch = []  # only the backlog, retried after its backoff
            with contextlib.suppress(queue.Empty):
                while len(batch) < 4096:
                    batch.extend(self.ops.get_nowait())
            error: BaseException | None = None
            committed: dict[str, int] = {}
            try:
                stop, committed = self._execute(batch)
            except sqlite3.Error as exc:  # surfaced to every waiter of this group
                error = exc
                stop = any(kind == "close" for kind, _, _ in batch)
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            self.loop.call_soon_threadsafe(_settle, [f for _, _, f in batch], error,
                                           committed, self.on_commit)
        if self.backlog:
            log.error("stream log %s: closing with %d writes that could not be made durable "
                      "(%s)", self.name, self.backlog, self.error)
        self.conn.close()

    def _execute(self, batch: list[Op]) -> tuple[bool, dict[str, int]]:
        rows = list(self.backlog_rows)
        positions = dict(self.backlog_positions)
        topics = dict(self.backlog_topics)
        stop = False
        for kind, payload, _ in batch:
            if kind == "append":
                rows.extend(payload)
            elif kind == "positions":
                for key, committed in payload.items():
                    positions[key] = max(committed, positions.get(key, 0))
            elif kind == "topic":
                name, ret = payload
                self.retention[name] = ret
                topics[name] = ret
            elif kind == "close":
                stop = True
        try:
            self._transaction(rows, positions, topics)
        except sqlite3.Error as exc:
            self.backlog_rows, self.backlog_positions, self.backlog_topics = (
                rows, positions, topics)
            if not self.error:
                log.error("stream log write failed (%s); keeping %d records to retry", exc,
                          len(rows))
            self.error = str(exc)
            self._retry_s = min(RETRY_MAX_S, self._retry_s * 2)
            raise
        if self.error:
            log.warning("stream log writable again; %d delayed records are durable", len(rows))
        self.backlog_rows, self.backlog_positions, self.backlog_topics = [], {}, {}
        self.error, self._retry_s = "", RETRY_FIRST_S
        highest: dict[str, int] = {}
        for topic, offset, *_ in rows:
            highest[topic] = max(offset, highest.get(topic, 0))
        return stop, highest

    def _transaction(self, rows: list[Row], positions: dict[tuple[str, str], int],
                     topics: dict[str, Retention]) -> None:
        self.conn.execute("BEGIN")
        for name, ret in topics.items():
            self.conn.execute("INSERT OR REPLACE INTO topics VALUES (?, ?, ?)",
                              (name, ret.max_age_s, ret.max_records))
        if rows:
            self.conn.executemany("INSERT OR IGNORE INTO records VALUES (?, ?, ?, ?, ?)", rows)
        if positions:
            self.conn.executemany(
                "INSERT OR REPLACE INTO positions VALUES (?, ?, ?)",
                [(t, g, c) for (t, g), c in positions.items()],
            )
        self._apply_retention({r[0] for r in rows})
        self.conn.execute("COMMIT")

    def _apply_retention(self, touched: set[str]) -> None:
        now = time.monotonic()
        by_age = now - self._last_retention >= RETENTION_EVERY_S
        if by_age:
            self._last_retention = now
        for name, ret in self.retention.items():
            if ret.max_records is not None and name in touched:
                self.conn.execute(
                    "DELETE FROM records WHERE topic = ? AND offset <= "
                    "(SELECT MAX(offset) FROM records WHERE topic = ?) - ?",
                    (name, name, ret.max_records),
                )
            if by_age and ret.max_age_s is not None:
                cutoff = time.time_ns() - int(ret.max_age_s * 1e9)
                # Offsets grow with time, so "older than cutoff" is "below the first offset
                # at or after cutoff", found along the primary key: the scan touches only the
                # rows being deleted, not the whole topic.
                self.conn.execute(
                    f"DELETE FROM records WHERE topic = ? AND offset < ({FIRST_SINCE})",
                    (name, name, cutoff, name),
                )


def _settle(futures: list[asyncio.Future[Any] | None], error: BaseException | None,
            committed: dict[str, int], on_commit: Callable[[dict[str, int]], None]) -> None:
    if committed:
        on_commit(committed)
    for fut in futures:
        if fut is None or fut.done():
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(StreamError(
                f"stream log write failed: {error}; the records are kept and retried while "
                "the server runs"))
