"""One topic into one dataset of the evidence archive: the loop the decoy and the scorekeeper
share.

Each record's rows accumulate in the role's ``Pending``. A part is written (``Archive.write``)
once ``flush_rows`` rows wait, and every ``flush_s``; the batches those rows came in are
acknowledged only after their part is written, so a crash re-archives at worst, never loses
(readers drop such duplicates). A write that fails (a full disk, a bucket out of reach)
keeps its rows, in front of those that came meanwhile, retried with backoff up to
``RETRY_MAX_S`` while running; ``backlog`` counts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Generic, Protocol, Self, TypeVar

import msgspec
import pyarrow as pa

from rendezvous.archive import Archive
from rendezvous.errors import RendezvousError
from rendezvous.roles.reads import READ_PAUSE_S
from rendezvous.streams.base import Batch, Source

__all__ = ["RETRY_MAX_S", "ArchiveWriter", "Pending"]

log = logging.getLogger(__name__)

RETRY_MAX_S = 5.0
MAX_BATCH = 2048


class Pending(Protocol):
    """Rows waiting for their part."""

    def __len__(self) -> int: ...

    def add_record(self, data: bytes) -> None:
        """Add the rows of one record; raises ``msgspec.DecodeError`` (or ``ValidationError``)
        for a record that is not one of this topic's."""

    def extend(self, other: Self) -> None:
        """Add ``other``'s rows after these."""

    def table(self) -> pa.Table: ...

    def first_ns(self) -> int:
        """The time of the first row: it names the part's day."""


P = TypeVar("P", bound=Pending)


class ArchiveWriter(Generic[P]):
    """Reads ``topic`` in ``group`` from the latest record on, and archives its rows (built by
    ``pending()``) as parts of ``dataset``. ``name`` is how the logs call it. ``pause_s``:
    after a delivery that was not full, wait that long for records to gather (fewer, fuller
    deliveries, as the monitor's pumps); 0 reads on at once."""

    def __init__(self, stream: Source, topic: str, group: str, archive: Archive, dataset: str,
                 pending: Callable[[], P], *, name: str, flush_rows: int = 20_000,
                 flush_s: float = 1.0, pause_s: float = READ_PAUSE_S) -> None:
        self.stream, self.topic, self.group = stream, topic, group
        self.archive, self.dataset = archive, dataset
        self.name = name
        self.flush_rows, self.flush_s, self.pause_s = flush_rows, flush_s, pause_s
        self._new = pending
        self._pending = pending()
        self._batches: list[Batch] = []
        self._consumer: Any = None
        self._lock = asyncio.Lock()
        self.backlog = 0  # rows whose part could not be written, retried with backoff

    async def run(self) -> None:
        self._consumer = self.stream.consume(self.topic, self.group, start="latest",
                                             max_batch=MAX_BATCH)
        ticker = asyncio.ensure_future(self._tick())
        try:
            async for batch in self._consumer:
                for rec in batch.records:
                    try:
                        self._pending.add_record(rec.data)
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        log.error("%s: undecodable record %s of %s", self.name, rec.offset,
                                  self.topic)
                self._batches.append(batch)
                if len(self._pending) >= self.flush_rows and not self.backlog:
                    with contextlib.suppress(RendezvousError, OSError):  # the ticker retries
                        await self.flush()
                if self.pause_s and len(batch.records) < MAX_BATCH:
                    await asyncio.sleep(self.pause_s)
        finally:
            ticker.cancel()
            await self.flush()

    async def _tick(self) -> None:
        delay = self.flush_s
        while True:
            await asyncio.sleep(delay)
            try:
                await self.flush()
                delay = self.flush_s
            except (RendezvousError, OSError) as exc:
                # The rows stay pending (their batches unacknowledged), retried with backoff.
                # A batch acknowledged late may be archived twice; readers drop duplicates.
                log.warning("%s: flush failed (%s); %d rows pending, retrying", self.name, exc,
                            len(self._pending))
                delay = min(RETRY_MAX_S, max(delay * 2, 0.05))

    async def flush(self) -> None:
        """Write the pending rows as one part, then acknowledge their batches."""
        async with self._lock:
            if not self._batches:
                return
            pending, batches = self._pending, self._batches
            self._pending, self._batches = self._new(), []
            if len(pending):
                try:
                    await asyncio.to_thread(self._write, pending)
                except (RendezvousError, OSError):
                    # Kept, in front of the rows that came meanwhile, for the retry.
                    pending.extend(self._pending)
                    self._pending, self._batches = pending, batches + self._batches
                    self.backlog = len(pending)
                    raise
            self.backlog = 0
            for b in batches:
                await b.ack()

    def _write(self, pending: P) -> None:
        """Build the part and write it, in a thread: building a second's rows takes
        milliseconds (measured: up to 29 ms for 2,400 scores under load), which on the event
        loop would hold up every request in flight; in a thread the loop takes the GIL back
        at least every switch interval (5 ms). ``pending`` is no longer shared: ``flush``
        detached it."""
        self.archive.write(pending.table(), self.dataset, pending.first_ns())

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.close()
