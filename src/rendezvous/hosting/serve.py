"""``rendezvous serve``, whatever the topology: one entry, two ways to run.

A topology whose mode is ``supervised`` (``--processes N``, ``--streams local-nats``,
``--role worker --replicas N``) is run by the one supervisor with its plan
(``hosting.plans``); every other one (every role here, or one role of a shared engine) runs in
this process until SIGINT or SIGTERM, or until the supervisor that started it is gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from rendezvous import config
from rendezvous.hosting.plans import plan_for, reuseport_socket
from rendezvous.hosting.supervisor import Say, Supervisor, parent_gone
from rendezvous.hosting.topology import Mode, Roles, Topology

__all__ = ["run_loop", "serve", "until_stopped"]


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` to its end on uvloop's event loop, asyncio's where uvloop is not installed
    (it does not build on Windows). Every serving process runs on it: uvloop schedules callbacks
    and timers and does socket reads and writes in C, work that took about 8 % of a serving
    process's busy time on asyncio's loop (bench/README.md, "Findings worth knowing")."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def serve(topology: Topology, deployments: list[str] | None, *, home: Path | None = None,
          host: str | None = None, port: int | None = None, say: Say = print,
          warn: Say = print) -> None:
    """Serve ``topology`` until SIGINT or SIGTERM (blocks). ``say`` gets progress lines,
    ``warn`` problems that do not stop serving (a model that failed to load, say)."""
    root = config.home(home)
    mode = topology.mode
    if mode.supervised:
        if mode in (Mode.PARTITIONS, Mode.LAUNCHER):
            # Every child would report a bad archive; one clear error here instead.
            from rendezvous.archive import open_archive

            open_archive(root).check()
        def tagged(line: str) -> None:
            say(f"{mode.value}: {line}")

        plan = plan_for(topology, deployments, home=root, host=host, port=port, say=tagged)
        run_loop(Supervisor(tagged).run(plan, until_stopped()))
        say("stopped")
    elif topology.roles is not None:  # Mode.ROLE
        run_loop(_role(topology.roles, topology, deployments, root, host, port, say))
    else:
        run_loop(_single(topology, deployments, root, host, port, say, warn))


async def _single(topology: Topology, deployments: list[str] | None, home: Path,
                  host: str | None, port: int | None, say: Say, warn: Say) -> None:
    from rendezvous.hosting.serving import running

    part = topology.partition
    if part is None:
        async with running(deployments, home=home, host=host, port=port,
                           streams=topology.streams, registry_url=topology.registry_url,
                           reset_log=topology.reset_log) as serving:
            for line in serving.server.problems():
                warn(line)
            say(f"serving {', '.join(serving.server.runtimes)} at {serving.url} (Ctrl-C stops)")
            await until_stopped()
        say("stopped")
        return
    from rendezvous.streams.embedded import partition_url

    # Bound, not listening yet: the kernel hands this process connections only once it
    # listens, which the HTTP server does when every candidate model is warm.
    sock = reuseport_socket(config.HOST.get(host), config.PORT.get(port))
    async with running(deployments, home=home, sock=sock, streams=partition_url(part),
                       run_files=False, reset_log=topology.reset_log) as serving:
        if part == 0:  # every partition loads the same models: one report is enough
            for line in serving.server.problems():
                warn(line)
        await until_stopped()


async def _role(roles: Roles, topology: Topology, deployments: list[str] | None, home: Path,
                host: str | None, port: int | None, say: Say) -> None:
    from rendezvous.hosting.serving import running

    label = f"{roles.label}[{os.getpid()}]"
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s {label} %(levelname)s %(name)s: %(message)s")
    url = topology.streams
    async with running(deployments, roles=roles, home=home, host=host, port=port,
                       streams=url, registry_url=topology.registry_url) as serving:
        names = ", ".join(serving.server.runtimes)
        if serving.proxy is not None:
            say(f"proxy of {names} at {serving.url} on {url} (Ctrl-C stops)")
        else:
            where = f" (status at {serving.url})" if serving.url else ""
            say(f"{roles.label} of {names} on {url}{where} (Ctrl-C stops)")
        await until_stopped()
    say(f"{roles.label}: stopped")


async def until_stopped() -> None:
    """Until SIGINT or SIGTERM (either stops cleanly: requests in flight finish, the archive
    is flushed), or, in a process the supervisor started, until that supervisor is gone
    (killed with -9, it cannot stop us itself)."""
    waits = [asyncio.ensure_future(_until_signal()), asyncio.ensure_future(parent_gone())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
