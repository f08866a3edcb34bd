"""The ``rendezvous`` command: a thin shell over the library (one call plus printing each)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from rendezvous import config, decoy, deploy
from rendezvous.errors import ConfigError, RendezvousError
from rendezvous.ids import check_name
from rendezvous.registry import Registry
from rendezvous.roles import ProcessRole

app = typer.Typer(help="Rendezvous: every model scores every request; the best answer ready "
                       "before the deadline wins.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
models_app = typer.Typer(help="Register, list, show and alias model versions.",
                         no_args_is_help=True)
deploy_app = typer.Typer(help="Create and inspect deployments.", no_args_is_help=True)
archive_app = typer.Typer(help="The decoy's archive of inputs.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(deploy_app, name="deploy")
app.add_typer(archive_app, name="archive")

# Tables are wide; when output is not a terminal, do not squeeze them to 80 columns.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

Home = Annotated[Path | None, typer.Option("--home", help="Data directory "
                                           "[env RENDEZVOUS_HOME, default ./.rendezvous]")]


def _registry(home: Path | None) -> Registry:
    return Registry(config.home(home))


def _ago(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


# -- models -----------------------------------------------------------------------------------


@models_app.command("register")
def models_register(
    name: str,
    path: Annotated[Path | None, typer.Argument(help="Saved model (.skops for scikit-learn)")]
    = None,
    callable_ref: Annotated[str | None, typer.Option("--callable",
                            help="Register a Python callable 'package.module:function'")] = None,
    columns: Annotated[str | None, typer.Option(help="Input columns for --callable, "
                       "comma-separated, e.g. 'x,y' (all FP64)")] = None,
    description: str = "",
    home: Home = None,
) -> None:
    """Register a new version of model NAME from a .skops file or a Python callable."""
    from rendezvous.flavors.python import CallableModel
    from rendezvous.schema import Column, Datatype, Signature

    check_name(name, "model name")
    with _registry(home) as reg:
        if callable_ref:
            if not columns:
                raise ConfigError("--callable needs --columns 'a,b,...' naming its inputs")
            sig = Signature(tuple(Column(c.strip(), Datatype.FP64) for c in columns.split(",")))
            mv = reg.register(name, CallableModel(callable_ref), signature=sig,
                              description=description)
        elif path is not None:
            if not path.is_file():
                raise ConfigError(f"model file {path} does not exist")
            mv = reg.register_file(name, path, description=description)
        else:
            raise ConfigError("give a model file (PATH) or --callable package.module:function")
    out.print(f"registered [bold]{mv.ref}[/] ({mv.flavor}, sha256:{mv.digest[:12]}…)")


@models_app.command("list")
def models_list(home: Home = None) -> None:
    """List every model version."""
    with _registry(home) as reg:
        versions = reg.versions()
        aliases = {n: reg.store.aliases_of(n) for n in {v.name for v in versions}}
    table = Table("model", "flavor", "aliases", "created", "description")
    for v in versions:
        names = [a for a, ver in aliases[v.name].items() if ver == v.version]
        table.add_row(v.ref, v.flavor, ", ".join(names), _ago(v.created_at), v.description)
    out.print(table if versions else "no models yet: `rendezvous models register` or "
              "`rendezvous demo`")


@models_app.command("show")
def models_show(ref: Annotated[str, typer.Argument(help="NAME@VERSION or NAME@ALIAS")],
                home: Home = None) -> None:
    """Show one version: signature, metrics, lineage, aliases and alias history."""
    with _registry(home) as reg:
        mv = reg.get(ref)
        doc = {k: v for k, v in mv.__dict__.items() if k not in ("flavor_meta", "signature")}
        doc["inputs"] = ", ".join(f"{c['name']}:{c['datatype']}"
                                  for c in mv.signature["inputs"])
        doc["aliases"] = {a: v for a, v in reg.store.aliases_of(mv.name).items()}
        doc["alias_history"] = [c.__dict__ for c in reg.alias_history(mv.name)]
    out.print_json(json.dumps(doc, default=str))


@models_app.command("alias")
def models_alias(name: str, alias: str,
                 version: Annotated[int | None, typer.Argument()] = None,
                 delete: Annotated[bool, typer.Option("--delete")] = False,
                 home: Home = None) -> None:
    """Point NAME@ALIAS at VERSION (or --delete it); the change is kept in history."""
    if version is None and not delete:
        raise ConfigError("give a VERSION, or --delete to remove the alias")
    with _registry(home) as reg:
        change = reg.set_alias(name, alias, None if delete else version)
    out.print(f"{name}@{alias}: {change.from_version} -> {change.to_version}")


# -- deployments ------------------------------------------------------------------------------


@deploy_app.command("apply")
def deploy_apply(file: Path, home: Home = None) -> None:
    """Create or update a deployment from a TOML spec (see README)."""
    with _registry(home) as reg:
        rec = deploy.apply(reg, file)
    out.print(f"deployment [bold]{rec.deployment}[/] at policy version {rec.version}")
    _notify(home, rec.deployment, "reload")


@deploy_app.command("create")
def deploy_create(
    name: str,
    champion: Annotated[str, typer.Option(help="NAME@VERSION answering first")],
    fallback: Annotated[list[str] | None, typer.Option(help="Fallback model (repeatable)")]
    = None,
    challenger: Annotated[list[str] | None, typer.Option(help="Shadow model (repeatable)")]
    = None,
    canary: Annotated[str | None, typer.Option(help="Pinned reference model")] = None,
    deadline_ms: float = 100.0,
    wait_ms: Annotated[float | None, typer.Option(help="How long fallbacks wait for the "
                                                   "champion [default: the deadline]")] = None,
    no_decoy: bool = False,
    home: Home = None,
) -> None:
    """Create or update a deployment from flags."""
    policy = deploy.policy_from_flags(champion=champion, fallbacks=fallback,
                                      challengers=challenger, canary=canary,
                                      deadline_ms=deadline_ms, wait_ms=wait_ms,
                                      decoy=not no_decoy)
    with _registry(home) as reg:
        rec = reg.apply_policy(name, policy)
    out.print(f"deployment [bold]{name}[/] at policy version {rec.version}")
    _notify(home, name, "reload")


@deploy_app.command("list")
def deploy_list(home: Home = None) -> None:
    """List deployments with their champion and policy version."""
    with _registry(home) as reg:
        rows = [(n, *reg.policy(n)) for n in reg.deployments()]
    table = Table("deployment", "policy", "champion", "models", "deadline")
    for name, pol, rec in rows:
        table.add_row(name, str(rec.version), pol.champion or "-",
                      ", ".join(f"{m.model} ({m.role.value})" for m in pol.models),
                      f"{pol.deadline_ms:g} ms")
    out.print(table if rows else "no deployments yet: `rendezvous deploy apply FILE`")


@deploy_app.command("history")
def deploy_history(name: str, home: Home = None) -> None:
    """Every policy version of a deployment: who, when, what."""
    with _registry(home) as reg:
        hist = reg.policy_history(name)
    table = Table("version", "action", "at", "by", "champion", "note")
    for rec in hist:
        champ = next((m["model"] for m in rec.body["models"] if m["role"] == "champion"), "-")
        table.add_row(str(rec.version), rec.action, _ago(rec.at), rec.by, champ, rec.note)
    out.print(table)


def _notify(home: Path | None, deployment: str, op: str,
            body: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Tell a running server (if any) to apply the change now; returns its answer."""
    from rendezvous.serving import read_run_file

    info = read_run_file(config.home(home), deployment)
    if info is None:
        return None
    try:
        r = httpx.post(f"{info['url']}/v1/admin/deployments/{deployment}/{op}", json=body or {},
                       headers={"authorization": f"Bearer {info['token']}"}, timeout=30)
    except httpx.HTTPError:
        err.print(f"[yellow]note:[/] no server answered at {info['url']}; the change applies "
                  "when the deployment is served next")
        return None
    if r.status_code != 200:
        raise RendezvousError(f"the running server refused {op}: {r.text}")
    answer: dict[str, Any] = r.json()
    out.print(f"running server at {info['url']} switched to policy {answer['policy_version']}")
    return answer


