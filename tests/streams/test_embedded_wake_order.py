"""The embedded engine wakes a topic's waiting consumers in priority order (lowest first), and
a consumer's priority may change while it consumes (from its next wait on)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from rendezvous.streams.base import Consumer
from rendezvous.streams.embedded import log as emb

WAIT_S = 30.0


async def _first_batches(consumers: dict[str, Consumer], stream: emb.EmbeddedStream,
                         rounds: int) -> list[list[str]]:
    """Which consumer got each appended record first, round by round."""
    order: list[str] = []

    async def read(name: str, consumer: Consumer) -> None:
        async for batch in consumer:
            order.append(name)
            await batch.ack()

    async def until(done: Callable[[], bool]) -> None:
        async def poll() -> None:
            while not done():
                await asyncio.sleep(0.01)

        await asyncio.wait_for(poll(), WAIT_S)  # a regression fails, it does not hang

    async def all_waiting() -> None:
        # Each has acknowledged its last batch (a commit) and waits for the next record.
        await until(lambda: len(stream._topics["t.input"].wakeups) >= len(consumers))

    tasks = [asyncio.ensure_future(read(n, c)) for n, c in consumers.items()]
    seen = []
    try:
        for i in range(rounds):
            await all_waiting()
            order.clear()
            await stream.append("t.input", [f"r{i}".encode()])
            await until(lambda: len(order) >= len(consumers))
            seen.append(list(order))
            if i == 0:
                # Counts from its next wait: it may wait for the next record already, so
                # from the one after that at the latest.
                consumers["late"].priority = -10
    finally:
        for c in consumers.values():
            await c.close()
        await asyncio.gather(*tasks, return_exceptions=True)
    return seen


async def test_waiting_consumers_wake_lowest_priority_first(tmp_path: Path) -> None:
    stream = await emb.EmbeddedStream.open(tmp_path / "streams.db")
    try:
        await stream.ensure_topic("t.input")
        # Created (and so waiting) in the opposite order of their priorities.
        consumers: dict[str, Consumer] = {
            name: stream.consume("t.input", name, start="latest", priority=p)
            for name, p in (("late", 5), ("middle", 0), ("early", -2))}
        first, _, third = await _first_batches(consumers, stream, rounds=3)
    finally:
        await stream.close()
    assert first == ["early", "middle", "late"]
    assert third == ["late", "early", "middle"]
