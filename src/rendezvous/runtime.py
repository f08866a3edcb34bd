"""Wiring: one process running every role of one or more deployments on one stream engine.

``Server`` owns the stream engine, the return channel and one ``DeploymentRuntime`` per served
deployment; each runtime owns the workers (one per model version), the rendezvous server, the
decoy and the monitor, as asyncio tasks. Policy changes are applied live: workers for new models
start first (from the current end of the input stream), then the schedule switches, and workers
of models that left keep scoring until every request that still needs them is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rendezvous import config, messages
from rendezvous.decoy import Decoy
from rendezvous.errors import UnavailableError
from rendezvous.monitor import Monitor
from rendezvous.policy import Policy, Schedule
from rendezvous.registry import Registry
from rendezvous.rendezvous import RendezvousServer
from rendezvous.schema import Signature
from rendezvous.streams.base import Retention, Stream, open_stream
from rendezvous.worker import Worker

log = logging.getLogger(__name__)

TOPICS = ("input", "scores", "results", "feedback", "control")


class LocalReturns:
    """Return channel inside one process: return address -> callback."""

    def __init__(self) -> None:
        self._handlers: dict[str, Callable[[bytes], None]] = {}

    def register(self, address: str, handler: Callable[[bytes], None]) -> None:
        self._handlers[address] = handler

    def unregister(self, address: str) -> None:
        self._handlers.pop(address, None)

    async def send(self, return_to: str, data: bytes) -> None:
        handler = self._handlers.get(return_to)
        if handler is None:
            raise UnavailableError(f"no proxy listens on return address {return_to!r}")
        handler(data)


class DeploymentRuntime:
    """Every role of one deployment, in this process."""

    def __init__(self, server: Server, name: str) -> None:
        self.server = server
        self.name = name
        self.policy: Policy = Policy()
        self.policy_version = 0
        self.schedule: Schedule | None = None
        self.signature: Signature | None = None
        self.workers: dict[str, Worker] = {}
        self.rendezvous: RendezvousServer | None = None
        self.decoy: Decoy | None = None
        self.monitor: Monitor | None = None
        self.input_topic = messages.topic(name, "input")
        self._tasks: dict[object, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()

    @property
    def stream(self) -> Stream:
        return self.server.stream

    def _spawn(self, key: object, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(lambda t: self._done(key, t))
        self._tasks[key] = task

    def _done(self, key: object, task: asyncio.Task[None]) -> None:
        self._tasks.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: role %s stopped with an error", self.name, key,
                      exc_info=task.exception())

    async def start(self) -> None:
        registry = self.server.registry
        policy, rec = await asyncio.to_thread(registry.policy, self.name)
        self.signature = await asyncio.to_thread(registry.deployment_signature, self.name)
        for kind in TOPICS:
            await self.stream.ensure_topic(messages.topic(self.name, kind),
                                           retention=Retention())
        schedule = policy.schedule(self.name, rec.version)
        await self._start_workers(policy.model_names())
        self.rendezvous = RendezvousServer(
            self.stream, self.name, schedule, self.server.returns,
            late_grace_ms=self.server.late_grace_ms)
        self._spawn("rendezvous", self.rendezvous.run())
        if policy.decoy:
            self.decoy = Decoy(self.stream, self.server.home, self.name, self.signature)
            self._spawn("decoy", self.decoy.run())
        self.monitor = Monitor(self.stream, self.name)
        self._spawn("monitor", self.monitor.run())
        self.policy, self.policy_version, self.schedule = policy, rec.version, schedule

    async def _start_workers(self, models: list[str]) -> None:
        new = [m for m in models if m not in self.workers]
        if not new:
            return
        registry = self.server.registry
        predictors = await asyncio.gather(*(asyncio.to_thread(registry.load, m) for m in new))
        # Start from the current end of the input stream: every request appended from now on
        # is scored, and the schedule that expects these models is switched on only after.
        start = await self.stream.last_offset(self.input_topic) + 1
        assert self.signature is not None
        for model, predictor in zip(new, predictors, strict=True):
            worker = Worker(self.stream, self.name, model, predictor, self.signature,
                            worker_id=f"{self.server.process_id}/{model}", start=start)
            self.workers[model] = worker
            self._spawn(("worker", model), worker.run())

    async def reload(self) -> int:
        """Apply the registry's current policy if it changed; returns the policy version."""
        async with self._lock:
            policy, rec = await asyncio.to_thread(self.server.registry.policy, self.name)
            if rec.version == self.policy_version:
                return rec.version
            schedule = policy.schedule(self.name, rec.version)
            await self._start_workers(policy.model_names())
            assert self.rendezvous is not None
            self.rendezvous.set_schedule(schedule)
            retired = [m for m in self.workers if m not in policy.model_names()]
            self.policy, self.policy_version, self.schedule = policy, rec.version, schedule
            await self.stream.append(messages.topic(self.name, "control"), [messages.encode(
                messages.Control(deployment=self.name, kind=messages.ControlKind.POLICY,
                                 policy_version=rec.version, body=rec.body))])
            if retired:
                # Requests decided under the old schedule may still wait for these models.
                linger = (max(policy.deadline_ms, 1.0) + self.server.late_grace_ms) / 1000
                asyncio.get_running_loop().call_later(
                    linger, lambda: asyncio.ensure_future(self._retire(retired)))
            log.info("%s: now at policy %s", self.name, rec.version)
            return rec.version

    async def _retire(self, models: list[str]) -> None:
        for model in models:
            if model in self.policy.model_names():  # came back meanwhile
                continue
            worker = self.workers.pop(model, None)
            if worker is not None:
                await worker.stop()

    async def stop(self) -> None:
        # Order matters: stop intake (the proxy already did), let workers and the rendezvous
        # finish, flush the decoy, then the monitor.
        for w in self.workers.values():
            await w.stop()
        if self.rendezvous is not None:
            await self.rendezvous.stop()
        if self.decoy is not None:
            await self.decoy.stop()
        if self.monitor is not None:
            await self.monitor.stop()
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=10)
            for t in pending:
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pending, return_exceptions=True)