@app.command()
def promote(deployment: str,
            model: Annotated[str, typer.Argument(help="NAME@VERSION to become champion")],
            home: Home = None) -> None:
    """Make MODEL the champion (the old champion keeps scoring as a challenger)."""
    from rendezvous.serving import read_run_file

    if read_run_file(config.home(home), deployment) and _notify(
            home, deployment, "promote", {"model": model}):
        return
    with _registry(home) as reg:
        rec = reg.promote(deployment, model)
    out.print(f"{deployment}: {model} is champion (policy version {rec.version})")


@app.command()
def rollback(deployment: str, home: Home = None) -> None:
    """Restore the policy the current one replaced."""
    from rendezvous.serving import read_run_file

    if read_run_file(config.home(home), deployment) and _notify(home, deployment, "rollback"):
        return
    with _registry(home) as reg:
        rec = reg.rollback(deployment)
    out.print(f"{deployment}: rolled back ({rec.note}); policy version {rec.version}")


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
) -> None:
    """Serve deployments over HTTP until Ctrl-C.

    Every role runs in this process by default. `--streams local-nats` starts a private
    nats-server and every role as its own process; `--role ROLE --streams nats://HOST:4222`
    runs one role, on any machine (README: "Scale-out on NATS").
    """
    from rendezvous.roles import Roles

    launch = config.STREAMS.get(streams) == "local-nats"
    roles = Roles.only(role, model or ()) if role is not None else None
    _check_serve_options(launch, roles, model, replicas, monitor_port)
    if processes > 1:
        if launch or roles is not None or config.STREAMS.get(streams) != "embedded" or registry:
            raise ConfigError("--processes partitions the embedded engine; on NATS run "
                              "several proxies or --replicas workers instead")
        from rendezvous.processes import serve_processes

        serve_processes(deployments, processes=processes, home=home, host=host, port=port,
                        say=out.print)
        out.print("stopped")
    elif launch:
        _serve_launcher(deployments, home, host, port, monitor_port, replicas, registry)
    elif roles is None:
        _serve_all(deployments, home, host, port, streams, registry)
    else:
        _serve_role(roles, deployments, home, host, port, streams, replicas, registry)


