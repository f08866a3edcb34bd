"""Wiring: the roles of one or more deployments that this process runs, on one stream engine.

``Server`` owns the stream engine, the return channel and one ``DeploymentRuntime`` per served
deployment; each runtime owns the roles this process runs (by default all of them) as asyncio
tasks, and one *model host* per model version it scores: its own supervised OS process by
default (``model_host``), a thread of this process for ``isolation = "thread"``.

Start-up is warm: every candidate's host has loaded and predicted on the registration's example
rows (or failed, with its reason) before ``start`` returns, so a server that answers is a server
whose champion answers. Shadows may still be warming.

Policy changes reach every process one way: the registry. Each process follows its
deployments' current policy version there (``REGISTRY_WATCH_S``); the process that records a
change (an admin call) applies it at once. Applying starts hosts for added models and waits
for them to be warm, then switches the schedule; hosts of models that left keep scoring until
every request that may still need them is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from rendezvous import config
from rendezvous.archive import Archive, import_table_modules, open_archive
from rendezvous.core import messages
from rendezvous.core.policy import Isolation, ModelSpec, Policy, Role, Schedule
from rendezvous.core.schema import Signature
from rendezvous.errors import (
    ConfigError,
    ModelLoadError,
    NotFoundError,
    RendezvousError,
)
from rendezvous.hosting.analytics_host import AnalyticsHost
from rendezvous.hosting.checks import check_loads
from rendezvous.hosting.model_host import ModelHost
from rendezvous.hosting.protocol import HostState
from rendezvous.hosting.reports import HostReports, follow_hosts, report_hosts
from rendezvous.hosting.returns import LocalReturns
from rendezvous.hosting.thread_host import ThreadHost
from rendezvous.hosting.topology import ProcessRole, Roles, groups_of
from rendezvous.registry import PolicyRecord, Registry
from rendezvous.roles.decoy import Decoy
from rendezvous.roles.rendezvous import RendezvousServer
from rendezvous.roles.scoring import DecodedRequests
from rendezvous.roles.worker import Worker
from rendezvous.streams.base import Record, Retention, Stream, open_stream

log = logging.getLogger(__name__)

__all__ = ["DeploymentRuntime", "Host", "Server"]

TOPICS = ("input", "scores", "results", "feedback", "control")
REGISTRY_WATCH_S = 0.5  # how often a process looks for a policy recorded by another one
READERS_WARN_S = 10.0  # a proxy waiting this long for the other roles says which are missing
RESTART_S = 1.0  # pause before restarting a role that failed (e.g. its engine went away)


class Host(Protocol):
    """Where one model version computes (``ModelHost`` or ``ThreadHost``)."""

    model: str
    state: HostState
    detail: str

    def info(self) -> dict[str, Any]: ...

    async def start(self) -> None: ...

    async def settled(self, *, timeout_s: float) -> HostState: ...

    async def score(self, records: Sequence[Record],
                    held_ns: Sequence[int] = ()) -> bytes | None: ...

    async def stop(self) -> None: ...


class DeploymentRuntime:
    """The roles of one deployment that this process runs, and its model hosts."""

    def __init__(self, server: Server, name: str, policy: Policy, version: int,
                 signature: Signature) -> None:
        self.server = server
        self.name = name
        self.policy = policy
        self.policy_version = version
        self.schedule: Schedule = policy.schedule(name, version)
        self.signature = signature
        self.hosts: dict[str, Host] = {}
        self.workers: dict[str, Worker] = {}
        self.rendezvous: RendezvousServer | None = None
        self.decoy: Decoy | None = None
        self.monitor: AnalyticsHost | None = None
        self.input_topic = messages.topic(name, "input")
        self._tasks: dict[object, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        self._stopping = False
        self._decoded = DecodedRequests()  # thread-hosted models decode each request once
        self._reported = HostReports()  # states other processes report (shared engines)
        # A proxy apart from the other roles opens once they read (see ``_await_readers``).
        self.unread: list[tuple[str, str]] = []
        self._readers_ok = (ProcessRole.PROXY not in server.roles or server.roles.everything
                            or not server.shared)

    @property
    def stream(self) -> Stream:
        return self.server.stream

    @property
    def ready(self) -> bool:
        """Serving: some candidate's host is ready. A process without workers goes by what
        the worker processes report; with no report yet it does not hold traffic back."""
        if not self._readers_ok:
            return False
        # Asked on every request: the hosts' states directly, not ``model_states()``' dicts.
        if ProcessRole.WORKER in self.server.roles:
            return any((h := self.hosts.get(c.model)) is not None
                       and h.state is HostState.READY for c in self.schedule.candidates)
        states = self._reported.merged(time.monotonic())
        if not states:
            return True
        return any(states.get(c.model, {}).get("state") == HostState.READY.value
                   for c in self.schedule.candidates)

    def model_states(self) -> dict[str, dict[str, Any]]:
        """Each model's state (``loading`` … ``failed``), restarts and last exit: of the hosts
        in this process, or as the worker processes on a shared engine report them."""
        if ProcessRole.WORKER in self.server.roles:
            states = {m: h.info() for m, h in self.hosts.items()}
        else:
            states = self._reported.merged(time.monotonic())
        return {m: {**s, "role": self._role(m)} for m, s in sorted(states.items())}

    def _role(self, model: str) -> str:
        return next((s.role.value for s in self.policy.models if s.model == model), "retired")

    # -- tasks ----------------------------------------------------------------------------

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
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: role %s stopped with an error", self.name, key,
                      exc_info=task.exception())

    # -- start ------------------------------------------------------------------------------

    async def start(self) -> None:
        roles = self.server.roles
        retention = Retention(max_age_s=config.RETENTION_HOURS.get() * 3600)
        for kind in TOPICS:
            await self.stream.ensure_topic(messages.topic(self.name, kind), retention=retention)
        if ProcessRole.WORKER in roles:
            await self._start_models(self._worker_models(self.policy))
        if ProcessRole.RENDEZVOUS in roles:
            self.rendezvous = RendezvousServer(
                self.stream, self.name, self.schedule, self.server.returns,
                late_grace_ms=self.server.late_grace_ms)
            self._spawn_role("rendezvous", self.rendezvous.run)
        if ProcessRole.DECOY in roles and self.policy.decoy:
            await asyncio.to_thread(import_table_modules)  # before the first archive flush
            self.decoy = Decoy(self.stream, self.server.home, self.name, self.signature,
                               archive=self.server.archive)
            self._spawn_role("decoy", self.decoy.run)
        if ProcessRole.MONITOR in roles:
            self.monitor = AnalyticsHost(self.stream, self.name, home=self.server.home,
                                         registry_url=self.server.registry_url,
                                         archive=self.server.archive_at)
            self.monitor.follow(self.policy_version)
            self._spawn_role("monitor", self.monitor.run)
        self._spawn("registry", self._watch_registry())
        if not self._readers_ok and not await self._readers_present():
            self._spawn("readers", self._await_readers())
        if self.server.shared:
            # Model states travel between processes on the control topic: worker processes
            # report theirs, the others (proxies, the monitor) follow the reports.
            if ProcessRole.WORKER in roles:
                self._spawn("hosts", report_hosts(
                    self.stream, self.name, self.server.process_id,
                    lambda: {m: h.info() for m, h in self.hosts.items()}))
            else:
                self._spawn("hosts", follow_hosts(self.stream, self.name, self._reported))

    def _worker_models(self, policy: Policy) -> list[ModelSpec]:
        """The model versions this process scores: ``--model`` ones, else the policy's."""
        fixed = self.server.roles.models
        specs = {s.model: s for s in policy.models}
        for model in fixed:
            if model not in specs:
                # Allowed on purpose: start a new version's workers, then add it to the policy.
                log.warning("%s: %s is not in policy %s; its scores are recorded but not used "
                            "until a policy names it", self.name, model, self.policy_version)
        return [specs.get(m) or ModelSpec(m, Role.CHALLENGER) for m in fixed] \
            if fixed else list(policy.models)

    def _make_host(self, spec: ModelSpec) -> Host:
        worker = f"{self.server.process_id}/{spec.model}"
        if spec.isolation is Isolation.THREAD:
            return ThreadHost(registry=self.server.registry, deployment=self.name,
                              model=spec.model, worker=worker, decoded=self._decoded)
        return ModelHost(home=self.server.home, deployment=self.name, model=spec.model,
                         worker=worker, registry_url=self.server.registry_url,
                         max_memory_mb=spec.max_memory_mb,
                         max_predict_ms=spec.predict_limit_ms(self.policy.deadline_ms))

    async def _start_models(self, specs: list[ModelSpec], *, wait_all: bool = False,
                            schedule: Schedule | None = None) -> list[Host]:
        """Start hosts for the models not hosted yet, wait until the candidates among them
        (every one with ``wait_all``) are warm, failed, or ``READY_TIMEOUT_S`` passed, then
        start their workers. Returns the new hosts."""
        new = [self._make_host(s) for s in specs if s.model not in self.hosts]
        if not new:
            return []
        for host in new:
            await host.start()
            self.hosts[host.model] = host
        candidates = {c.model for c in (schedule or self.schedule).candidates}
        waited = [h for h in new if wait_all or h.model in candidates]
        timeout = config.READY_TIMEOUT_S.get()
        await asyncio.gather(*(h.settled(timeout_s=timeout) for h in waited))
        # Start from the current end of the input stream: every request appended from now on
        # is scored, and a schedule that expects these models is switched on only after.
        # (A group that already has a committed position resumes from there instead.) A
        # shadow still warming takes no scores until it is ready: they are missing.
        start = await self.stream.last_offset(self.input_topic) + 1
        for host in new:
            worker = Worker(self.stream, self.name, host.model, host, start=start)
            worker.follow(schedule or self.schedule)
            self.workers[host.model] = worker
            self._spawn_role(("worker", host.model), worker.run)
        return new

    def failed_models(self) -> dict[str, str]:
        """Models whose host could not load them, with the reason."""
        return {m: h.detail for m, h in self.hosts.items() if h.state is HostState.FAILED}

    # -- policy changes -------------------------------------------------------------------

    async def _apply(self, policy: Policy, record: PolicyRecord) -> None:
        """Switch this process's roles to ``policy`` (call with the lock held)."""
        version = record.version
        schedule = policy.schedule(self.name, version)
        follows_policy = ProcessRole.WORKER in self.server.roles and not self.server.roles.models
        if follows_policy:
            await self._start_models(policy.models, schedule=schedule)
        for worker in self.workers.values():
            worker.follow(schedule)  # a promoted challenger's worker turns prompt
        if self.rendezvous is not None:
            self.rendezvous.set_schedule(schedule)
        if self.monitor is not None:
            self.monitor.follow(version)
        retired = [m for m in self.hosts if m not in policy.model_names()] \
            if follows_policy else []
        self.policy, self.policy_version, self.schedule = policy, version, schedule
        if retired:
            # Requests decided under the old schedule may still wait for these models.
            linger = (max(policy.deadline_ms, 1.0) + self.server.late_grace_ms) / 1000
            asyncio.get_running_loop().call_later(
                linger, lambda: self._spawn(("retire", version), self._retire(retired)))
        log.info("%s: now at policy %s", self.name, version)

    async def check_models(self, policy: Policy) -> dict[str, str]:
        """Start hosts for the models ``policy`` adds and wait until they are warm; returns
        those that failed to load, with the reason (their hosts are stopped again)."""
        if ProcessRole.WORKER not in self.server.roles:
            return {}
        async with self._lock:
            new = await self._start_models(
                [s for s in policy.models if s.model not in self.hosts], wait_all=True)
        failed = {h.model: h.detail for h in new if h.state is HostState.FAILED}
        if failed:
            await self._retire(list(failed), force=True)
        return failed

    async def reload(self) -> int:
        """Apply the registry's current policy if it changed; returns the policy version."""
        async with self._lock:
            policy, rec = await asyncio.to_thread(self.server.registry.policy, self.name)
            if rec.version != self.policy_version:
                await self._apply(policy, rec)
            return rec.version

    async def _watch_registry(self) -> None:
        """Follow policy changes recorded by other processes (the one path every process
        learns of a change: promote, rollback or apply through any proxy or the CLI)."""
        while True:
            await asyncio.sleep(REGISTRY_WATCH_S)
            try:
                rec = await asyncio.to_thread(self.server.registry.store.policy, self.name)
            except RendezvousError as exc:
                log.warning("%s: cannot read the registry (%s); retrying", self.name, exc)
                continue
            if rec.version != self.policy_version:
                try:
                    await self.reload()
                except RendezvousError as exc:
                    log.error("%s: cannot apply policy %s: %s", self.name, rec.version, exc)

    async def _readers_present(self) -> bool:
        """Whether the roles that answer and archive a request read this deployment's groups
        (the rendezvous server, the decoy, the candidates' workers). A proxy running apart
        from them opens the deployment only then: groups start at the newest record, so a
        request appended earlier would be missed (unanswered, unarchived). Shadows and the
        monitor only observe; they are not waited for."""
        candidates = [c.model for c in self.schedule.candidates]
        pairs = [*groups_of(self.name, self.policy, ProcessRole.RENDEZVOUS),
                 *groups_of(self.name, self.policy, ProcessRole.DECOY),
                 *groups_of(self.name, self.policy, ProcessRole.WORKER, candidates)]
        try:
            self.unread = await self.stream.unread(pairs)
        except RendezvousError as exc:
            log.warning("%s: cannot ask the engine who reads (%s); retrying", self.name, exc)
            return False
        self._readers_ok = not self.unread
        return self._readers_ok

    async def _await_readers(self) -> None:
        warn_at: float | None = time.monotonic() + READERS_WARN_S
        while not self._stopping and not await self._readers_present():
            if warn_at is not None and time.monotonic() > warn_at:
                warn_at = None
                log.warning("%s: not open to traffic yet: nobody reads %s; start those roles "
                            "(`rendezvous serve %s --role …`)", self.name,
                            ", ".join(f"{g} on {t}" for t, g in self.unread), self.name)
            await asyncio.sleep(0.1)

    async def _retire(self, models: list[str], *, force: bool = False) -> None:
        for model in models:
            if model in self.policy.model_names() and not force:  # came back meanwhile
                continue
            worker = self.workers.pop(model, None)
            if worker is not None:
                await worker.stop()
            host = self.hosts.pop(model, None)
            if host is not None:
                await host.stop()

    # -- stop -------------------------------------------------------------------------------

    async def stop(self) -> None:
        # Order matters: stop intake (the proxy already did), let workers and the rendezvous
        # finish, flush the decoy, then the monitor; model hosts last.
        self._stopping = True
        for name in ("registry", "readers"):  # loops that only wait: nothing to finish
            loop = self._tasks.get(name)
            if loop is not None:
                loop.cancel()
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
        await asyncio.gather(*(h.stop() for h in self.hosts.values()))