class Server:
    """Stream engine + registry + runtimes for the served deployments."""

    def __init__(self, home: Path | str | None = None, deployments: list[str] | None = None, *,
                 streams: str | None = None, late_grace_ms: float | None = None) -> None:
        self.home = config.home(home)
        self.deployment_names = list(deployments or [])
        self.streams_url = config.STREAMS.get(streams)
        self.late_grace_ms = config.LATE_GRACE_MS.get(late_grace_ms)
        self.registry = Registry(self.home)
        self.returns = LocalReturns()
        self.process_id = f"p{id(self):x}"
        self.runtimes: dict[str, DeploymentRuntime] = {}
        self.stream: Stream
        self.ready = False
        self.started_at = 0.0

    async def start(self) -> None:
        if not self.deployment_names:
            self.deployment_names = await asyncio.to_thread(self.registry.deployments)
        for name in self.deployment_names:  # fail early on an unknown name, before any I/O
            await asyncio.to_thread(self.registry.policy, name)
        self.stream = await open_stream(self.streams_url, home=self.home)
        for name in self.deployment_names:
            rt = DeploymentRuntime(self, name)
            await rt.start()
            self.runtimes[name] = rt
        self.ready = True
        self.started_at = time.time()

    async def stop(self) -> None:
        self.ready = False
        for rt in self.runtimes.values():
            await rt.stop()
        await self.stream.close()
        self.registry.close()

    def status(self, deployment: str) -> dict[str, Any]:
        rt = self.runtimes[deployment]
        assert rt.monitor is not None
        return {**rt.monitor.stats.to_dict(), "policy_version": rt.policy_version,
                "models_live": sorted(rt.workers)}
