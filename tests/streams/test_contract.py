"""The ``Stream`` contract (DESIGN.md §4), run against every engine.

Each test uses its own topics and groups, so engines may share a server between tests.
"""

from __future__ import annotations

import asyncio
import time

from rendezvous.streams.base import Record, Retention, Stream, dead_letter_topic

from .harness import Engines


def offsets(records: list[Record]) -> list[int]:
    return [r.offset for r in records]


# -- append ---------------------------------------------------------------------------------


async def test_offsets_start_at_one_and_increase(stream: Stream, topic: str) -> None:
    assert await stream.append(topic, [b"a", b"b", b"c"]) == [1, 2, 3]
    assert await stream.append(topic, [b"d"]) == [4]
    assert await stream.append(topic, []) == []
    assert await stream.last_offset(topic) == 4


async def test_appended_records_survive_reopening(engines: Engines, topic: str) -> None:
    stream = await engines.open()
    returned = await stream.append(topic, [b"x", b"y"], msg_ids=["m1", "m2"])
    stream = await engines.reopen(stream)
    records = await stream.read(topic, from_offset=1)
    assert offsets(records) == returned
    assert [(r.data, r.msg_id) for r in records] == [(b"x", "m1"), (b"y", "m2")]


async def test_msg_id_is_appended_once_and_returns_the_original_offset(
    stream: Stream, topic: str
) -> None:
    assert await stream.append(topic, [b"first"], msg_ids=["req-1"]) == [1]
    assert await stream.append(topic, [b"retry"], msg_ids=["req-1"]) == [1]
    # Within one call too, and records without a msg id are never de-duplicated.
    assert await stream.append(topic, [b"a", b"b", b"c"], msg_ids=["req-2", "req-2", ""]) == [
        2, 2, 3,
    ]
    assert await stream.append(topic, [b"c"], msg_ids=[""]) == [4]
    records = await stream.read(topic, from_offset=1)
    assert [r.data for r in records] == [b"first", b"a", b"c", b"c"]


# -- consume --------------------------------------------------------------------------------


async def test_records_carry_data_msg_id_time_and_first_delivery(
    engines: Engines, stream: Stream, topic: str
) -> None:
    before = time.time_ns()
    await stream.append(topic, [b"payload"], msg_ids=["req-9"])
    [record] = await engines.consume(stream, topic, "g").take(1)
    assert (record.offset, record.data, record.msg_id, record.deliveries) == (
        1, b"payload", "req-9", 1,
    )
    assert before - 5_000_000_000 < record.ts_ns < time.time_ns() + 5_000_000_000


async def test_every_group_sees_every_record(
    engines: Engines, stream: Stream, topic: str
) -> None:
    await stream.append(topic, [b"%d" % i for i in range(10)])
    scorers = engines.consume(stream, topic, "scorers", max_batch=4)
    archive = engines.consume(stream, topic, "archive", max_batch=3)
    assert offsets(await scorers.take(10)) == list(range(1, 11))
    assert offsets(await archive.take(10)) == list(range(1, 11))


async def test_members_of_a_group_split_the_work(
    engines: Engines, stream: Stream, topic: str
) -> None:
    total = 40
    await stream.append(topic, [b"%d" % i for i in range(total)])
    members = [engines.consume(stream, topic, "workers", max_batch=5) for _ in range(2)]
    seen: list[list[int]] = [[], []]
    all_seen = asyncio.Event()

    async def work(i: int) -> None:
        while True:
            batch = await members[i].next()
            seen[i] += offsets(batch.records)
            await asyncio.sleep(0.02)  # "handling" the batch lets the other member fetch
            await batch.ack()
            if len(seen[0]) + len(seen[1]) >= total:
                all_seen.set()

    tasks = [asyncio.create_task(work(i)) for i in range(2)]
    try:
        await asyncio.wait_for(all_seen.wait(), 10)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert sorted(seen[0] + seen[1]) == list(range(1, total + 1))  # each exactly once
    assert seen[0] and seen[1]


async def test_acked_position_survives_reopening(engines: Engines, topic: str) -> None:
    stream = await engines.open()
    await stream.append(topic, [b"%d" % i for i in range(10)])
    reader = engines.consume(stream, topic, "g", max_batch=4)
    batch = await reader.next()
    acked = offsets(batch.records)
    await batch.ack()

    stream = await engines.reopen(stream)
    # "latest" applies only to a group without a position; this one has one.
    resumed = await engines.consume(stream, topic, "g", start="latest").take(10 - len(acked))
    assert sorted(offsets(resumed)) == [o for o in range(1, 11) if o not in acked]


async def test_nak_redelivers_with_deliveries_incremented(
    engines: Engines, stream: Stream, topic: str
) -> None:
    await stream.append(topic, [b"a"])
    reader = engines.consume(stream, topic, "g")
    for attempt in (1, 2, 3):
        batch = await reader.next()
        assert [(r.offset, r.deliveries) for r in batch.records] == [(1, attempt)]
        await batch.nak()
    batch = await reader.next()
    await batch.ack()
    assert await reader.nothing_within(0.5)


async def test_unacked_batches_return_to_the_group_when_a_consumer_closes(
    engines: Engines, stream: Stream, topic: str
) -> None:
    await stream.append(topic, [b"a", b"b", b"c"])
    holder = engines.consume(stream, topic, "g")
    held = await holder.take(3, ack=False)
    await holder.close()
    again = await engines.consume(stream, topic, "g").take(3)
    assert sorted(offsets(again)) == sorted(offsets(held))
    assert all(r.deliveries >= 2 for r in again)


