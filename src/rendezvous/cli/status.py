"""`rendezvous status`, `archive export` and `demo`."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from rendezvous import config
from rendezvous.cli.common import (
    ArchiveUrl,
    Home,
    RegistryUrl,
    app,
    archive_app,
    open_registry,
    out,
)
from rendezvous.errors import ConfigError
from rendezvous.registry import Registry
from rendezvous.roles import decoy


@app.command()
def status(deployment: str, json_out: Annotated[bool, typer.Option("--json")] = False,
           streams: Annotated[str, typer.Option(
               help="Where the results stream is: embedded (every partition under --home) "
                    "or nats://HOST:PORT")] = "embedded",
           home: Home = None, registry: RegistryUrl = None) -> None:
    """Per-model request counts, on-time/late/error counts, chosen counts, latency quantiles."""
    from rendezvous.roles.monitor import stats_from_log

    with open_registry(home, registry) as reg:
        pol, rec = reg.policy(deployment)
    stats = asyncio.run(stats_from_log(config.home(home), deployment,
                                       streams=streams)).to_dict()
    stats["policy_version"] = rec.version
    stats["roles"] = {m.model: m.role.value for m in pol.models}
    add_analytics(stats, deployment, home=home, streams=streams)
    live = _live_status(home, deployment)
    if live is not None:
        stats["model_states"] = live.get("model_states", {})
        stats["analytics_host"] = live.get("analytics_host")
    if json_out:
        print(json.dumps(stats))
        return
    print_status(stats)


def _live_status(home: Path | None, deployment: str) -> dict[str, Any] | None:
    """The running server's own status of ``deployment`` (model hosts and the analytics host
    live only there)."""
    import httpx

    from rendezvous.hosting.serving import read_run_file

    info = read_run_file(config.home(home), deployment)
    if info is None:
        return None
    try:
        r = httpx.get(f"{info['url']}/v1/deployments/{deployment}/status", timeout=5)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def print_status(stats: dict[str, Any]) -> None:
    roles = stats.get("roles", {})
    out.print(f"[bold]{stats['deployment']}[/]: {stats['requests']} requests, policy "
              f"{stats['policy_version']}, reasons {stats['reasons']}, response "
              f"{stats.get('response_ms', {})} ms")
    extra = [c for c in ("accuracy", "agreement")
             if any(m.get(c) is not None for m in stats["models"].values())]
    table = Table("model", "role", "requests", "on time", "late", "missing", "error", "chosen",
                  "p50 ms", "p90 ms", "p99 ms", *extra)
    for model, m in stats["models"].items():
        lat = m["latency_ms"]
        table.add_row(model, roles.get(model, "(retired)"), str(m["requests"]),
                      str(m["on_time"]), str(m["late"]), str(m["missing"]), str(m["error"]),
                      str(m["chosen"]), *(f"{lat[q]:.2f}" if lat[q] is not None else "-"
                                          for q in ("p50", "p90", "p99")),
                      *(f"{m[c]:.3f}" if m.get(c) is not None else "-" for c in extra))
    out.print(table)
    held = {model: m["held_ms"] for model, m in stats["models"].items()
            if (m.get("held_ms") or {}).get("p50") is not None}
    if held:  # shadows' batching, left out of their latencies above
        out.print("held for a shadow batch (ms, left out of latency): " + ", ".join(
            f"{model} p50 {q['p50']:.1f} p99 {q['p99']:.1f}" for model, q in sorted(held.items())))
    states = stats.get("model_states")
    if states:
        hosts = Table("model", "role", "state", "isolation", "restarts", "last exit", "detail")
        for model, h in states.items():
            hosts.add_row(model, h.get("role", ""), h["state"], h["isolation"],
                          str(h["restarts"]), h["last_exit"] or "-", h["detail"] or "-")
        out.print(hosts)
    analytics = stats.get("analytics_host")
    if analytics and analytics["state"] != "stopped":
        restarts = analytics["restarts"]
        out.print(f"analytics host: {analytics['state']}"
                  + (f", {restarts} restarts, last exit: {analytics['last_exit']}"
                     if restarts else "")
                  + (f" ({analytics['detail']})" if analytics["detail"] else ""))
    if stats.get("feedback"):
        out.print(f"feedback labels: {stats['feedback']}")


def add_analytics(stats: dict[str, Any], deployment: str, *, home: Path | None,
                  streams: str) -> None:
    """Each model's live accuracy (or MAE) and agreement with the champion, once known."""
    from rendezvous.cli.analytics import document

    acc = document(deployment, "accuracy", home=home, streams=streams)
    cmp = document(deployment, "compare", home=home, streams=streams)
    for model, m in stats["models"].items():
        a = acc["models"].get(model, {})
        m["accuracy"] = a.get("accuracy", a.get("mae"))
        m["agreement"] = cmp["models"].get(model, {}).get("agreement")
    if any(acc["feedback"].values()):
        stats["feedback"] = acc["feedback"]


@archive_app.command("export")
def archive_export(deployment: str,
                   out_file: Annotated[Path, typer.Option("--out", help="Parquet file to write")],
                   scores: Annotated[bool, typer.Option(
                       "--scores", help="Export every model's scores (with status, latency "
                                        "and policy version) instead of the inputs")] = False,
                   labels: Annotated[bool, typer.Option(
                       "--labels", help="Export the feedback labels (the first per request, "
                                        "as JSON) instead of the inputs")] = False,
                   archive: ArchiveUrl = None,
                   home: Home = None) -> None:
    """Write every archived input row (or, with --scores, every score; with --labels, every
    request's label) of DEPLOYMENT to one Parquet file."""
    from rendezvous.roles.scorekeeper import export_labels, export_scores

    if scores and labels:
        raise ConfigError("--scores and --labels each pick what to export; give one")
    export = export_scores if scores else export_labels if labels else decoy.export
    n = export(config.home(home), deployment, out_file, archive=archive)
    out.print(f"wrote {n} rows to {out_file}")


@app.command()
def demo(duration: Annotated[float | None, typer.Option(help="Seconds of traffic "
                                                        "[default: until Ctrl-C]")] = None,
         port: Annotated[int, typer.Option(help="Port [0 = any free port]")] = 0,
         home: Home = None) -> None:
    """Train four models, deploy them as 'demo', serve, send traffic, print a summary."""
    from rendezvous import demo as d
    from rendezvous.hosting.serving import running

    root = config.home(home)
    with out.status("training and registering the demo models…"), Registry(root) as reg:
        models = d.setup(reg)
    out.print(f"deployment [bold]demo[/]: {', '.join(models)}")

    async def main() -> None:
        async with running(["demo"], home=root, port=port) as serving:
            proxy, url = serving.edge
            out.print(f"serving at {url}; sending traffic"
                      + (f" for {duration:g} s" if duration else " (Ctrl-C stops)")
                      + "; labels for half of it, inputs shifted halfway")
            out.print(f"dashboard: [bold]{url}/dashboard[/]")
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
            g = await rt.monitor.gauges() if rt.monitor is not None and rt.monitor.analytics \
                else None
            if g is not None:
                for model, m in stats["models"].items():
                    m["accuracy"] = g["quality"].get(model, {}).get("accuracy")
                    m["agreement"] = g["agreement"].get(model)
                stats["feedback"] = g["feedback"]
            print_status(stats)
            if g is not None:
                out.print(f"alarms firing: {', '.join(g['firing']) or 'none'}")
            out.print(f"serve it again with: rendezvous serve demo --home {root}")

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        out.print("stopped")
