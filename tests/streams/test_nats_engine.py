"""What the NATS engine adds to the contract: name mapping, outages, ack_wait, registration."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from rendezvous.errors import ConfigError, UnavailableError
from rendezvous.streams.base import dead_letter_topic, open_stream
from rendezvous.streams.nats.consumer import NatsConsumer
from rendezvous.streams.nats.engine import NatsStream
from rendezvous.streams.nats.mapping import (
    durable_name,
    parse_ack_reply,
    rfc3339_ns,
    stream_name,
    subject_for,
)
from rendezvous.streams.nats.server import LocalNatsServer

from .harness import Reader


@pytest.mark.parametrize(
    ("topic", "stream", "subject"),
    [
        ("demo.input", "RV_demo_input", "rv.demo.input"),
        ("demo.input.dlq", "RV_demo_input_dlq", "rv.demo.input.dlq"),
        ("m-1_x", "RV_m-1_x", "rv.m-1_x"),
    ],
)
def test_topic_mapping(topic: str, stream: str, subject: str) -> None:
    assert (stream_name(topic), subject_for(topic)) == (stream, subject)


@pytest.mark.parametrize("topic", ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", "ü"])
def test_invalid_topics_are_refused(topic: str) -> None:
    with pytest.raises(ConfigError, match="invalid topic name"):
        stream_name(topic)


@pytest.mark.parametrize(
    ("group", "durable"), [("scorers", "scorers"), ("proxy.a b", "proxy_a_b"), ("m-1", "m-1")]
)
def test_group_mapping(group: str, durable: str) -> None:
    assert durable_name(group) == durable


@pytest.mark.parametrize(
    ("reply", "parsed"),
    [
        ("$JS.ACK.S.c.3.17.9.1700000000123456789.4", (17, 3, 1700000000123456789, 4)),
        ("$JS.ACK.dom.ACC.S.c.2.5.5.1700000000000000001.0.xyz", (5, 2, 1700000000000000001, 0)),
    ],
)
def test_ack_reply_parsing_keeps_nanoseconds(
    reply: str, parsed: tuple[int, int, int, int]
) -> None:
    assert parse_ack_reply(reply) == parsed


def test_rfc3339_keeps_nanoseconds() -> None:
    assert rfc3339_ns(1_700_000_000_000_000_123) == "2023-11-14T22:13:20.000000123Z"


# -- against a real server ------------------------------------------------------------------


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[LocalNatsServer]:
    """A server this test may stop and restart; the fixture makes sure it ends stopped."""
    server = LocalNatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


@pytest.fixture
async def nats_stream(own_server: LocalNatsServer) -> AsyncIterator[NatsStream]:
    stream = await NatsStream.connect(own_server.url, ack_wait_s=0.5)
    try:
        yield stream
    finally:
        await asyncio.wait_for(stream.close(), 10)


@pytest.mark.nats
async def test_append_fails_fast_while_the_server_is_down_and_recovers(
    own_server: LocalNatsServer, nats_stream: NatsStream
) -> None:
    topic = "outage.input"
    assert await nats_stream.append(topic, [b"before"]) == [1]
    reader = Reader(nats_stream.consume(topic, "g"))
    try:
        assert [r.data for r in await reader.take(1)] == [b"before"]

        await asyncio.to_thread(own_server.stop)
        started = time.monotonic()
        with pytest.raises(UnavailableError, match=re.escape("outage.input")):
            # The first call may still find the socket open; either way it must not hang.
            for _ in range(20):
                await nats_stream.append(topic, [b"lost"], msg_ids=["m-lost"])
                await asyncio.sleep(0.05)
        assert time.monotonic() - started < 2.5

        await asyncio.to_thread(own_server.start)
        offsets = await _append_when_back(nats_stream, topic, b"after")
        assert offsets == [2]
        # The consumer survived the outage and carries on from where it was.
        assert [r.data for r in await reader.take(1, timeout=10)] == [b"after"]
    finally:
        await reader.close()


async def _append_when_back(stream: NatsStream, topic: str, data: bytes) -> list[int]:
    async with asyncio.timeout(10):
        while True:
            try:
                return await stream.append(topic, [data], msg_ids=["m-after"])
            except UnavailableError:
                await asyncio.sleep(0.1)


@pytest.mark.nats
async def test_records_left_unacked_are_redelivered_then_dead_lettered(
    nats_stream: NatsStream,
) -> None:
    topic = "stuck.input"
    await nats_stream.append(topic, [b"stuck"])
    reader = Reader(nats_stream.consume(topic, "g", max_deliveries=2))
    try:
        for attempt in (1, 2):
            batch = await reader.next()  # never acked: ack_wait_s=0.5 expires
            assert [r.deliveries for r in batch.records] == [attempt]
        # The third delivery exceeds max_deliveries and is diverted, not handed out.
        assert await reader.nothing_within(1.5)
        dead = await nats_stream.read(dead_letter_topic(topic))
        assert [(r.data, r.msg_id) for r in dead] == [(b"stuck", f"{topic}:1")]
    finally:
        await reader.close()


@pytest.mark.nats
async def test_records_delivered_after_a_pull_stopped_waiting_return_at_once_on_close(
    own_server: LocalNatsServer,
) -> None:
    # The default ack_wait (30 s): a record not released on close would not come back in time.
    stream = await NatsStream.connect(own_server.url)
    topic = "late.input"
    try:
        await stream.append(topic, [b"%d" % i for i in range(5)])
        consumer = stream.consume(topic, "g", max_batch=1)
        assert isinstance(consumer, NatsConsumer)
        reader = Reader(consumer)
        first = await reader.next()
        # What a burst fetch that timed out leaves behind: a pull the client no longer waits
        # for, whose records the server delivers into the subscription's queue.
        sub = consumer._sub
        assert sub is not None
        await stream.nc.publish(sub._nms, b'{"batch": 4, "no_wait": true}', reply=sub._deliver)
        async with asyncio.timeout(5):
            while sub.pending_msgs < 4:
                await asyncio.sleep(0.01)
        await first.ack()
        await reader.close()

        again = Reader(stream.consume(topic, "g"))
        try:
            records = await again.take(4, timeout=5)
        finally:
            await again.close()
        assert sorted(r.data for r in records) == [b"1", b"2", b"3", b"4"]
    finally:
        await asyncio.wait_for(stream.close(), 10)


@pytest.mark.nats
async def test_colliding_names_are_refused(nats_stream: NatsStream) -> None:
    await nats_stream.ensure_topic("a.b")
    with pytest.raises(ConfigError, match="rename"):
        await nats_stream.ensure_topic("a_b")
    await nats_stream.append("a.b", [b"x"])
    first = Reader(nats_stream.consume("a.b", "x.y"))
    second = Reader(nats_stream.consume("a.b", "x_y"))
    try:
        await first.take(1)
        with pytest.raises(ConfigError, match="rename"):
            await second.next()
    finally:
        await first.close()
        await second.close()


@pytest.mark.nats
async def test_retention_update_applies_to_an_existing_topic(nats_stream: NatsStream) -> None:
    from rendezvous.streams.base import Retention

    await nats_stream.append("kept.input", [b"1", b"2", b"3"])
    await nats_stream.ensure_topic("kept.input", retention=Retention(max_records=1))
    assert [r.offset for r in await nats_stream.read("kept.input")] == [3]


@pytest.mark.nats
async def test_connecting_to_nothing_fails_fast() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(UnavailableError, match=re.escape(f"127.0.0.1:{port}")):
        await NatsStream.connect(f"nats://127.0.0.1:{port}")
    assert time.monotonic() - started < 5


@pytest.mark.nats
async def test_open_stream_knows_nats_and_local_nats(
    tmp_path: Path, own_server: LocalNatsServer
) -> None:
    pytest.importorskip("rendezvous.streams.embedded.log", reason="open_stream imports it first")
    remote = await open_stream(own_server.url, home=tmp_path)
    try:
        assert isinstance(remote, NatsStream)
        assert await remote.append("reg.input", [b"x"]) == [1]
    finally:
        await remote.close()

    home = tmp_path / "home"  # own_server already stores under tmp_path / "nats"
    local = await open_stream("local-nats", home=home)
    assert isinstance(local, NatsStream)
    assert (home / "nats" / "nats-server.log").is_file()
    try:
        assert await local.append("reg.input", [b"x"]) == [1]
    finally:
        await local.close()
    with pytest.raises(UnavailableError):
        await NatsStream.connect(local.url)  # close() stopped the private server
