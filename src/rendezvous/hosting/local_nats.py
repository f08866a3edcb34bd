"""Every role as its own process on this machine: ``rendezvous serve DEP --streams local-nats``.

A plan of the supervisor (``hosting.plans``): it starts a private ``nats-server`` (store under
``<home>/nats``), then one process per role, each an ordinary ``rendezvous serve DEP --role …``
command on that server, so ``ps`` shows what each one is and an operator can stop and restart
any of them:

    rendezvous serve demo --role rendezvous --streams nats://127.0.0.1:PORT --home …
    rendezvous serve demo --role worker --model fraud@3 --streams nats://127.0.0.1:PORT --home …

Order: rendezvous server, decoy, monitor and workers first; the proxy opens to traffic only
once every group they read exists on the server and is being pulled from, so that no request
is appended before the roles that must see it are listening. One Ctrl-C (or SIGTERM) stops the
proxy first (requests in flight get their answers), then the other roles, then the server.
Children run in their own process groups, so the terminal's Ctrl-C reaches only the supervisor,
which stops them in that order; they also stop by themselves if the supervisor dies (killed
with -9), and the next one on the same data directory stops a nats-server such a death left
behind. A child that dies is started again after a capped backoff (``supervisor.Backoff``),
like every supervised process.

Policy changes are followed: workers are started for a model a new policy adds, and stopped
once a policy no longer names theirs (after the deadline and the late-grace window).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import socket
import time
from pathlib import Path
from typing import IO

from rendezvous import config
from rendezvous.core.policy import Policy
from rendezvous.errors import ConfigError, RendezvousError, StreamError
from rendezvous.hosting.plans import (
    START_TIMEOUT_S,
    registry_env,
    role_command,
    wait_for_groups,
    wait_ready,
)
from rendezvous.hosting.supervisor import Child, Say, Supervisor
from rendezvous.hosting.topology import ProcessRole, groups_of
from rendezvous.registry import Registry
from rendezvous.streams.base import Stream, open_stream
from rendezvous.streams.nats.server import LocalNatsServer

__all__ = ["LocalNats"]


class LocalNats:
    """A private nats-server and every role of ``deployments`` as its own process.

    >>> # await Supervisor(print).run(LocalNats(["demo"], home=home, port=8000), stopped)
    """

    def __init__(self, deployments: list[str] | None = None, *, home: Path | str | None = None,
                 host: str | None = None, port: int | None = None,
                 monitor_port: int | None = None, replicas: int = 1,
                 registry_url: str | None = None, say: Say = print) -> None:
        if replicas < 1:
            raise RendezvousError(f"--replicas {replicas}: run at least 1 worker per model")
        self.home = config.home(home)
        self.deployments = list(deployments or [])
        self.serves_all = not self.deployments  # and those created while serving
        self.host = config.HOST.get(host)
        self.port = config.PORT.get(port)
        self.monitor_port = monitor_port if monitor_port is not None else (
            self.port + 1 if self.port else 0)
        self.replicas = replicas
        self.registry_url = registry_url
        self.say = say
        self.nats = LocalNatsServer(self.home / "nats", new_session=True)
        self.proxy_url = ""
        self._lock_file: IO[str] | None = None
        self._stream: Stream | None = None
        self._registry: Registry | None = None
        self._policies: dict[str, Policy] = {}
        self._versions: dict[str, int] = {}

    # -- startup --------------------------------------------------------------------------

    async def start(self, sup: Supervisor) -> None:
        """Start the server and the roles in order. One long sequence on purpose: it reads as
        the startup order."""
        with Registry(self.home, url=self.registry_url) as reg:
            names = self.deployments or await asyncio.to_thread(reg.deployments)
            if not names:
                raise RendezvousError("no deployments to serve; create one with "
                                      "`rendezvous deploy apply FILE`")
            self.deployments = names
            for name in names:
                self._policies[name] = (await asyncio.to_thread(reg.policy, name))[0]
        await self._take_home()
        self._check_monitor_port()
        await asyncio.to_thread(self.nats.start)
        self.say(f"nats-server at {self.nats.url} (store {self.nats.store_dir})")
        self._stream = await open_stream(self.nats.url, home=self.home)
        backends = [self._spawn_role(sup, ProcessRole.RENDEZVOUS)]
        if self.serves_all or any(p.decoy for p in self._policies.values()):
            backends.append(self._spawn_role(sup, ProcessRole.DECOY))
        backends.append(self._spawn_role(sup, ProcessRole.MONITOR, port=self.monitor_port))
        for name, policy in self._policies.items():
            for model in policy.model_names():
                backends += self._spawn_workers(sup, name, model)
        pairs = [pair for name, policy in self._policies.items()
                 for role in ProcessRole for pair in groups_of(name, policy, role)]
        await wait_for_groups(self._stream, pairs, children=backends)
        proxy = self._spawn_role(sup, ProcessRole.PROXY, port=self.port)
        self.proxy_url = await self._wait_for_proxy(proxy)
        self.say(f"serving {', '.join(names)} at {self.proxy_url}: "
                 f"{len(sup.children)} processes, {self.replicas} worker process(es) per "
                 "model (Ctrl-C stops them all)")
        self._versions = {name: 0 for name in names}
        self._registry = Registry(self.home, url=self.registry_url)

    async def follow(self, sup: Supervisor) -> None:
        if self._registry is not None:
            await self._follow_registry(sup, self._registry, self._versions)

    async def _follow_registry(self, sup: Supervisor, reg: Registry,
                               versions: dict[str, int]) -> None:
        """Policy changes reach the launcher as they reach every process: from the registry.
        Serving every deployment, one created meanwhile gets its workers (the other roles'
        processes add it themselves)."""
        if self.serves_all:
            try:
                for name in await asyncio.to_thread(reg.deployments):
                    if name not in versions:
                        self.say(f"serving {name}, created while serving")
                        versions[name] = 0
                        self.deployments.append(name)
            except RendezvousError as exc:
                self.say(f"cannot list the registry's deployments ({exc}); retrying")
        for name in versions:
            try:
                policy, rec = await asyncio.to_thread(reg.policy, name)
            except RendezvousError as exc:
                self.say(f"cannot read the policy of {name} ({exc}); retrying")
                continue
            if rec.version != versions[name]:
                versions[name] = rec.version
                self._follow(sup, name, policy)

    async def _take_home(self) -> None:
        """Make sure this launcher is the only one using the server's store: two nats-servers
        on one store directory would corrupt it."""
        store = self.nats.store_dir
        store.mkdir(parents=True, exist_ok=True)
        lock = (store / "launcher.lock").open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise ConfigError(
                f"another `rendezvous serve --streams local-nats` is running on {self.home}; "
                "stop it first, or give this one another --home") from None
        self._lock_file = lock  # held until shutdown (or until this process dies)
        for pid in _servers_using(store):
            self.say(f"stopping nats-server pid {pid}, left running on {store} by a launcher "
                     "that was killed")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)

    def _check_monitor_port(self) -> None:
        """A taken monitor port fails here, naming the option, rather than in the monitor's
        process after every other role has started."""
        if not self.monitor_port:
            return
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
                probe.bind((self.host, self.monitor_port))
        except OSError:
            raise ConfigError(
                f"the monitor's port {self.host}:{self.monitor_port} is in use; pass "
                "--monitor-port PORT (default: --port + 1) or stop the server using it") from None

    def _spawn_role(self, sup: Supervisor, role: ProcessRole, *,
                    port: int | None = None) -> Child:
        names = [] if self.serves_all else self.deployments
        args = role_command(names, role, streams=self.nats.url, home=self.home,
                            host=self.host if port is not None else None, port=port)
        return sup.spawn(Child(role.value, role, args, env=registry_env(self.registry_url)))

    def _spawn_workers(self, sup: Supervisor, deployment: str, model: str) -> list[Child]:
        args = role_command([deployment], ProcessRole.WORKER, streams=self.nats.url,
                            home=self.home, models=[model])
        return [sup.spawn(Child(f"worker {deployment} {model} #{i + 1}",
                                ProcessRole.WORKER, args, (deployment, model),
                                env=registry_env(self.registry_url)))
                for i in range(self.replicas)]

    async def _wait_for_proxy(self, proxy: Child) -> str:
        """The proxy's URL (from its run file) once it answers ready."""
        from rendezvous.hosting.serving import read_run_file

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            info = read_run_file(self.home, self.deployments[0])
            if info is not None and info.get("pid") == proxy.pid:
                url = str(info["url"])
                await wait_ready(url, [proxy], timeout_s=max(deadline - time.monotonic(), 1))
                return url
            if not proxy.alive:
                raise RendezvousError(f"the proxy exited with code "
                                      f"{proxy.proc.returncode} while starting")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise RendezvousError(f"the proxy did not start within {START_TIMEOUT_S:g} s")
            await asyncio.sleep(0.05)

    # -- policy changes -------------------------------------------------------------------

    def _follow(self, sup: Supervisor, deployment: str, policy: Policy) -> None:
        """Workers for the models ``policy`` adds; stop, later, those of models it drops."""
        self._policies[deployment] = policy
        running = {c.model for c in sup.children if c.model and c.alive}
        for model in policy.model_names():
            if (deployment, model) not in running:
                self._spawn_workers(sup, deployment, model)
        retired = [c for c in sup.children
                   if c.model and c.model[0] == deployment and c.model[1] not in
                   policy.model_names()]
        if retired:
            # Requests decided under the old policy may still wait for these models.
            linger = (policy.deadline_ms + config.LATE_GRACE_MS.get()) / 1000
            asyncio.get_running_loop().call_later(
                linger, lambda: asyncio.ensure_future(self._retire(sup, deployment, retired)))

    async def _retire(self, sup: Supervisor, deployment: str, children: list[Child]) -> None:
        names = self._policies[deployment].model_names()
        gone = [c for c in children if c.model is not None and c.model[1] not in names]
        if gone:
            await sup.stop(gone)

    # -- shutdown -------------------------------------------------------------------------

    async def stop(self, sup: Supervisor) -> None:
        """The proxy first (requests in flight get their answers), then the other roles,
        then the server."""
        if self._registry is not None:
            self._registry.close()
            self._registry = None
        proxies = [c for c in sup.children if c.role == ProcessRole.PROXY]
        await sup.stop(proxies, timeout_s=10)
        await sup.stop(list(sup.children))
        if self._stream is not None:
            with contextlib.suppress(RendezvousError, StreamError):
                await self._stream.close()
        await asyncio.to_thread(self.nats.stop)
        if self._lock_file is not None:
            self._lock_file.close()  # releases the lock
            self._lock_file = None


def _servers_using(store: Path) -> list[int]:
    """Pids of nats-server processes storing under ``store`` (found through /proc, so only
    on Linux; elsewhere the lock file alone guards the store)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"nats-server") and b"-sd" in args \
                and str(store).encode() in args:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie); Linux only, like ``_servers_using``."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status
