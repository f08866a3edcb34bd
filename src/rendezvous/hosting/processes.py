"""``rendezvous serve --processes N``: N processes, each a whole Rendezvous on its own partition.

Python runs one thread of Python at a time per process, so one serving process uses about one
core however many models score. With the embedded engine, N processes share one listening
socket (the kernel spreads connections across them) and each owns a partition of the streams:
process 0 logs to ``<home>/streams.db``, process i to ``<home>/streams-p<i>.db``. Every request
still goes through the whole rendezvous flow (every model scores it, the decoy archives it) in
the process that accepted it. The partitions share the registry, the artifacts and the
archive directory; policy changes reach every process through the registry (each watches
its deployment's current policy version), and ``rendezvous status`` merges every partition's
results.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import httpx

from rendezvous import config
from rendezvous.errors import ConfigError, UnavailableError
from rendezvous.hosting.supervisor import Backoff, describe_exit
from rendezvous.hosting.topology import MAX_PROCESSES
from rendezvous.registry import Registry
from rendezvous.streams.embedded import partition_url

READY_TIMEOUT_S = 120.0


def _reuseport_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Each process listens on its own socket of one SO_REUSEPORT group: the kernel spreads
    # new connections evenly across them (one shared socket would let the least busy
    # process win every accept race).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}; pick another --port") from exc
    return sock


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


def _child(index: int, deployments: list[str] | None, home: Path, host: str, port: int,
           token: str, reset_log: bool) -> None:
    from rendezvous.hosting.serving import running

    sock = _reuseport_socket(host, port)
    # Accepted connections inherit this. Without it, answers of one segment wait for the
    # client's delayed ACK: ~40 ms per request (what `uvicorn --workers N` shows, since its
    # event loop only sets TCP_NODELAY on sockets it binds itself).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Not listening yet: the kernel hands this process connections only once it listens,
    # which the HTTP server does when every candidate model is warm.
    # Ctrl-C reaches the whole process group; the parent turns it into one SIGTERM each.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def main() -> None:
        async with running(deployments, home=home, sock=sock, streams=partition_url(index),
                           admin_token=token, run_files=False,
                           reset_log=reset_log) as (proxy, _):
            if index == 0:  # every partition loads the same models: one report is enough
                for line in proxy.server.problems():
                    print(f"warning: {line}", file=sys.stderr, flush=True)
            await _until_stopped()

    asyncio.run(main())


def _wait_ready(url: str, pids: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in pids:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                raise UnavailableError(f"serving process {pid} exited during startup; see "
                                       "its error above")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise UnavailableError(f"the server at {url} did not become ready in {timeout_s:g} s")


def serve_processes(
    deployments: list[str] | None, *, processes: int, home: Path | str | None = None,
    host: str | None = None, port: int | None = None, admin_token: str | None = None,
    reset_log: bool = False, say: Callable[[str], None] = print,
) -> None:
    """Serve with ``processes`` partitions until SIGINT or SIGTERM (blocks).

    >>> # serve_processes(["demo"], processes=2, port=8000)
    """
    if not 1 <= processes <= MAX_PROCESSES:
        raise ConfigError(f"--processes {processes} is out of range; use 1 to {MAX_PROCESSES}")
    root = config.home(home)
    with Registry(root) as reg:  # fail on unknown names before starting anything
        names = deployments or reg.deployments()
        for name in names:
            reg.policy(name)
    if not names:
        raise ConfigError("no deployments to serve; create one with `rendezvous deploy apply`")
    bind_host = config.HOST.get(host)
    # Holds the port (bound, never listening) so that every child joins the same one, also
    # when --port 0 asked for any free port.
    probe = _reuseport_socket(bind_host, config.PORT.get(port))
    addr = probe.getsockname()
    url = f"http://{'127.0.0.1' if addr[0] in ('0.0.0.0', '::') else addr[0]}:{addr[1]}"
    token = config.ADMIN_TOKEN.get(admin_token) or secrets.token_urlsafe(24)

    def fork(index: int) -> int:
        pid = os.fork()
        if pid == 0:  # the child never returns into the caller's code
            code = 0
            try:
                _child(index, deployments, root, bind_host, addr[1], token, reset_log)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        return pid

    try:
        _supervise(fork, processes, names, bool(deployments), root, url, token, say)
    finally:
        probe.close()


def _supervise(fork: Callable[[int], int], processes: int, names: list[str], fixed: bool,
               home: Path, url: str, token: str, say: Callable[[str], None]) -> None:
    """Start the partitions, restart one that exits (capped backoff, like every supervised
    child), stop them all on SIGINT or SIGTERM."""
    from rendezvous.hosting.serving import ALL, write_run_files

    backoff = Backoff()
    pids = {fork(i): i for i in range(processes)}
    attempts = dict.fromkeys(range(processes), 0)
    started = dict.fromkeys(range(processes), time.monotonic())
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    files: list[Path] = []
    try:
        _wait_ready(url, list(pids), READY_TIMEOUT_S)
        files = write_run_files(home, names if fixed else [ALL],
                                {"url": url, "pid": os.getpid(), "token": token})
        say(f"serving {', '.join(names)} at {url} with {processes} processes (Ctrl-C stops)")
        while pids:
            pid, status = os.wait()
            index = pids.pop(pid, None)
            if index is None or stopping:
                continue
            if time.monotonic() - started[index] > backoff.reset_after_s:
                attempts[index] = 0
            delay = backoff.delay(attempts[index])
            attempts[index] += 1
            cause = describe_exit(os.waitstatus_to_exitcode(status))
            say(f"serving process {index} (pid {pid}) {cause}; starting it again in "
                f"{delay:.2g} s")
            time.sleep(delay)
            if not stopping:
                started[index] = time.monotonic()
                pids[fork(index)] = index
    finally:
        stop()
        for pid in list(pids):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for f in files:
            f.unlink(missing_ok=True)
        for s, handler in old.items():
            signal.signal(s, handler)
