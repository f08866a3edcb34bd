"""Group positions on the embedded engine ride along with the next transaction, or are
committed on their own shortly after when no other write comes; an acknowledgement returns
without waiting for either."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from rendezvous.streams.embedded import log as emb
from rendezvous.streams.embedded import writer

TOPIC = "t.input"


def committed(path: Path, group: str) -> int | None:
    """The group's position as another process would read it from the log file."""
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT committed FROM positions WHERE topic = ? AND grp = ?",
                           (TOPIC, group)).fetchone()
    finally:
        conn.close()
    return None if row is None else int(row[0])


async def take(stream: emb.EmbeddedStream, group: str) -> None:
    """Read the three records of TOPIC in ``group`` and acknowledge them."""
    consumer = stream.consume(TOPIC, group, start="earliest")
    async for batch in consumer:
        await batch.ack()
        if batch.records[-1].offset == 3:
            break
    await consumer.close()


async def test_a_position_rides_along_with_the_next_append(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "POSITION_DELAY_S", 3600.0)  # never on its own in this test
    path = tmp_path / "streams.db"
    stream = await emb.EmbeddedStream.open(path)
    try:
        await stream.append(TOPIC, [b"a", b"b", b"c"])
        await take(stream, "g")
        assert committed(path, "g") is None  # acknowledged, not committed yet
        await stream.append("t.other", [b"x"])  # returns once its transaction committed
        assert committed(path, "g") == 3
    finally:
        await stream.close()


async def test_a_position_is_committed_on_its_own_when_nothing_else_is_written(
        tmp_path: Path) -> None:
    path = tmp_path / "streams.db"
    stream = await emb.EmbeddedStream.open(path)
    try:
        await stream.append(TOPIC, [b"a", b"b", b"c"])
        await take(stream, "g")
        deadline = time.monotonic() + 10.0
        while committed(path, "g") != 3:
            assert time.monotonic() < deadline, "the position was never committed"
            await asyncio.sleep(writer.POSITION_DELAY_S)
    finally:
        await stream.close()


async def test_close_commits_waiting_positions(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "POSITION_DELAY_S", 3600.0)
    path = tmp_path / "streams.db"
    stream = await emb.EmbeddedStream.open(path)
    await stream.append(TOPIC, [b"a", b"b", b"c"])
    await take(stream, "g")
    await stream.close()
    assert committed(path, "g") == 3
    reopened = await emb.EmbeddedStream.open(path)
    try:
        await reopened.append(TOPIC, [b"d"])
        consumer = reopened.consume(TOPIC, "g", start="earliest")
        async for batch in consumer:
            assert [r.data for r in batch.records] == [b"d"]  # resumes after the position
            await batch.ack()
            break
        await consumer.close()
    finally:
        await reopened.close()