async def test_nak_with_delay_redelivers_later(
    engines: Engines, stream: Stream, topic: str
) -> None:
    await stream.append(topic, [b"a"])
    reader = engines.consume(stream, topic, "g")
    batch = await reader.next()
    await batch.nak(delay_s=0.3)
    started = time.monotonic()
    [record] = await reader.take(1)
    assert record.deliveries == 2
    assert time.monotonic() - started >= 0.2


async def test_record_nakd_max_deliveries_times_goes_to_the_dead_letter_topic(
    engines: Engines, stream: Stream, topic: str
) -> None:
    await stream.append(topic, [b"poison"], msg_ids=["req-p"])
    reader = engines.consume(stream, topic, "g", max_deliveries=2)
    for attempt in (1, 2):
        batch = await reader.next()
        assert [(r.data, r.deliveries) for r in batch.records] == [(b"poison", attempt)]
        await batch.nak()
    dead = await stream.read(dead_letter_topic(topic), from_offset=1)
    # msg id "<topic>:<offset>": dead-lettering the same record twice appends it once.
    assert [(r.data, r.msg_id) for r in dead] == [(b"poison", f"{topic}:1")]
    # The group moves on: later records arrive, the dead letter does not come back.
    await stream.append(topic, [b"fine"])
    assert [r.data for r in await reader.take(1)] == [b"fine"]
    assert await reader.nothing_within(1.0)


async def test_start_latest_skips_records_appended_before(
    engines: Engines, stream: Stream, topic: str
) -> None:
    await stream.append(topic, [b"old-1", b"old-2"])
    reader = engines.consume(stream, topic, "g", start="latest")
    waiting = asyncio.ensure_future(reader.take(2))
    await asyncio.sleep(0.5)  # the consumer is running and has found nothing
    assert not waiting.done()
    await stream.append(topic, [b"new-1", b"new-2"])
    records = await asyncio.wait_for(waiting, 10)
    assert [r.data for r in records] == [b"new-1", b"new-2"]
    assert offsets(records) == [3, 4]


async def test_start_at_an_offset(engines: Engines, stream: Stream, topic: str) -> None:
    await stream.append(topic, [b"%d" % i for i in range(5)])
    records = await engines.consume(stream, topic, "g", start=3).take(3)
    assert offsets(records) == [3, 4, 5]


async def test_close_stops_iteration_promptly(
    engines: Engines, stream: Stream, topic: str
) -> None:
    await stream.ensure_topic(topic)
    reader = engines.consume(stream, topic, "g")
    seen: list[int] = []

    async def loop() -> None:
        async for batch in reader.consumer:
            seen.extend(offsets(batch.records))

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await reader.close()
    await asyncio.wait_for(task, 3)
    assert time.monotonic() - started < 3
    assert seen == []


# -- read, last_offset, retention -----------------------------------------------------------


async def test_read_from_an_offset_with_a_limit(stream: Stream, topic: str) -> None:
    await stream.append(topic, [b"%d" % i for i in range(1, 6)])
    assert offsets(await stream.read(topic)) == [1, 2, 3, 4, 5]
    assert offsets(await stream.read(topic, from_offset=3)) == [3, 4, 5]
    assert [r.data for r in await stream.read(topic, from_offset=2, limit=2)] == [b"2", b"3"]
    assert await stream.read(topic, from_offset=6) == []


async def test_read_from_a_time(stream: Stream, topic: str) -> None:
    await stream.append(topic, [b"before-1", b"before-2"])
    await asyncio.sleep(0.05)
    cut = time.time_ns()
    await asyncio.sleep(0.05)
    await stream.append(topic, [b"after-1", b"after-2"])
    records = await stream.read(topic, from_time_ns=cut)
    assert [r.data for r in records] == [b"after-1", b"after-2"]
    assert all(r.ts_ns >= cut for r in records)
    assert await stream.read(topic, from_time_ns=time.time_ns() + 10**9) == []


async def test_read_does_not_move_any_group(
    engines: Engines, stream: Stream, topic: str
) -> None:
    await stream.append(topic, [b"a", b"b"])
    await stream.read(topic)
    assert offsets(await engines.consume(stream, topic, "g").take(2)) == [1, 2]


async def test_last_offset(stream: Stream, topic: str) -> None:
    await stream.ensure_topic(topic)
    await stream.ensure_topic(topic)  # idempotent
    assert await stream.last_offset(topic) == 0
    await stream.append(topic, [b"a", b"b"])
    assert await stream.last_offset(topic) == 2


async def test_retention_max_records_keeps_the_newest(stream: Stream, topic: str) -> None:
    await stream.ensure_topic(topic, retention=Retention(max_records=3))
    assert await stream.append(topic, [b"%d" % i for i in range(1, 6)]) == [1, 2, 3, 4, 5]
    records = await stream.read(topic, from_offset=1)
    assert [(r.offset, r.data) for r in records] == [(3, b"3"), (4, b"4"), (5, b"5")]
    assert await stream.last_offset(topic) == 5


async def test_a_healthy_engine_is_writable_with_no_backlog(stream: Stream, topic: str) -> None:
    await stream.append(topic, [b"a"])
    health = stream.health()
    assert health.writable and health.backlog == 0 and health.error == ""