def _check_serve_options(launch: bool, roles: Any, model: list[str] | None, replicas: int,
                         monitor_port: int | None) -> None:
    if launch and roles is not None:
        raise ConfigError("--streams local-nats starts every role itself; to run one role, "
                          "point it at a running server: --streams nats://HOST:PORT")
    if model and roles is None:
        raise ConfigError("--model picks what a worker process scores; add --role worker")
    if replicas > 1 and not launch and (roles is None or ProcessRole.WORKER not in roles):
        raise ConfigError("--replicas counts worker processes per model; use it with "
                          "--role worker or --streams local-nats")
    if monitor_port is not None and not launch:
        raise ConfigError("--monitor-port applies to --streams local-nats; a --role monitor "
                          "process serves its status on --port")


def _serve_all(deployments: list[str] | None, home: Path | None, host: str | None,
               port: int | None, streams: str | None, registry: str | None) -> None:
    from rendezvous.serving import running

    async def main() -> None:
        async with running(deployments, home=home, host=host, port=port, streams=streams,
                           registry_url=registry) as (proxy, url):
            names = ", ".join(proxy.server.runtimes)
            out.print(f"serving [bold]{names}[/] at {url} (Ctrl-C stops)")
            await _until_signal()
        out.print("stopped")

    asyncio.run(main())


def _serve_launcher(deployments: list[str] | None, home: Path | None, host: str | None,
                    port: int | None, monitor_port: int | None, replicas: int,
                    registry: str | None) -> None:
    from rendezvous.launcher import Launcher

    launcher = Launcher(deployments, home=home, host=host, port=port, monitor_port=monitor_port,
                        replicas=replicas, registry_url=registry,
                        say=lambda line: out.print(f"[dim]launcher:[/] {line}"))
    asyncio.run(launcher.run(_until_signal()))
    out.print("stopped")


def _serve_role(roles: Any, deployments: list[str] | None, home: Path | None,
                host: str | None, port: int | None, streams: str | None, replicas: int,
                registry: str | None) -> None:
    import logging
    import os

    from rendezvous.launcher import role_command, run_replicas
    from rendezvous.serving import running, running_roles

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
    from rendezvous.launcher import parent_gone

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


