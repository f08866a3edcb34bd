"""The plans the supervisor runs (``Supervisor.run``), one per way of serving with children.

- ``Partitions``: ``serve --processes N``, N serving processes on one port, each a whole
  Rendezvous on its own partition of the embedded log (``serve --partition I`` each);
- ``LocalNats`` (``hosting.local_nats``): ``serve --streams local-nats``, a private
  nats-server and every role as its own process;
- ``Replicas``: ``serve --role worker --replicas N``, N copies of one worker command.

Every child is an ordinary ``rendezvous serve`` command line (``role_command``), so ``ps``
shows what each one is and an operator can stop and restart any of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from rendezvous import config
from rendezvous.errors import ConfigError, RendezvousError
from rendezvous.hosting.supervisor import Child, Plan, Say, Supervisor
from rendezvous.hosting.topology import Mode, ProcessRole, Topology
from rendezvous.registry import Registry
from rendezvous.streams.base import Stream

__all__ = ["Partitions", "Replicas", "plan_for", "registry_env", "reuseport_socket",
           "role_command", "wait_for_groups"]

START_TIMEOUT_S = 120.0  # loading models may take a while; a child that dies fails at once


def role_command(
    deployments: Iterable[str], role: ProcessRole | str, *, streams: str, home: Path,
    models: Iterable[str] = (), host: str | None = None, port: int | None = None,
) -> list[str]:
    """The command line of one role process: ``python -m rendezvous.cli serve … --role …``.
    A shared registry's URL (it may hold a password) goes in its environment instead
    (``registry_env``): command lines are visible to every user."""
    args = [sys.executable, "-m", "rendezvous.cli", "serve", *deployments,
            "--role", str(role)]
    for model in models:
        args += ["--model", model]
    args += ["--streams", streams, "--home", str(home)]
    if host is not None:
        args += ["--host", host]
    if port is not None:
        args += ["--port", str(port)]
    return args


def registry_env(registry_url: str | None) -> dict[str, str]:
    """What a role process's environment adds so that it opens ``registry_url``."""
    return {config.REGISTRY.env: registry_url} if registry_url else {}


def _first_dead(children: Iterable[Child]) -> Child | None:
    return next((c for c in children if not c.alive), None)


def _died_starting(child: Child) -> RendezvousError:
    code = child.proc.returncode if child.proc is not None else None
    return RendezvousError(f"{child.label} exited with code {code} while starting (its error "
                           "is printed above); nothing was opened to traffic")


async def _poll(children: Iterable[Child], pending: Callable[[], Awaitable[str]],
                fail: Callable[[str], str], *, timeout_s: float, every_s: float) -> None:
    """Call ``pending()`` every ``every_s`` until it returns "" (done; otherwise it says what
    is still awaited). Raises if a child exits meanwhile, or ``fail(what)`` once
    ``timeout_s`` has passed."""
    watched = list(children)
    deadline = time.monotonic() + timeout_s
    while True:
        dead = _first_dead(watched)
        if dead is not None:
            raise _died_starting(dead)
        what = await pending()
        if not what:
            return
        if time.monotonic() > deadline:
            raise RendezvousError(fail(what))
        await asyncio.sleep(every_s)


async def wait_for_groups(stream: Stream, pairs: Iterable[tuple[str, str]], *,
                          timeout_s: float = START_TIMEOUT_S,
                          children: Iterable[Child] = ()) -> None:
    """Return once a member reads every (topic, group) (``Stream.unread`` is empty), so that
    nothing appended afterwards is missed. Raises if a child exits meanwhile or ``timeout_s``
    passes."""
    waiting = list(pairs)

    async def unread() -> str:
        nonlocal waiting
        waiting = await stream.unread(waiting)
        return ", ".join(f"{g} on {t}" for t, g in waiting)

    await _poll(children, unread,
                lambda names: f"roles did not start reading within {timeout_s:g} s: {names}",
                timeout_s=timeout_s, every_s=0.05)


