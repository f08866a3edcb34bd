"""Test helpers for the stream suites: bounded-wait readers and an engine opener."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from rendezvous.streams.base import Batch, Consumer, Record, Stream, open_stream


class Reader:
    """Wraps one consumer with bounded waits, so a broken engine fails a test instead of
    hanging it. Holds a single iterator: ``__aiter__`` may return a fresh generator per call."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self._it = consumer.__aiter__()
        self.closed = False

    async def next(self, timeout: float = 5.0) -> Batch:
        return await asyncio.wait_for(anext(self._it), timeout)

    async def take(self, n: int, *, ack: bool = True, timeout: float = 5.0) -> list[Record]:
        """Records of whole batches until at least ``n``, acking each batch if ``ack``."""
        records: list[Record] = []
        async with asyncio.timeout(timeout):
            while len(records) < n:
                batch = await anext(self._it)
                records += batch.records
                if ack:
                    await batch.ack()
        return records

    async def nothing_within(self, seconds: float) -> bool:
        """True if no batch arrives within ``seconds``. Ends this reader's iteration either
        way (a cancelled ``anext`` may close a generator), so call it last."""
        task = asyncio.ensure_future(anext(self._it))
        done, _ = await asyncio.wait({task}, timeout=seconds)
        if done:
            batch = task.result()
            await batch.nak()
            return False
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await task
        return True

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await asyncio.wait_for(self.consumer.close(), 10)


class Engines:
    """Opens engines of one kind (re-opening = same home, or a new NATS connection) and closes
    whatever a test leaves open, consumers first."""

    def __init__(self, kind: str, home: Path, nats_url: str | None) -> None:
        self.kind = kind
        self.home = home
        self.nats_url = nats_url
        self._engines: list[Stream] = []
        self._readers: list[tuple[Stream, Reader]] = []

    async def open(self) -> Stream:
        if self.kind == "embedded":
            engine = await open_stream("embedded", home=self.home)
        else:
            from rendezvous.streams.nats.engine import NatsStream

            assert self.nats_url is not None
            # Directly rather than via open_stream(url) so these tests do not depend on the
            # embedded engine importing; test_nats_engine covers the registration.
            engine = await NatsStream.connect(self.nats_url)
        self._engines.append(engine)
        return engine

    async def close(self, engine: Stream) -> None:
        self._engines.remove(engine)
        for owner, reader in self._readers:
            if owner is engine:  # as a real process would: consumers first, then the engine
                await reader.close()
        await asyncio.wait_for(engine.close(), 10)

    async def reopen(self, engine: Stream) -> Stream:
        await self.close(engine)
        return await self.open()

    def consume(self, engine: Stream, topic: str, group: str, **options: Any) -> Reader:
        reader = Reader(engine.consume(topic, group, **options))
        self._readers.append((engine, reader))
        return reader

    async def aclose(self) -> None:
        for _, reader in self._readers:
            await reader.close()
        while self._engines:
            await asyncio.wait_for(self._engines.pop().close(), 10)