@app.command()
def status(deployment: str, json_out: Annotated[bool, typer.Option("--json")] = False,
           streams: Annotated[str, typer.Option(
               help="Where the results stream is: embedded (every partition under --home) "
                    "or nats://HOST:PORT")] = "embedded",
           home: Home = None) -> None:
    """Per-model request counts, on-time/late/error counts, chosen counts, latency quantiles."""
    from rendezvous.monitor import stats_from_log

    with _registry(home) as reg:
        pol, rec = reg.policy(deployment)
    stats = asyncio.run(stats_from_log(config.home(home), deployment,
                                       streams=streams)).to_dict()
    stats["policy_version"] = rec.version
    stats["roles"] = {m.model: m.role.value for m in pol.models}
    if json_out:
        print(json.dumps(stats))
        return
    print_status(stats)


def print_status(stats: dict[str, Any]) -> None:
    roles = stats.get("roles", {})
    out.print(f"[bold]{stats['deployment']}[/]: {stats['requests']} requests, policy "
              f"{stats['policy_version']}, reasons {stats['reasons']}, response "
              f"{stats.get('response_ms', {})} ms")
    table = Table("model", "role", "requests", "on time", "late", "missing", "error", "chosen",
                  "p50 ms", "p90 ms", "p99 ms")
    for model, m in stats["models"].items():
        lat = m["latency_ms"]
        table.add_row(model, roles.get(model, "(retired)"), str(m["requests"]),
                      str(m["on_time"]), str(m["late"]), str(m["missing"]), str(m["error"]),
                      str(m["chosen"]), *(f"{lat[q]:.2f}" if lat[q] is not None else "-"
                                          for q in ("p50", "p90", "p99")))
    out.print(table)


@archive_app.command("export")
def archive_export(deployment: str,
                   out_file: Annotated[Path, typer.Option("--out", help="Parquet file to write")],
                   home: Home = None) -> None:
    """Write every archived input row of DEPLOYMENT to one Parquet file."""
    n = decoy.export(config.home(home), deployment, out_file)
    out.print(f"wrote {n} rows to {out_file}")


@app.command()
def demo(duration: Annotated[float | None, typer.Option(help="Seconds of traffic "
                                                        "[default: until Ctrl-C]")] = None,
         port: Annotated[int, typer.Option(help="Port [0 = any free port]")] = 0,
         home: Home = None) -> None:
    """Train four models, deploy them as 'demo', serve, send traffic, print a summary."""
    from rendezvous import demo as d
    from rendezvous.serving import running

    root = config.home(home)
    with out.status("training and registering the demo models…"), Registry(root) as reg:
        models = d.setup(reg)
    out.print(f"deployment [bold]demo[/]: {', '.join(models)}")

    async def main() -> None:
        async with running(["demo"], home=root, port=port) as (proxy, url):
            out.print(f"serving at {url}; sending traffic"
                      + (f" for {duration:g} s" if duration else " (Ctrl-C stops)"))
            with Progress(TextColumn("{task.description}"), BarColumn(),
                          TextColumn("{task.fields[n]} replies"), TimeRemainingColumn(),
                          console=out, transient=True) as bar:
                task = bar.add_task("traffic", total=duration or None, n=0)
                start = time.monotonic()
                count = 0

                def tick(_status: int, _model: str) -> None:
                    nonlocal count
                    count += 1
                    bar.update(task, completed=time.monotonic() - start, n=count)

                try:
                    replies = await d.traffic(url, duration, on_reply=tick)
                except asyncio.CancelledError:
                    replies = None
            await asyncio.sleep(0.3)  # let the last results reach the monitor
            stats = proxy.server.status("demo")
            rt = proxy.server.runtimes["demo"]
            stats["roles"] = {m.model: m.role.value for m in rt.policy.models}
            out.print(f"HTTP replies: {dict(replies) if replies else 'interrupted'}")
            print_status(stats)
            out.print(f"serve it again with: rendezvous serve demo --home {root}")

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        out.print("stopped")


def main() -> None:
    try:
        app()
    except RendezvousError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
