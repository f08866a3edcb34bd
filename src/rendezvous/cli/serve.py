"""`rendezvous serve`."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from rendezvous import config
from rendezvous.cli.common import (
    ArchiveUrl,
    Home,
    app,
    err,
    out,
    use_archive,
)
from rendezvous.errors import ConfigError
from rendezvous.hosting.topology import ProcessRole

# -- serving ----------------------------------------------------------------------------------


@app.command()
def serve(
    deployments: Annotated[list[str] | None, typer.Argument(help="Deployments to serve "
                                                             "[default: all]")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address [default 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default 8000]")] = None,
    streams: Annotated[str | None, typer.Option(
        help="Stream engine: embedded, local-nats (every role as its own process) or "
             "nats://HOST:PORT [default embedded]")] = None,
    home: Home = None,
    role: Annotated[ProcessRole | None, typer.Option(
        help="Run only this role, on a shared engine (--streams nats://HOST:PORT) "
             "[default: every role]")] = None,
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="With --role worker: NAME@VERSION to score (repeatable) "
                        "[default: every model of the policy]")] = None,
    replicas: Annotated[int, typer.Option(
        min=1, help="Worker processes per model (--role worker, or --streams local-nats)")] = 1,
    monitor_port: Annotated[int | None, typer.Option(
        help="With --streams local-nats: port of the monitor's status endpoint "
             "[default: --port + 1]")] = None,
    registry: Annotated[str | None, typer.Option(
        help="Registry SQL URL shared by every process, e.g. postgresql://… "
             "[default: SQLite under --home]")] = None,
    processes: Annotated[int, typer.Option(
        min=1, help="Serving processes, each a whole Rendezvous on its own partition of the "
                    "embedded streams (use one per core)")] = 1,
    reset_log: Annotated[bool, typer.Option(
        "--reset-log", help="Start the embedded stream log afresh when the file on disk is not "
                            "the one this data directory recorded (the old files are kept "
                            "aside)")] = False,
    archive: ArchiveUrl = None,
) -> None:
    """Serve deployments over HTTP until Ctrl-C.

    Every role runs in this process by default. `--streams local-nats` starts a private
    nats-server and every role as its own process; `--role ROLE --streams nats://HOST:4222`
    runs one role, on any machine (README: "Scale-out on NATS").
    """
    from rendezvous.hosting.topology import Mode, Roles, Topology

    if model and role is None:
        raise ConfigError("--model picks what a worker process scores; add --role worker")
    topology = Topology(config.STREAMS.get(streams), processes=processes,
                        roles=Roles.only(role, model or ()) if role is not None else None,
                        replicas=replicas, monitor_port=monitor_port,
                        registry_url=registry, reset_log=reset_log).check()
    use_archive(archive)  # every process it starts inherits it, whichever mode runs
    if topology.mode in (Mode.PARTITIONS, Mode.LAUNCHER):
        # Child processes would each report a bad archive; one clear error here instead.
        from rendezvous.archive import open_archive

        open_archive(config.home(home)).check()
    match topology.mode:
        case Mode.PARTITIONS:
            from rendezvous.hosting.processes import serve_processes

            serve_processes(deployments, processes=processes, home=home, host=host, port=port,
                            reset_log=reset_log, say=out.print)
            out.print("stopped")
        case Mode.LAUNCHER:
            _serve_launcher(deployments, home, host, port, monitor_port, replicas, registry)
        case Mode.SINGLE:
            _serve_all(deployments, home, host, port, streams, registry, reset_log)
        case Mode.ROLE:
            _serve_role(topology.roles, deployments, home, host, port, streams, replicas,
                        registry)


def _serve_all(deployments: list[str] | None, home: Path | None, host: str | None,
               port: int | None, streams: str | None, registry: str | None,
               reset_log: bool) -> None:
    from rendezvous.hosting.serving import running

    async def main() -> None:
        async with running(deployments, home=home, host=host, port=port, streams=streams,
                           registry_url=registry, reset_log=reset_log) as (proxy, url):
            names = ", ".join(proxy.server.runtimes)
            for line in proxy.server.problems():
                err.print(f"[yellow]warning:[/] {line}")
            out.print(f"serving [bold]{names}[/] at {url} (Ctrl-C stops)")
            await _until_signal()
        out.print("stopped")

    asyncio.run(main())


def _serve_launcher(deployments: list[str] | None, home: Path | None, host: str | None,
                    port: int | None, monitor_port: int | None, replicas: int,
                    registry: str | None) -> None:
    from rendezvous.hosting.launcher import Launcher

    launcher = Launcher(deployments, home=home, host=host, port=port, monitor_port=monitor_port,
                        replicas=replicas, registry_url=registry,
                        say=lambda line: out.print(f"[dim]launcher:[/] {line}"))
    asyncio.run(launcher.run(_until_signal()))
    out.print("stopped")


def _serve_role(roles: Any, deployments: list[str] | None, home: Path | None,
                host: str | None, port: int | None, streams: str | None, replicas: int,
                registry: str | None) -> None:
    import logging

    from rendezvous.hosting.launcher import role_command, run_replicas
    from rendezvous.hosting.serving import running, running_roles

    label = f"{roles.label}[{os.getpid()}]"
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s {label} %(levelname)s %(name)s: %(message)s")
    url = config.STREAMS.get(streams)

    async def main() -> None:
        if replicas > 1:
            args = role_command(deployments or [], ProcessRole.WORKER, streams=url,
                                home=config.home(home), models=roles.models,
                                registry_url=registry)
            await run_replicas(args, replicas, _until_stopped(),
                               say=lambda line: out.print(f"[dim]replicas:[/] {line}"))
        elif ProcessRole.PROXY in roles:
            async with running(deployments, home=home, host=host, port=port, streams=url,
                               roles=roles, registry_url=registry) as (proxy, http):
                out.print(f"proxy of [bold]{', '.join(proxy.server.runtimes)}[/] at {http} on "
                          f"{url} (Ctrl-C stops)")
                await _until_stopped()
        else:
            async with running_roles(roles, deployments, home=home, host=host, port=port,
                                     streams=url, registry_url=registry) as (server, http):
                where = f" (status at {http})" if http else ""
                out.print(f"{roles.label} of [bold]{', '.join(server.runtimes)}[/] on {url}"
                          f"{where} (Ctrl-C stops)")
                await _until_stopped()
        out.print(f"{roles.label}: stopped")

    asyncio.run(main())


async def _until_stopped() -> None:
    """Until SIGINT or SIGTERM, or, in a role process a launcher started, until that launcher
    is gone (killed with -9, it cannot stop us itself)."""
    from rendezvous.hosting.launcher import parent_gone

    waits = [asyncio.ensure_future(_until_signal()), asyncio.ensure_future(parent_gone())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


async def _until_signal() -> None:
    """Wait for SIGINT or SIGTERM; either stops the server cleanly (requests in flight finish,
    the archive is flushed)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
