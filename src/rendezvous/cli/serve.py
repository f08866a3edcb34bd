"""`rendezvous serve`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

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
        min=1, help="Serving processes, each a whole Rendezvous with its own model hosts on "
                    "its own partition of the embedded streams (about one per core for one "
                    "model, one per two cores when several models score every request; "
                    "README: Using every core)")] = 1,
    reset_log: Annotated[bool, typer.Option(
        "--reset-log", help="Start the embedded stream log afresh when the file on disk is not "
                            "the one this data directory recorded (the old files are kept "
                            "aside)")] = False,
    archive: ArchiveUrl = None,
    partition: Annotated[int | None, typer.Option(
        hidden=True, help="Serve as partition I of `serve --processes N` (set by it)")] = None,
) -> None:
    """Serve deployments over HTTP until Ctrl-C.

    Every role runs in this process by default. `--streams local-nats` starts a private
    nats-server and every role as its own process; `--role ROLE --streams nats://HOST:4222`
    runs one role, on any machine (README: "Scale-out on NATS").
    """
    from rendezvous.hosting.serve import serve as run
    from rendezvous.hosting.topology import Roles, Topology

    if model and role is None:
        raise ConfigError("--model picks what a worker process scores; add --role worker")
    topology = Topology(config.STREAMS.get(streams), processes=processes,
                        roles=Roles.only(role, model or ()) if role is not None else None,
                        replicas=replicas, monitor_port=monitor_port,
                        registry_url=registry, reset_log=reset_log,
                        partition=partition).check()
    use_archive(archive)  # every process it starts inherits it, whichever mode runs
    run(topology, deployments, home=home, host=host, port=port,
        say=lambda line: out.print(line, markup=False, highlight=False),
        warn=lambda line: err.print(f"[yellow]warning:[/] {escape(line)}"))
