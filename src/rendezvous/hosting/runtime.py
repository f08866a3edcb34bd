"""Wiring: the roles of one or more deployments, in this process, on one stream engine.

``Server`` owns the stream engine, the return channel and one ``DeploymentRuntime`` per served
deployment; each runtime owns the roles this process runs (by default all of them: the workers,
one per model version, the rendezvous server, the decoy and the monitor) as asyncio tasks.

Policy changes are applied live. In one process: workers for new models start first (from the
current end of the input stream), then the schedule switches, and workers of models that left
keep scoring until every request that still needs them is done. Across processes (a shared
engine, see ``roles``), the process that changes the policy appends a ``Control`` message to
``<deployment>.control`` and every other process follows that topic and applies it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from rendezvous import config
from rendezvous.core import messages
from rendezvous.core.messages import Control, ControlKind
from rendezvous.core.policy import Policy, Schedule
from rendezvous.core.schema import Signature
from rendezvous.errors import ConfigError, NotFoundError, RendezvousError, UnavailableError
from rendezvous.hosting.topology import ProcessRole, Roles
from rendezvous.registry import Registry
from rendezvous.roles.decoy import Decoy
from rendezvous.roles.monitor import Monitor
from rendezvous.roles.rendezvous import RendezvousServer
from rendezvous.roles.scorekeeper import Scorekeeper
from rendezvous.roles.worker import DecodedRequests, Worker
from rendezvous.streams.base import Retention, Stream, open_stream

log = logging.getLogger(__name__)

TOPICS = ("input", "scores", "results", "feedback", "control")
REGISTRY_WATCH_S = 0.5
CONTROL_POLL_S = 0.2  # how often a process looks for policy changes made by another one
RESTART_S = 1.0  # pause before restarting a role that failed (e.g. its engine went away)


class LocalReturns:
    """Return channel: return address -> callback, inside this process first.

    With a ``remote`` transport attached (``NatsReturns``), results for addresses this process
    does not own are sent there, and every address registered here is also listened for
    there, so proxies and rendezvous servers may live in different processes.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, Callable[[bytes], None]] = {}
        self.remote: Any = None  # NatsReturns, imported only with the NATS engine

    @property
    def connected(self) -> bool:
        return self.remote is None or bool(self.remote.connected)

    def register(self, address: str, handler: Callable[[bytes], None]) -> None:
        self._handlers[address] = handler
        if self.remote is not None:
            self.remote.listen(address, handler)

    def unregister(self, address: str) -> None:
        self._handlers.pop(address, None)
        if self.remote is not None:
            self.remote.forget(address)

    async def attach(self, remote: Any) -> None:
        """Listen on ``remote`` for every address registered so far (and later ones)."""
        self.remote = remote
        for address, handler in self._handlers.items():
            remote.listen(address, handler)
        await remote.ready()

    async def send(self, return_to: str, data: bytes) -> None:
        handler = self._handlers.get(return_to)
        if handler is not None:
            handler(data)
        elif self.remote is not None:
            await self.remote.send(return_to, data)
        else:
            raise UnavailableError(f"no proxy listens on return address {return_to!r}")

    async def close(self) -> None:
        if self.remote is not None:
            await self.remote.close()


def remote_returns(stream: Stream) -> Any:
    """The return transport between processes for ``stream``'s engine, or None when the
    engine lives inside one process (embedded)."""
    try:
        from rendezvous.streams.nats.engine import NatsStream
        from rendezvous.streams.nats.returns import NatsReturns
    except ImportError:  # nats-py missing: no NATS engine either
        return None
    return NatsReturns(stream.nc) if isinstance(stream, NatsStream) else None


