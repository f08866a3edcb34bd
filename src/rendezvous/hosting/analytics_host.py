"""The monitor role in a serving process: counts here, meta-analytics in their own process.

``AnalyticsHost`` reads the monitor's topics (``roles.reads.groups``) in their groups, as
the monitor always has. Results are counted here (``DeploymentStats``: what ``status`` and
``/metrics`` show, at once and without asking anyone). Unless analytics are off
(``RENDEZVOUS_ANALYTICS=0``), every delivery is also relayed, as the stream holds it, to a
supervised child process (``analytics_main``) that runs the monitor's analytics and the
scorekeeper, and answers the analytics documents. Why a process of its own: their
statistics take a few milliseconds per batch of records, which in the serving process would
hold up every request in flight (the serving process's time by role is in
``bench/results/time-by-role``); there they run beside it.

Nothing is lost when the child dies: a delivery is acknowledged on the stream only once the
child acknowledges it, and what was in flight is relayed again to the next child, started
after a capped exponential backoff. At most ``MAX_IN_FLIGHT`` deliveries per topic wait for
the child; past that the relay waits, and the records wait in the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import msgspec

from rendezvous import config
from rendezvous.core import messages
from rendezvous.core.stats import DeploymentStats
from rendezvous.errors import UnavailableError
from rendezvous.hosting.analytics_protocol import (
    Acked,
    Answer,
    Ask,
    Delivery,
    Follow,
    frame,
    from_host,
)
from rendezvous.hosting.child import SupervisedChild, read_frame, spawn_on_socket
from rendezvous.hosting.protocol import HostReport, HostState
from rendezvous.hosting.supervisor import Backoff, describe_exit
from rendezvous.roles import reads
from rendezvous.streams.base import Batch, Stream

__all__ = ["AnalyticsHost"]

log = logging.getLogger(__name__)

MAX_BATCH = 2048
MAX_IN_FLIGHT = 64  # deliveries per topic relayed and not yet acknowledged by the child
ASK_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0  # the child's own stop takes up to 10 s


class AnalyticsHost(SupervisedChild):
    """The monitor role of one deployment (see the module docstring)."""

    failed_is_final = False  # e.g. a registry out of reach for a while: try again

    def __init__(self, stream: Stream, deployment: str, *, home: Path,
                 registry_url: str | None = None, archive: str | None = None,
                 analytics: bool | None = None, backoff: Backoff | None = None) -> None:
        super().__init__(backoff)
        self.label = f"{deployment} analytics host"
        self.stream = stream
        self.deployment = deployment
        self.home = home
        self.registry_url = registry_url
        self.archive = archive
        self.analytics = config.ANALYTICS.get(analytics)
        self.stats = DeploymentStats(deployment)
        if not self.analytics:
            self.state = HostState.STOPPED
        self._version: int | None = None  # the policy version to tell each new child
        self._results = messages.topic(deployment, "results")
        self._feedback = messages.topic(deployment, "feedback")
        self._consumers: list[Any] = []
        self._in_flight: OrderedDict[int, tuple[bytes, Batch, asyncio.Semaphore]] = \
            OrderedDict()
        self._asks: dict[int, asyncio.Future[bytes]] = {}
        self._seq = 0
        self._writer: asyncio.StreamWriter | None = None
        self._ready = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None

    def _changed(self, state: HostState) -> None:
        if state is HostState.READY:
            self._ready.set()
        else:
            self._ready.clear()

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        loops = [self._pump(topic, group) for topic, group in reads.groups(self.deployment)]
        if self.analytics:
            loops.append(self._supervise())
        await asyncio.gather(*loops)

    def follow(self, version: int) -> None:
        """The serving process switched to policy ``version``: the analytics follow."""
        self._version = version
        self._send(frame(Follow(version)))

    async def stop(self) -> None:
        self._stopping = True
        for consumer in self._consumers:
            await consumer.close()
        proc = self._proc
        if self.state is not HostState.READY:
            # Still starting: it holds nothing it could archive, and what was relayed to it
            # stays unacknowledged in the stream for the next start.
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        elif self._writer is not None:
            # The child archives and acknowledges what it holds, saves its state and exits;
            # its acknowledgements still come in meanwhile.
            self._writer.write_eof()
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        self._set(HostState.STOPPED)

    async def _pump(self, topic: str, group: str) -> None:
        """Count results, and relay every delivery to the child (or acknowledge it at once
        when analytics are off)."""
        consumer = self.stream.consume(topic, group, start="latest", max_batch=MAX_BATCH)
        self._consumers.append(consumer)
        room = asyncio.Semaphore(MAX_IN_FLIGHT)
        counts = topic == self._results and group == reads.GROUP
        # Feedback is rare and a label's join waits on nothing here: relay it at once.
        pause_s = 0.0 if topic == self._feedback else reads.READ_PAUSE_S
        async for batch in consumer:
            records = batch.records
            if counts:
                reads.count_results(self.stats, records)
            if not self.analytics:
                await batch.ack()
            else:
                await room.acquire()
                self._seq += 1
                data = frame(Delivery(self._seq, topic, group, [r.offset for r in records],
                                      [r.data for r in records], [r.ts_ns for r in records]))
                self._in_flight[self._seq] = (data, batch, room)
                self._send(data)  # or to the next child, if this one just ended
            if len(records) < MAX_BATCH and pause_s:
                await asyncio.sleep(pause_s)

    def _command(self, fd: int) -> list[str]:
        args = [sys.executable, "-m", "rendezvous.hosting.analytics_main", "--deployment",
                self.deployment, "--fd", str(fd), "--home", str(self.home)]
        if self.registry_url:
            args += ["--registry", self.registry_url]
        if self.archive:
            args += ["--archive", self.archive]
        return args

    def _send(self, data: bytes) -> bool:
        """Write a frame to the child; False when there is none to take it (it ended, and
        the next one is not started yet)."""
        writer = self._writer
        if writer is None or writer.is_closing():
            return False
        try:
            writer.write(data)
        except (RuntimeError, ConnectionError):  # closed under us: the child just ended
            return False
        return True

    async def _run_once(self) -> str:
        """Run one child until it exits; returns how it ended."""
        self._proc, reader, writer = await spawn_on_socket(self._command)
        self.pid = self._proc.pid
        self._set(HostState.LOADING)
        if self._version is not None:
            writer.write(frame(Follow(self._version)))
        for data, _, _ in self._in_flight.values():  # what the last child did not finish
            writer.write(data)
        self._writer = writer
        try:
            await self._read(reader)
        finally:
            self._writer = None
            writer.close()
            rc = await self._proc.wait()
            for fut in self._asks.values():
                if not fut.done():
                    fut.set_exception(UnavailableError(
                        f"deployment {self.deployment!r}: the analytics host ended "
                        f"({describe_exit(rc)}); it is starting again, ask again shortly"))
        return self.detail if self.state is HostState.FAILED else describe_exit(rc)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                msg = await read_frame(reader, from_host)
                if msg is None:
                    return
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.error("%s analytics host sent a malformed frame (%s); restarting it",
                          self.deployment, exc)
                if self._proc is not None:
                    with contextlib.suppress(ProcessLookupError):
                        self._proc.kill()
                return
            if isinstance(msg, Acked):
                held = self._in_flight.pop(msg.seq, None)
                if held is not None:
                    _, batch, room = held
                    room.release()
                    await batch.ack()
            elif isinstance(msg, Answer):
                fut = self._asks.pop(msg.seq, None)
                if fut is not None and not fut.done():
                    if msg.error:
                        fut.set_exception(UnavailableError(
                            f"deployment {self.deployment!r}: the analytics host could not "
                            f"answer ({msg.error})"))
                    else:
                        fut.set_result(msg.body)
            elif isinstance(msg, HostReport):
                self._set(msg.state, msg.detail)

    # -- asking -----------------------------------------------------------------------------

    async def ask(self, what: str) -> bytes:
        """The JSON of an analytics document (``analytics_protocol.DOCUMENTS``) or ``gauges``,
        from the child; waits up to ``ASK_TIMEOUT_S`` for it to be ready."""
        if not self.analytics:
            raise UnavailableError(f"deployment {self.deployment!r} runs with analytics off "
                                   "(RENDEZVOUS_ANALYTICS=0); serve it with analytics on")
        try:
            await asyncio.wait_for(self._ready.wait(), ASK_TIMEOUT_S)
        except TimeoutError:
            raise UnavailableError(
                f"deployment {self.deployment!r}: the analytics host is {self.state.value}"
                f"{f' ({self.detail})' if self.detail else ''}; ask again shortly") from None
        self._seq += 1
        seq = self._seq
        if not self._send(frame(Ask(seq, what))):
            raise UnavailableError(f"deployment {self.deployment!r}: the analytics host is "
                                   "restarting; ask again shortly")
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._asks[seq] = fut
        try:
            return await asyncio.wait_for(fut, ASK_TIMEOUT_S)
        except TimeoutError:
            raise UnavailableError(f"deployment {self.deployment!r}: the analytics host did "
                                   f"not answer in {ASK_TIMEOUT_S:g} s; ask again") from None
        finally:
            self._asks.pop(seq, None)

    async def gauges(self) -> dict[str, Any]:
        """``DeploymentAnalytics.gauges`` of the child's analytics."""
        doc: dict[str, Any] = msgspec.json.decode(await self.ask("gauges"))
        return doc