class Server:
    """Stream engine + registry + runtimes for the served deployments.

    ``roles`` picks what this process runs (default: everything); running only some of them
    needs an engine shared between processes (NATS). ``registry_url``: a SQL URL for a
    registry shared by machines (PostgreSQL); default the SQLite file under ``home``.
    ``archive``: where the decoy and the scorekeeper write the evidence archive, a path or an
    fsspec URL (default ``RENDEZVOUS_ARCHIVE``, else ``<home>/archive``), checked writable at
    start. ``deployments`` None or empty: every deployment of the registry, including those created
    while serving.
    """

    def __init__(self, home: Path | str | None = None, deployments: list[str] | None = None, *,
                 streams: str | None = None, late_grace_ms: float | None = None,
                 roles: Roles | None = None, registry_url: str | None = None,
                 archive: str | None = None, reset_log: bool = False) -> None:
        self.home = config.home(home)
        self.archive_at = archive
        self.archive: Archive | None = None  # opened at start by processes that write it
        self.reset_log = reset_log  # start an embedded log afresh that does not match
        self.deployment_names = list(deployments or [])
        self.serves_all = not self.deployment_names
        self.streams_url = config.STREAMS.get(streams)
        self.late_grace_ms = config.LATE_GRACE_MS.get(late_grace_ms)
        self.roles = roles or Roles()
        self.registry_url = registry_url
        self.registry = Registry(self.home, url=registry_url)
        self.returns = LocalReturns()
        # Names the scoring process in every Score: host and pid find it among many.
        self.process_id = f"{socket.gethostname()}:{os.getpid()}"
        self.runtimes: dict[str, DeploymentRuntime] = {}
        self.stream: Stream
        self.shared = False  # True when other processes may share the engine (NATS)
        self._started = False
        self._adding = asyncio.Lock()
        self._watch: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """Started, connected to its engine, and every deployment has a warm candidate."""
        return self._started and self.returns.connected and all(
            rt.ready for rt in self.runtimes.values())

    def accepting(self, rt: DeploymentRuntime) -> bool:
        """Whether requests for ``rt``'s deployment are taken now: one deployment starting
        (e.g. created while serving) does not hold the others back."""
        return self._started and self.returns.connected and rt.ready

    async def start(self) -> None:
        if self.serves_all:
            self.deployment_names = await asyncio.to_thread(self.registry.deployments)
        for name in self.deployment_names:  # fail early on an unknown name, before any I/O
            await asyncio.to_thread(self.registry.policy, name)
        if ProcessRole.DECOY in self.roles or ProcessRole.MONITOR in self.roles:
            self.archive = open_archive(self.home, self.archive_at)
            await asyncio.to_thread(self.archive.check)  # a bad archive fails now, not later
        self.stream = await open_stream(self.streams_url, home=self.home,
                                        reset_log=self.reset_log)
        remote = self.stream.return_transport()
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
            await asyncio.gather(*(self.add(name) for name in self.deployment_names))
        except BaseException:
            # Stop what did start, so nothing is left holding the engine's groups.
            await self.stop()
            raise
        self._started = True
        if self.serves_all and self.shared:
            # Processes of one role learn of a deployment created while serving from the
            # registry, as they learn of policy changes (a proxy adds it on first use).
            self._watch = asyncio.create_task(self._watch_deployments())

    async def _watch_deployments(self) -> None:
        while True:
            await asyncio.sleep(REGISTRY_WATCH_S)
            try:
                names = await asyncio.to_thread(self.registry.deployments)
            except RendezvousError as exc:
                log.warning("cannot list the registry's deployments (%s); retrying", exc)
                continue
            for name in names:
                if name not in self.runtimes:
                    try:
                        await self.add(name)
                    except RendezvousError as exc:
                        log.error("cannot serve the new deployment %s: %s", name, exc)

    async def add(self, name: str) -> DeploymentRuntime:
        """Serve deployment ``name`` (already recorded in the registry) from now on."""
        async with self._adding:
            rt = self.runtimes.get(name)
            if rt is not None:
                return rt
            policy, rec = await asyncio.to_thread(self.registry.policy, name)
            signature = await asyncio.to_thread(self.registry.deployment_signature, name)
            rt = DeploymentRuntime(self, name, policy, rec.version, signature)
            self.runtimes[name] = rt
            if name not in self.deployment_names:
                self.deployment_names.append(name)
        await rt.start()
        return rt

    async def runtime(self, name: str) -> DeploymentRuntime:
        """The runtime of ``name``; a deployment created while serving every deployment is
        started on first use."""
        rt = self.runtimes.get(name)
        if rt is not None:
            return rt
        if self.serves_all and self._started and \
                name in await asyncio.to_thread(self.registry.deployments):
            return await self.add(name)
        known = ", ".join(sorted(self.runtimes)) or "none"
        raise NotFoundError("deployment", name, f"this server serves: {known}")

    async def apply_policy(self, name: str, policy: Policy, *, by: str,
                           note: str = "") -> PolicyRecord:
        """Record ``policy`` for deployment ``name`` once every model it adds has loaded and
        warmed up, and switch to it; raises ``ModelLoadError`` (nothing recorded) otherwise.
        A new deployment is served from then on when this server serves every deployment."""
        resolved = await asyncio.to_thread(self.registry.resolve_policy, name, policy)
        rt = self.runtimes.get(name)
        if rt is not None and ProcessRole.WORKER in self.roles:
            failed = await rt.check_models(resolved)
        else:
            failed = await check_loads(resolved, home=self.home, deployment=name,
                                       registry_url=self.registry_url)
        if failed:
            raise ModelLoadError(name, failed)
        rec = await asyncio.to_thread(self.registry.apply_policy, name, resolved, by=by,
                                      note=note)
        if rt is not None:
            await rt.reload()
        elif self.serves_all:
            await self.add(name)
        return rec

    async def stop(self) -> None:
        self._started = False
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for rt in self.runtimes.values():
            await rt.stop()
        await self.returns.close()
        with contextlib.suppress(AttributeError):  # the engine never opened
            await self.stream.close()
        self.registry.close()

    def problems(self) -> list[str]:
        """One line per model that cannot serve and per deployment with no candidate ready,
        each naming the fix (what ``serve`` prints after start-up)."""
        lines = []
        for name, rt in self.runtimes.items():
            for model, why in rt.failed_models().items():
                lines.append(
                    f"{name}: model {model} failed to load: {why.rstrip('.')}. Fix: register a "
                    "working version and `rendezvous deploy apply` a policy naming it (or leaving "
                    f"{model} out); {name} serves with its other models meanwhile")
            if not rt.ready:
                lines.append(f"{name}: no candidate model is ready, so it answers 503 until a "
                             "policy with a working champion or fallback is applied")
        return lines

    def status(self, deployment: str) -> dict[str, Any]:
        rt = self.runtimes[deployment]
        if rt.monitor is None:
            raise NotFoundError(
                "monitor of deployment", deployment,
                f"this process runs only {self.roles.label}; ask the `serve --role monitor` "
                f"process: GET /v1/deployments/{deployment}/status on its --port")
        live = rt.hosts if ProcessRole.WORKER in self.roles else rt.policy.model_names()
        return {**rt.monitor.stats.to_dict(), "policy_version": rt.policy_version,
                "models_live": sorted(live), "model_states": rt.model_states(),
                "analytics_host": rt.monitor.info()}
