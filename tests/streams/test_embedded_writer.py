"""The embedded log's writer thread: it runs as ``SCHED_BATCH`` on Linux, so handing it a
transaction does not push the event loop's thread off its core, and it writes a transaction's
rows in multi-row statements."""

from __future__ import annotations

import doctest
import os
import sys
import threading
from pathlib import Path

import pytest

from rendezvous.streams.embedded import log as emb
from rendezvous.streams.embedded import writer


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux scheduling policy")
async def test_the_writer_thread_runs_as_sched_batch(tmp_path: Path) -> None:
    before = os.sched_getscheduler(threading.get_native_id())
    stream = await emb.EmbeddedStream.open(tmp_path / "streams.db")
    try:
        await stream.append("t.input", [b"x"])  # the writer has run a transaction
        writers = [t for t in threading.enumerate() if t.name == "rendezvous-stream-writer"]
        assert writers and all(t.native_id is not None for t in writers)
        assert {os.sched_getscheduler(t.native_id or 0) for t in writers} == {os.SCHED_BATCH}
        # Only that thread: the event loop's keeps the policy it had.
        assert os.sched_getscheduler(threading.get_native_id()) == before
    finally:
        await stream.close()


def test_the_writer_module_examples_hold() -> None:
    assert doctest.testmod(writer, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


async def test_rows_written_in_multi_row_statements_come_back_whole_in_order(
        tmp_path: Path) -> None:
    """150 rows go in blocks of 64, 64, 16, 4, 1 and 1 rows; a block re-sent is ignored
    row by row (de-duplicated ids)."""
    data = [b"record %d" % i for i in range(150)]
    ids = [f"id{i}" for i in range(150)]
    stream = await emb.EmbeddedStream.open(tmp_path / "streams.db")
    try:
        assert await stream.append("t.input", data, ids) == list(range(1, 151))
        assert await stream.append("t.input", data[:3], ids[:3]) == [1, 2, 3]
    finally:
        await stream.close()
    stream = await emb.EmbeddedStream.open(tmp_path / "streams.db")  # what was made durable
    try:
        records = await stream.read("t.input", from_offset=1, limit=1000)
    finally:
        await stream.close()
    assert [(r.offset, r.data, r.msg_id) for r in records] == list(
        zip(range(1, 151), data, ids, strict=True))
