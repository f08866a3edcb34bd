"""Who may write an embedded log, and whether the file on disk is the log this data directory
knows.

One writer per log: the engine holds an exclusive, non-blocking ``flock`` on ``<log>.lock``
while it is open, so a second server on the same log is refused at start with a message naming
the first (its pid, and its URL when a run file under ``<home>/run/`` says it). The lock is the
kernel's: it goes away with the process, so a crash never leaves a stale lock behind.

The lock file also records the log's identity (a random id also stored inside the log) and
how many records it held when it was last closed. A log file emptied, replaced or left with
only a stale write-ahead log is refused with a message saying what is wrong, instead of
starting on an empty log (``reset=True``, ``serve --reset-log``, moves the old files aside and
starts afresh).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rendezvous import config
from rendezvous.errors import LogInUseError, LogMismatchError

_SIDE_FILES = ("-wal", "-shm")


def lock_path(log: Path) -> Path:
    return log.with_name(log.name + ".lock")


def _holder(log: Path, fd: int) -> str:
    """Describe the process holding the lock: its pid, and where it serves if a run file says."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        info = {}
    pid = info.get("pid") if isinstance(info, dict) else None
    if not isinstance(pid, int):
        return "another process"
    urls = []
    for run in sorted((log.parent / "run").glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads(run.read_text())
            if isinstance(doc, dict) and doc.get("pid") == pid and doc.get("url"):
                urls.append(f"{doc['url']} ({run.stem})")
    return f"process {pid}" + (f" serving {', '.join(urls)}" if urls else "")


@dataclass
class LogGuard:
    """The held lock of one log; ``release()`` (or process exit) frees it."""

    log: Path
    fd: int
    log_id: str

    def record(self, *, records: int) -> None:
        """Rewrite the lock file's record (the holder's pid, the log's id and size)."""
        data = json.dumps({"pid": os.getpid(), "log_id": self.log_id, "records": records,
                           "at": time.time()}).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
                os.close(self.fd)
            self.fd = -1


def acquire(log: Path, *, reset: bool = False) -> LogGuard:
    """Take the writer lock of ``log`` and check the file is the log recorded beside it.

    Raises ``LogInUseError`` when another process holds the lock and ``LogMismatchError`` when
    the file does not match the record (unless ``reset``: then the old files are moved aside).
    """
    config.private_dir(log.parent)
    path = lock_path(log)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, config.FILE_MODE.get())
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(log, fd)
        os.close(fd)
        raise LogInUseError(str(log), holder) from None
    try:
        config.private_file(path)
        previous = _read_record(fd)
        if reset:
            _move_aside(log)
            previous = {}
        log_id = _check(log, previous)
    except BaseException:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        raise
    guard = LogGuard(log, fd, log_id)
    guard.record(records=int(previous.get("records", 0) or 0))
    return guard


def _read_record(fd: int) -> dict[str, Any]:
    try:
        doc = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


_FIX = ("restore the file (and its -wal file) from a backup, or start afresh with "
        "`rendezvous serve --reset-log`, which keeps the old files aside as {aside}")


def _check(log: Path, previous: dict[str, Any]) -> str:
    """The id of the log at ``log`` (new for a new log); refuse one that does not match."""
    size = log.stat().st_size if log.exists() else 0
    wal = log.with_name(log.name + "-wal")
    wal_size = wal.stat().st_size if wal.exists() else 0
    aside = f"{log.name}.reset-<time>"
    if size == 0 and wal_size > 0:
        raise LogMismatchError(
            f"the stream log {log} is empty but its write-ahead log {wal.name} holds "
            f"{wal_size} bytes: the log file was truncated or replaced while its data was "
            f"still in the write-ahead log; {_FIX.format(aside=aside)}")
    recorded = previous.get("log_id")
    found = _stored_id(log) if size else None
    if isinstance(recorded, str) and found != recorded:
        held = int(previous.get("records", 0) or 0)
        what = ("is missing or empty" if not size else
                "is another log" if found else "has no log id")
        raise LogMismatchError(
            f"the stream log {log} {what}, but this data directory recorded log {recorded} "
            f"with {held} records when it was last closed; {_FIX.format(aside=aside)}")
    if isinstance(recorded, str):
        return recorded
    return found or secrets.token_hex(8)


def _stored_id(log: Path) -> str | None:
    """The id stored inside the log, None for a log that has none (written by an older
    version: it is adopted)."""
    conn = sqlite3.connect(log)  # read-write: we hold the writer lock, and a read-only
    try:                          # open of a WAL log fails when its -shm file is gone
        row = conn.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()
    except sqlite3.DatabaseError:
        return None
    finally:
        conn.close()
    return str(row[0]) if row else None


def _move_aside(log: Path) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for suffix in ("", *_SIDE_FILES):
        src = log.with_name(log.name + suffix)
        if src.exists():
            src.rename(log.with_name(f"{log.name}.reset-{stamp}{suffix}"))
