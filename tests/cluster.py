"""Test helpers for multi-process deployments: role processes on a real nats-server, a bounded
load generator, and readers for what ended up in the results stream and the archive."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from rendezvous import ModelSpec, Policy, Registry, Role
from rendezvous.core import messages
from rendezvous.core.policy import Policy as PolicyT
from rendezvous.errors import NotFoundError
from rendezvous.hosting.plans import role_command, wait_for_groups
from rendezvous.hosting.topology import ProcessRole, groups_of
from rendezvous.roles.decoy import read_archive
from rendezvous.streams.nats.engine import NatsStream
from rendezvous.streams.nats.mapping import durable_name, stream_name
from rendezvous.streams.nats.server import LocalNatsServer
from tests.conftest import register_callable

ROOT = Path(__file__).resolve().parent.parent
DEP = "dep"
DEADLINE_MS = 300.0
# The answer, or a clear 5xx, comes within the deadline plus the proxy's 0.5 s margin for a
# silent rendezvous server; the rest is slack for a loaded 2-core CI machine.
HANG_LIMIT_S = DEADLINE_MS / 1000 + 0.5 + 1.2
ENV = {
    # Short enough that records a killed process held come back within a test.
    "RENDEZVOUS_NATS_ACK_WAIT_S": "2",
    "RENDEZVOUS_LATE_GRACE_MS": "300",
    "PYTHONPATH": str(ROOT),  # the callable models live in tests.models
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def two_models(registry: Registry) -> dict[str, str]:
    """A champion and a fallback (constant answers 1.0 and 2.0)."""
    refs = {
        "champion": register_callable(registry, "champ", "tests.models:make_constant",
                                      value=1.0),
        "fallback": register_callable(registry, "fb", "tests.models:make_constant", value=2.0),
    }
    registry.apply_policy(DEP, Policy(deadline_ms=DEADLINE_MS, models=[
        ModelSpec(refs["champion"], Role.CHAMPION, wait_ms=60),
        ModelSpec(refs["fallback"], Role.FALLBACK),
    ]))
    return refs


@dataclass
class Proc:
    name: str
    args: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass
class Cluster:
    """Role processes of deployment ``dep``, each started as an operator would start it."""

    home: Path
    nats: LocalNatsServer
    logs: Path
    procs: dict[str, Proc] = field(default_factory=dict)

    def start(self, name: str, role: ProcessRole, *, models: Iterable[str] = (),
              port: int | None = None) -> Proc:
        args = role_command([DEP], role, streams=self.nats.url, home=self.home, models=models,
                            host="127.0.0.1" if port is not None else None, port=port)
        proc = self.procs.get(name) or Proc(name, args, self.logs / f"{name}.log")
        self.logs.mkdir(parents=True, exist_ok=True)
        with proc.log.open("ab") as log:
            proc.popen = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, cwd=ROOT,
                                          env={**os.environ, **ENV})
        self.procs[name] = proc
        return proc

    def kill(self, name: str) -> None:
        """kill -9, as a crash would."""
        proc = self.procs[name]
        assert proc.popen is not None
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait()

    def restart(self, name: str) -> Proc:
        proc = self.procs[name]
        assert not proc.alive
        role = ProcessRole(proc.args[proc.args.index("--role") + 1])
        models = [proc.args[i + 1] for i, a in enumerate(proc.args) if a == "--model"]
        port = int(proc.args[proc.args.index("--port") + 1]) if "--port" in proc.args else None
        return self.start(name, role, models=models, port=port)

    def stop_all(self, timeout_s: float = 15.0) -> None:
        for proc in self.procs.values():
            if proc.alive:
                proc.popen.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            if proc.popen is None:
                continue
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()

    def tails(self, lines: int = 15) -> str:
        """The end of every process's output, for assertion messages."""
        out = []
        for proc in self.procs.values():
            text = proc.log.read_text(errors="replace").splitlines() if proc.log.exists() else []
            out.append(f"--- {proc.name}\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[NatsStream]:
        stream = await NatsStream.connect(self.nats.url, name="tests")
        try:
            yield stream
        finally:
            await stream.close()

    async def wait_reading(self, role: ProcessRole, policy: PolicyT, *,
                           models: Iterable[str] = (), timeout_s: float = 30.0) -> None:
        """Until ``role``'s groups exist and are pulled from."""
        async with self.connection() as stream:
            await wait_for_groups(stream, groups_of(DEP, policy, role, models),
                                  timeout_s=timeout_s,
                                  children=[])

    async def wait_http(self, url: str, timeout_s: float = 30.0) -> None:
        async with httpx.AsyncClient(timeout=2) as client, asyncio.timeout(timeout_s):
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{url}/v2/health/ready")).status_code == 200:
                        return
                await asyncio.sleep(0.05)

    async def pending(self, topic: str, group: str) -> tuple[int, int]:
        """(records not yet delivered, delivered but not acknowledged) for a group."""
        async with self.connection() as stream:
            info = await stream.js.consumer_info(stream_name(topic), durable_name(group))
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)

    async def result_ids(self) -> Counter[str]:
        """How many times each request id is in the results stream."""
        async with self.connection() as stream:
            records = await stream.read(messages.topic(DEP, "results"), from_offset=1,
                                        limit=1_000_000)
        return Counter(messages.result_decoder.decode(r.data).request_id for r in records)

    def archive_ids(self) -> Counter[str]:
        """How many times each request id is in the archive, as ``archive export`` gives it."""
        try:
            table = read_archive(self.home, DEP)
        except NotFoundError:
            return Counter()
        return Counter(table["request_id"].to_pylist())


@dataclass
class Outcome:
    status: int | str  # HTTP status, or "conn" / "timeout"
    elapsed: float
    at: float  # monotonic time sent
    request_id: str | None = None
    retry_after: str | None = None
    model: str | None = None


async def drive(url: str, stop: asyncio.Event, out: list[Outcome], *, concurrency: int = 2,
                timeout_s: float = 5.0) -> None:
    """Steady load on ``url`` until ``stop`` is set; one Outcome per request in ``out``."""

    async def loop(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            outcome = Outcome("conn", 0.0, t0)
            try:
                r = await client.post(f"/v1/deployments/{DEP}/predict",
                                      json=[{"x": 1.0, "y": 2.0}])
                body: dict[str, Any] = r.json()
                outcome = Outcome(r.status_code, 0.0, t0, body.get("request_id"),
                                  r.headers.get("retry-after"), body.get("model"))
            except httpx.TimeoutException:
                outcome = Outcome("timeout", 0.0, t0)
            except httpx.TransportError:
                await asyncio.sleep(0.05)  # the proxy is down: do not spin
            outcome.elapsed = time.monotonic() - t0
            out.append(outcome)
            await asyncio.sleep(0.01)

    async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as client:
        await asyncio.gather(*(loop(client) for _ in range(concurrency)))


def ids(outcomes: Iterable[Outcome], *statuses: int) -> set[str]:
    return {o.request_id for o in outcomes if o.status in statuses and o.request_id}
