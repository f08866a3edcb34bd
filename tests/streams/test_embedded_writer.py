"""The embedded log's writer thread runs as ``SCHED_BATCH`` on Linux, so handing it a
transaction does not push the event loop's thread off its core."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from rendezvous.streams.embedded import log as emb


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
