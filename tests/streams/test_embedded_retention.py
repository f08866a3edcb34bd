"""Age-based retention on the embedded engine deletes old records along the offset index."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rendezvous.streams import Retention
from rendezvous.streams.embedded import log as emb
from rendezvous.streams.embedded import writer


async def test_records_older_than_max_age_are_deleted(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "RETENTION_EVERY_S", 0.0)  # apply age retention on every commit
    stream = await emb.EmbeddedStream.open(tmp_path / "streams.db")
    try:
        await stream.ensure_topic("t.input", retention=Retention(max_age_s=0.2))
        await stream.append("t.input", [b"old-1", b"old-2", b"old-3"])
        await asyncio.sleep(0.3)
        await stream.append("t.input", [b"new"])  # this commit applies retention
        kept = await stream.read("t.input", from_offset=1)
        assert [r.data for r in kept] == [b"new"] and kept[0].offset == 4
        since = await stream.read("t.input", from_time_ns=kept[0].ts_ns)
        assert [r.data for r in since] == [b"new"]
        assert await stream.read("t.input", from_time_ns=kept[0].ts_ns + 1) == []
    finally:
        await stream.close()
