"""The analytics host process: one deployment's meta-analytics beside its serving process.

Started by ``AnalyticsHost`` (never by hand) as::

    python -m rendezvous.hosting.analytics_main --deployment demo --fd 5 --home …

It runs the monitor's analytics (``roles.monitor.Monitor``: windows, comparisons, drift,
accuracy, alarms, the promotion watch, the webhook) and the scorekeeper over what its serving
process relays: the records of the monitor's topics exactly as the stream holds them
(``analytics_protocol.Delivery``). A delivery is acknowledged back when the role that read it
acknowledges it, and only then does the serving process acknowledge it on the stream, so a
crash of this process loses nothing: the serving process hands what was in flight to the next
one. It answers the analytics documents (``Ask``) and follows policy changes (``Follow``). It
exits when its parent closes the socket or dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from rendezvous.errors import ConfigError
from rendezvous.hosting import heap
from rendezvous.hosting.analytics_protocol import (
    Acked,
    Answer,
    Ask,
    Delivery,
    Follow,
    frame,
    from_parent,
)
from rendezvous.hosting.child import read_frame
from rendezvous.hosting.host_main import LOAD_FAILED, below_the_parent, die_with_parent
from rendezvous.hosting.protocol import HostReport, HostState
from rendezvous.streams.base import Record, Start

if TYPE_CHECKING:
    from rendezvous.roles.monitor import Monitor

__all__ = ["Relay", "main"]

STOP_TIMEOUT_S = 10.0  # for the roles to archive and acknowledge what they hold at stop


class _Batch:
    """A relayed delivery; ``ack`` tells the serving process, ``nak`` delivers it again."""

    def __init__(self, consumer: _Consumer, seq: int, records: list[Record]) -> None:
        self._consumer = consumer
        self.seq = seq
        self.records = records

    async def ack(self) -> None:
        self._consumer.acked(self.seq)

    async def nak(self, delay_s: float = 0.0) -> None:
        await asyncio.sleep(delay_s)
        self._consumer.queue.put_nowait(self)


class _Consumer:
    priority = 0

    def __init__(self, acked: Callable[[int], None]) -> None:
        self.acked = acked
        self.queue: asyncio.Queue[_Batch | None] = asyncio.Queue()

    def __aiter__(self) -> AsyncIterator[_Batch]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[_Batch]:
        while (batch := await self.queue.get()) is not None:
            yield batch

    async def close(self) -> None:
        self.queue.put_nowait(None)


class Relay:
    """The stream as the roles here read it: each (topic, group)'s deliveries as the serving
    process relays them. ``acked(seq)`` is called as each is acknowledged."""

    def __init__(self, acked: Callable[[int], None]) -> None:
        self._acked = acked
        self._consumers: dict[tuple[str, str], _Consumer] = {}
        self._closed = False

    def _consumer(self, topic: str, group: str) -> _Consumer:
        c = self._consumers.get((topic, group))
        if c is None:
            c = self._consumers[(topic, group)] = _Consumer(self._acked)
            if self._closed:
                c.queue.put_nowait(None)
        return c

    def close(self) -> None:
        """End every consumer after what it was relayed, also those asked for later (a role
        still starting)."""
        self._closed = True
        for c in self._consumers.values():
            c.queue.put_nowait(None)

    def consume(self, topic: str, group: str, *, start: Start = "earliest",
                max_batch: int = 256, max_deliveries: int = 5,
                priority: int = 0) -> _Consumer:
        """The relay of ``topic`` in ``group``; where it starts, how much a delivery holds
        and redeliveries are the serving process's consumer's business."""
        return self._consumer(topic, group)

    def deliver(self, d: Delivery) -> None:
        c = self._consumer(d.topic, d.group)
        records = [Record(o, data, ts_ns=ts) for o, data, ts in zip(d.offsets, d.datas, d.ts_ns,
                                                                    strict=True)]
        c.queue.put_nowait(_Batch(c, d.seq, records))


def _watch_doc(monitor: Monitor) -> dict[str, Any] | None:
    w = monitor.watch
    if w is None:
        return None
    return {"policy_version": w.version, "champion": w.champion, "previous": w.previous,
            "until_ns": w.until_ns}


def _answer(monitor: Monitor, ask: Ask) -> Answer:
    """The document ``ask`` asks for, or why there is none."""
    analytics = monitor.analytics
    if analytics is None:
        return Answer(ask.seq, b"", "the monitor runs with analytics off")
    try:
        doc: Any = (analytics.gauges() if ask.what == "gauges"
                    else analytics.document(ask.what))
        if ask.what == "alarms":
            doc["watch"] = _watch_doc(monitor)
        return Answer(ask.seq, msgspec.json.encode(doc))
    except (KeyError, TypeError, ValueError) as exc:
        return Answer(ask.seq, b"", f"{type(exc).__name__}: {exc}")


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, home: Path,
                registry_url: str | None, archive: str | None, deployment: str) -> int:
    """Run the analytics until the parent closes the socket; returns the exit code."""
    from rendezvous.archive import import_table_modules, open_archive
    from rendezvous.registry import Registry
    from rendezvous.roles.monitor import Monitor
    from rendezvous.roles.scorekeeper import Scorekeeper

    def send(msg: Acked | Answer | HostReport) -> None:
        if not writer.is_closing():
            writer.write(frame(msg))

    send(HostReport(HostState.LOADING))
    try:
        registry = Registry(home, url=registry_url)
        policy, _ = await asyncio.to_thread(registry.policy, deployment)
        arc = open_archive(home, archive)
        await asyncio.to_thread(import_table_modules)
    except Exception as exc:  # whatever opening raises is reported, not a traceback
        send(HostReport(HostState.FAILED, f"{type(exc).__name__}: {exc}"))
        await writer.drain()
        return LOAD_FAILED
    relay = Relay(lambda seq: send(Acked(seq)))
    # The serving process paces what it relays (``READ_PAUSE_S``): read each delivery at once.
    monitor = Monitor(relay, deployment, home=home, registry=registry, policy=policy,
                      analytics=True, archive=arc, read_pause_s=0.0)
    keeper = Scorekeeper(relay, home, deployment, archive=arc, pause_s=0.0)
    roles = [asyncio.ensure_future(monitor.run()), asyncio.ensure_future(keeper.run())]
    heap.settle()  # the libraries, the registry and the policy, out of the collector's sight
    send(HostReport(HostState.READY))
    try:
        while True:
            msg = await read_frame(reader, from_parent)
            if msg is None:
                return 0
            if isinstance(msg, Delivery):
                relay.deliver(msg)
            elif isinstance(msg, Follow):
                policy, record = await asyncio.to_thread(registry.policy, deployment,
                                                         msg.version)
                monitor.set_policy(policy, record)
            elif isinstance(msg, Ask):
                send(_answer(monitor, msg))
    finally:
        # The roles archive what they hold and acknowledge it, then end.
        relay.close()
        await keeper.stop()
        await monitor.stop()
        _, late = await asyncio.wait(roles, timeout=STOP_TIMEOUT_S)
        for task in late:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*roles, return_exceptions=True)
        registry.close()


async def _run(args: argparse.Namespace) -> int:
    sock = socket.socket(fileno=args.fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    try:
        try:
            below_the_parent()
        except ConfigError as exc:  # a bad setting fails the host the same way every time
            writer.write(frame(HostReport(HostState.FAILED, str(exc))))
            await writer.drain()
            return LOAD_FAILED
        return await serve(reader, writer, home=args.home, registry_url=args.registry,
                           archive=args.archive, deployment=args.deployment)
    finally:
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rendezvous-analytics-host")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--registry", default=None)
    p.add_argument("--archive", default=None)
    p.add_argument("--deployment", required=True)
    args = p.parse_args(argv)
    die_with_parent()
    # Ctrl-C in a terminal reaches the whole foreground group; the parent stops us in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = asyncio.run(_run(args))
    except (BrokenPipeError, ConnectionResetError):
        code = 0  # the parent went away
    sys.exit(code)


if __name__ == "__main__":
    main()