async def follow_control(stream: Stream, deployment: str, after: int,
                         apply: Callable[[Control], Awaitable[None]], *,
                         every_s: float = CONTROL_POLL_S) -> None:
    """Call ``apply`` for every control message of ``deployment`` after offset ``after``.

    Tails the topic with ``read`` rather than a consumer group: each process needs every
    message, and a group per process would leave one durable group behind per process ever
    started. Runs until cancelled; an engine outage only delays it.
    """
    topic = messages.topic(deployment, "control")
    cursor = after
    while True:
        await asyncio.sleep(every_s)
        try:
            if await stream.last_offset(topic) <= cursor:
                continue
            records = await stream.read(topic, from_offset=cursor + 1, limit=100)
        except RendezvousError as exc:
            log.debug("%s: control topic unreachable (%s); retrying", deployment, exc)
            continue
        for rec in records:
            cursor = rec.offset
            try:
                await apply(messages.control_decoder.decode(rec.data))
            except (msgspec.DecodeError, msgspec.ValidationError, RendezvousError) as exc:
                log.error("%s: ignoring control message %s: %s", deployment, rec.offset, exc)


class DeploymentRuntime:
    """The roles of one deployment that this process runs."""

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
        self.scorekeeper: Scorekeeper | None = None
        self.input_topic = messages.topic(name, "input")
        self._tasks: dict[object, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        self._stopping = False
        self._retired: set[str] = set()  # models whose workers stopped for good
        self._decoded = DecodedRequests()  # workers in this process decode each request once

    @property
    def stream(self) -> Stream:
        return self.server.stream

    def _spawn_role(self, key: object, run: Callable[[], Awaitable[None]]) -> None:
        """Run a role until it stops; if it fails, start it again after ``RESTART_S``.

        A role fails when its engine goes away in the middle of a batch (an append or an ack
        that cannot be confirmed). Whatever it had not acknowledged comes back to its group,
        so starting it again loses nothing; letting it die would leave this process up but
        idle.
        """

        async def supervise() -> None:
            while True:
                try:
                    await run()
                    return
                except (RendezvousError, OSError) as exc:
                    if self._stopping:
                        raise
                    log.warning("%s: role %s failed (%s); restarting it in %g s", self.name,
                                key, exc, RESTART_S)
                await asyncio.sleep(RESTART_S)
                if self._stopping:
                    return

        self._spawn(key, supervise())

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
        registry, roles = self.server.registry, self.server.roles
        retention = Retention(max_age_s=config.RETENTION_HOURS.get() * 3600)
        for kind in TOPICS:
            await self.stream.ensure_topic(messages.topic(self.name, kind), retention=retention)
        # Note the control topic's end before reading the policy: a change announced in
        # between is then applied by the follower rather than missed.
        seen = await self.stream.last_offset(messages.topic(self.name, "control")) \
            if self.server.shared else 0
        policy, rec = await asyncio.to_thread(registry.policy, self.name)
        self.signature = await asyncio.to_thread(registry.deployment_signature, self.name)
        schedule = policy.schedule(self.name, rec.version)
        if ProcessRole.WORKER in roles:
            await self._start_workers(self._worker_models(policy, rec.version))
        if ProcessRole.RENDEZVOUS in roles:
            self.rendezvous = RendezvousServer(
                self.stream, self.name, schedule, self.server.returns,
                late_grace_ms=self.server.late_grace_ms)
            self._spawn_role("rendezvous", self.rendezvous.run)
        if ProcessRole.DECOY in roles and policy.decoy:
            self.decoy = Decoy(self.stream, self.server.home, self.name, self.signature)
            self._spawn_role("decoy", self.decoy.run)
        if ProcessRole.MONITOR in roles:
            self.monitor = Monitor(self.stream, self.name, home=self.server.home,
                                   registry=registry, policy=policy)
            self._spawn_role("monitor", self.monitor.run)
            if self.monitor.analytics is not None:
                self.scorekeeper = Scorekeeper(self.stream, self.server.home, self.name)
                self._spawn_role("scorekeeper", self.scorekeeper.run)
        self.policy, self.policy_version, self.schedule = policy, rec.version, schedule
        if self.server.shared:
            self._spawn("control", follow_control(self.stream, self.name, seen, self._follow))
        if self.server.watch_registry:
            self._spawn("registry", self._watch_registry())

    def _worker_models(self, policy: Policy, version: int) -> list[str]:
        """The model versions this process scores: ``--model`` ones, else the policy's."""
        fixed = self.server.roles.models
        for model in fixed:
            if model not in policy.model_names():
                # Allowed on purpose: start a new version's workers, then add it to the policy.
                log.warning("%s: %s is not in policy %s; its scores are recorded but not used "
                            "until a policy names it", self.name, model, version)
        return list(fixed) or policy.model_names()

    async def _start_workers(self, models: list[str]) -> None:
        new = [m for m in models if m not in self.workers]
        if not new:
            return
        registry = self.server.registry
        predictors = await asyncio.gather(*(asyncio.to_thread(registry.load, m) for m in new))
        # Start from the current end of the input stream: every request appended from now on
        # is scored, and the schedule that expects these models is switched on only after.
        # (A group that already has a committed position resumes from there instead.)
        start = await self.stream.last_offset(self.input_topic) + 1
        for model, predictor in zip(new, predictors, strict=True):
            self._retired.discard(model)
            self._spawn_role(("worker", model), self._worker_run(model, predictor, start))

    def _worker_run(self, model: str, predictor: Any, start: int) -> Callable[[], Awaitable[None]]:
        # A fresh Worker on every (re)start: a stopped one has shut its model thread down.
        def run() -> Awaitable[None]:
            if model in self._retired:  # retired while it waited to restart
                return asyncio.sleep(0)
            assert self.signature is not None
            worker = Worker(self.stream, self.name, model, predictor, self.signature,
                            worker_id=f"{self.server.process_id}/{model}", start=start,
                            decoded=self._decoded)
            self.workers[model] = worker
            return worker.run()

        return run

    async def _apply(self, policy: Policy, version: int) -> None:
        """Switch this process's roles to ``policy`` (call with the lock held)."""
        schedule = policy.schedule(self.name, version)
        follows_policy = ProcessRole.WORKER in self.server.roles and not self.server.roles.models
        if follows_policy:
            await self._start_workers(policy.model_names())
        if self.rendezvous is not None:
            self.rendezvous.set_schedule(schedule)
        if self.monitor is not None:
            self.monitor.set_policy(policy)
        retired = [m for m in self.workers if m not in policy.model_names()] \
            if follows_policy else []
        self.policy, self.policy_version, self.schedule = policy, version, schedule
        if retired:
            # Requests decided under the old schedule may still wait for these models.
            linger = (max(policy.deadline_ms, 1.0) + self.server.late_grace_ms) / 1000
            asyncio.get_running_loop().call_later(
                linger, lambda: self._spawn(("retire", version), self._retire(retired)))
        log.info("%s: now at policy %s", self.name, version)

    async def reload(self) -> int:
        """Apply the registry's current policy if it changed and announce it to the other
        processes on the control topic; returns the policy version."""
        async with self._lock:
            policy, rec = await asyncio.to_thread(self.server.registry.policy, self.name)
            if rec.version == self.policy_version:
                return rec.version
            # Announce first: if that fails, no process (this one included) has switched, and
            # a retry of the reload switches them all.
            try:
                await self.stream.append(messages.topic(self.name, "control"), [
                    messages.encode(Control(deployment=self.name, kind=ControlKind.POLICY,
                                            policy_version=rec.version, body=rec.body))])
            except RendezvousError as exc:
                raise UnavailableError(
                    f"policy {rec.version} of {self.name} is recorded but could not be "
                    f"announced ({exc}); retry with POST "
                    f"/v1/admin/deployments/{self.name}/reload") from exc
            await self._apply(policy, rec.version)
            return rec.version

    async def _watch_registry(self) -> None:
        """Follow policy changes recorded in the registry by other processes that share it but
        not this process's stream (partitions of ``serve --processes N``)."""
        while True:
            await asyncio.sleep(REGISTRY_WATCH_S)
            try:
                rec = await asyncio.to_thread(self.server.registry.store.policy, self.name)
            except RendezvousError as exc:
                log.warning("%s: cannot read the registry (%s); retrying", self.name, exc)
                continue
            if rec.version > self.policy_version:
                await self.reload()

    async def _follow(self, ctl: Control) -> None:
        """Apply a policy another process announced (its own announcements come back too)."""
        if ctl.kind is not ControlKind.POLICY or ctl.policy_version <= self.policy_version:
            return
        policy = msgspec.convert(ctl.body, Policy)
        async with self._lock:
            if ctl.policy_version > self.policy_version:
                await self._apply(policy, ctl.policy_version)

    async def _retire(self, models: list[str]) -> None:
        for model in models:
            if model in self.policy.model_names():  # came back meanwhile
                continue
            self._retired.add(model)
            worker = self.workers.pop(model, None)
            if worker is not None:
                await worker.stop()

    async def stop(self) -> None:
        # Order matters: stop intake (the proxy already did), let workers and the rendezvous
        # finish, flush the decoy, then the monitor.
        self._stopping = True
        control = self._tasks.get("control")
        if control is not None:
            control.cancel()
        for w in self.workers.values():
            await w.stop()
        if self.rendezvous is not None:
            await self.rendezvous.stop()
        if self.decoy is not None:
            await self.decoy.stop()
        if self.scorekeeper is not None:
            await self.scorekeeper.stop()
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
    """Stream engine + registry + runtimes for the served deployments.

    ``roles`` picks what this process runs (default: everything); running only some of them
    needs an engine shared between processes (NATS). ``registry_url``: a SQL URL for a
    registry shared by machines (PostgreSQL); default the SQLite file under ``home``.
    """

    def __init__(self, home: Path | str | None = None, deployments: list[str] | None = None, *,
                 streams: str | None = None, late_grace_ms: float | None = None,
                 roles: Roles | None = None, registry_url: str | None = None,
                 watch_registry: bool = False) -> None:
        self.home = config.home(home)
        self.deployment_names = list(deployments or [])
        self.streams_url = config.STREAMS.get(streams)
        self.late_grace_ms = config.LATE_GRACE_MS.get(late_grace_ms)
        self.roles = roles or Roles()
        self.registry = Registry(self.home, url=registry_url)
        self.returns = LocalReturns()
        # Names the scoring process in every Score: host and pid find it among many.
        self.process_id = f"{socket.gethostname()}:{os.getpid()}"
        self.runtimes: dict[str, DeploymentRuntime] = {}
        self.stream: Stream
        self.shared = False  # True when other processes may share the engine (NATS)
        # Follow policy versions in the registry (processes that share it, not a stream).
        self.watch_registry = watch_registry
        self._started = False

    @property
    def ready(self) -> bool:
        """Started, and (on a shared engine) connected to it: what readiness reports."""
        return self._started and self.returns.connected

    async def start(self) -> None:
        if not self.deployment_names:
            self.deployment_names = await asyncio.to_thread(self.registry.deployments)
        for name in self.deployment_names:  # fail early on an unknown name, before any I/O
            await asyncio.to_thread(self.registry.policy, name)
        self.stream = await open_stream(self.streams_url, home=self.home)
        remote = remote_returns(self.stream)
        if remote is None and not self.roles.everything:
            await self.stream.close()
            raise ConfigError(
                f"--role {self.roles.label} runs one role per process, which needs a stream "
                f"engine shared between processes, not {self.streams_url!r}: use --streams "
                "nats://HOST:4222, or `serve --streams local-nats` to start every role as its "
                "own process on this machine"
            )
        try:
            if remote is not None:
                await self.returns.attach(remote)
                self.shared = True
            for name in self.deployment_names:
                rt = DeploymentRuntime(self, name)
                self.runtimes[name] = rt
                await rt.start()
        except BaseException:
            # E.g. a model that does not load: stop what did start, so nothing is left
            # holding the engine's groups.
            await self.stop()
            raise
        self._started = True

    async def stop(self) -> None:
        self._started = False
        for rt in self.runtimes.values():
            await rt.stop()
        await self.returns.close()
        await self.stream.close()
        self.registry.close()

    def status(self, deployment: str) -> dict[str, Any]:
        rt = self.runtimes[deployment]
        if rt.monitor is None:
            raise NotFoundError(
                "monitor of deployment", deployment,
                f"this process runs only {self.roles.label}; ask the `serve --role monitor` "
                f"process: GET /v1/deployments/{deployment}/status on its --port")
        live = rt.workers if ProcessRole.WORKER in self.roles else rt.policy.model_names()
        return {**rt.monitor.stats.to_dict(), "policy_version": rt.policy_version,
                "models_live": sorted(live)}