async def wait_ready(url: str, children: Iterable[Child], *,
                     timeout_s: float = START_TIMEOUT_S) -> None:
    """Return once ``url`` answers ready; raises if a child exits meanwhile or ``timeout_s``
    passes."""
    async with httpx.AsyncClient(timeout=2) as client:

        async def not_ready() -> str:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{url}/v2/health/ready")).status_code == 200:
                    return ""
            return "not ready"

        await _poll(children, not_ready,
                    lambda _: f"the server at {url} did not become ready in {timeout_s:g} s",
                    timeout_s=timeout_s, every_s=0.1)


def listening_inodes(table: str, port: int) -> set[str]:
    """The socket inodes listening on ``port`` in one of Linux's ``/proc/net/tcp`` tables
    (pure).

    >>> row = "0: 0100007F:1F90 00000000:0000 0A 0:0 00:0 0 0 0 4242 1 0 100 0 0 10 0"
    >>> listening_inodes("header\\n" + row, 8080), listening_inodes("header\\n" + row, 8081)
    ({'4242'}, set())
    """
    found = set()
    for row in table.splitlines()[1:]:
        f = row.split()
        if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
            found.add(f[9])
    return found


def listening(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` has a TCP socket listening on ``port``; None where ``/proc``
    cannot tell (not Linux)."""
    if not os.path.isdir("/proc/self/fd"):
        return None
    inodes = set()
    with contextlib.suppress(OSError):  # a process that is gone listens on nothing
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[len("socket:["):-1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            if inodes & listening_inodes(fh.read(), port):
                return True
    return False


async def wait_listening(children: Iterable[Child], port: int, *,
                         timeout_s: float = START_TIMEOUT_S) -> None:
    """Return once every child listens on ``port`` (where ``/proc`` tells; elsewhere at once).
    Raises if a child exits meanwhile or ``timeout_s`` passes."""
    watched = list(children)

    async def not_listening() -> str:
        return ", ".join(c.label for c in watched if listening(c.pid, port) is False)

    await _poll(watched, not_listening,
                lambda labels: f"{labels} did not open port {port} within {timeout_s:g} s",
                timeout_s=timeout_s, every_s=0.05)


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` in an ``SO_REUSEPORT`` group, not listening yet."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Each process listens on its own socket of one SO_REUSEPORT group: the kernel spreads
    # new connections evenly across them (one shared socket would let the least busy
    # process win every accept race).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # Accepted connections inherit this. Without it, answers of one segment wait for the
    # client's delayed ACK: ~40 ms per request (what `uvicorn --workers N` shows, since its
    # event loop only sets TCP_NODELAY on sockets it binds itself).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another "
                          "--port or stop the server using it") from None
    return sock


@dataclass
class Partitions:
    """``serve --processes N``: N processes, each a whole Rendezvous on its own partition.

    Python runs one thread of Python at a time per process, so one serving process uses
    about one core however many models score. With the embedded engine, N processes share one
    port (an ``SO_REUSEPORT`` group: the kernel spreads connections across them) and each owns
    a partition of the streams: process 0 logs to ``<home>/streams.db``, process i to
    ``<home>/streams-p<i>.db``. Every request still goes through the whole rendezvous flow
    (every model scores it, the decoy archives it) in the process that accepted it. The
    partitions share the registry, the artifacts and the archive directory; policy changes
    reach every process through the registry (each watches its deployment's current policy
    version), and ``rendezvous status`` merges every partition's results.
    """

    deployments: list[str]
    processes: int
    home: Path
    host: str
    port: int
    reset_log: bool
    say: Say
    token: str  # the admin token every partition checks (``plan_for`` decides it)
    _probe: socket.socket | None = None
    _files: list[Path] = field(default_factory=list)

    async def start(self, sup: Supervisor) -> None:
        from rendezvous.hosting.serving import ALL, write_run_files

        with Registry(self.home) as reg:  # fail on unknown names before starting anything
            names = self.deployments or reg.deployments()
            for name in names:
                reg.policy(name)
        if not names:
            raise ConfigError("no deployments to serve; create one with "
                              "`rendezvous deploy apply FILE`")
        # Holds the port (bound, never listening) so that every child joins the same one,
        # also when --port 0 asked for any free port.
        self._probe = reuseport_socket(self.host, self.port)
        addr = self._probe.getsockname()
        url = f"http://{'127.0.0.1' if addr[0] in ('0.0.0.0', '::') else addr[0]}:{addr[1]}"
        children = []
        for i in range(self.processes):
            args = [sys.executable, "-m", "rendezvous.cli", "serve", *self.deployments,
                    "--partition", str(i), "--host", self.host, "--port", str(addr[1]),
                    "--home", str(self.home), *(["--reset-log"] if self.reset_log else [])]
            # The token travels in the environment: command lines are visible to every user.
            env = {config.ADMIN_TOKEN.env: self.token}
            children.append(sup.spawn(Child(f"serving process {i}", "partition", args,
                                             env=env)))
        await wait_ready(url, children)
        # The port answers ready as soon as one process listens; the kernel hands every
        # connection made before the others listen to that one, and a client's keep-alive
        # connections stay where they landed. Open for business once every process listens.
        await wait_listening(children, addr[1])
        self._files = write_run_files(self.home, self.deployments or [ALL],
                                      {"url": url, "pid": os.getpid(), "token": self.token})
        self.say(f"serving {', '.join(names)} at {url} with {self.processes} processes "
                 "(Ctrl-C stops)")

    async def follow(self, sup: Supervisor) -> None:
        """Nothing to do: each partition follows policy changes from the registry itself."""

    async def stop(self, sup: Supervisor) -> None:
        for f in self._files:
            f.unlink(missing_ok=True)
        await sup.stop(list(sup.children))
        if self._probe is not None:
            self._probe.close()


@dataclass
class Replicas:
    """``serve --role worker --replicas N``: N copies of one worker command (``--replicas 1``
    in their command lines), restarted alone, stopped together."""

    args: list[str]
    replicas: int
    env: dict[str, str] = field(default_factory=dict)

    async def start(self, sup: Supervisor) -> None:
        for i in range(self.replicas):
            sup.spawn(Child(f"worker #{i + 1}", ProcessRole.WORKER, self.args, env=self.env))

    async def follow(self, sup: Supervisor) -> None:
        """Nothing to do: each worker follows policy changes itself."""

    async def stop(self, sup: Supervisor) -> None:
        """Nothing in particular: the supervisor stops them all at once."""


def plan_for(topology: Topology, deployments: list[str] | None, *, home: Path,
             host: str | None, port: int | None, say: Say) -> Plan:
    """The plan that serves ``topology`` (whose mode runs children)."""
    mode = topology.mode
    if mode is Mode.PARTITIONS:
        import secrets

        return Partitions(list(deployments or []), topology.processes, home,
                          config.HOST.get(host), config.PORT.get(port), topology.reset_log,
                          say, token=config.ADMIN_TOKEN.get() or secrets.token_urlsafe(24))
    if mode is Mode.LAUNCHER:
        from rendezvous.hosting.local_nats import LocalNats

        return LocalNats(deployments, home=home, host=host, port=port,
                         monitor_port=topology.monitor_port, replicas=topology.replicas,
                         registry_url=topology.registry_url, say=say)
    if mode is Mode.REPLICAS:
        models = topology.roles.models if topology.roles is not None else ()
        args = role_command(deployments or [], ProcessRole.WORKER, streams=topology.streams,
                            home=home, models=models)
        return Replicas(args, topology.replicas, registry_env(topology.registry_url))
    raise ValueError(f"{mode.value} serving runs in this process; it has no plan")
