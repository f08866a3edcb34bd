"""`rendezvous replay DEP` and `rendezvous whatif DEP`: the evidence archive put to questions.

Each command is one library call (``rendezvous.analysis``) plus printing; ``--json`` prints the
report document instead of tables.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from rendezvous import config
from rendezvous.cli.common import ArchiveUrl, Home, RegistryUrl, app, err, out, use_archive
from rendezvous.errors import ConfigError

JsonOut = Annotated[bool, typer.Option("--json", help="Print the report as JSON")]
From = Annotated[str | None, typer.Option(
    "--from", help="Start of the range: ISO date/time (UTC unless it has an offset), 'now', "
                   "or a time ago (30m, 2h, 7d) [default: the beginning]")]


def _span(start: str | None, end: str | None) -> Any:
    from rendezvous.analysis.times import Span

    return Span.parse(start, end, now_ns=time.time_ns())


def _split_to(values: list[str] | None) -> tuple[str | None, str | None]:
    """``--to`` values: an http(s) URL is the traffic target, anything else the range end."""
    urls = [v for v in values or [] if v.startswith(("http://", "https://"))]
    times = [v for v in values or [] if v not in urls]
    if len(urls) > 1 or len(times) > 1:
        raise ConfigError(f"--to given {len(values or [])} times; give at most one end of the "
                          "range and (with --traffic) one server URL")
    return (urls[0] if urls else None), (times[0] if times else None)


@contextmanager
def _bar(what: str, enabled: bool) -> Iterator[Progress]:
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), console=err, transient=True, disable=not enabled)
    with bar:
        bar.add_task(what, total=None)
        yield bar


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return " / ".join(_fmt(x) for x in v)
    return str(v)


@app.command()
def replay(
    deployment: str,
    model: Annotated[str | None, typer.Option(
        "--model", help="The candidate to score the archived inputs with (NAME@V or alias)")]
    = None,
    start: From = None,
    to: Annotated[list[str] | None, typer.Option(
        "--to", help="End of the range (same forms as --from) [default: now]; with --traffic, "
                     "also the server URL to send to")] = None,
    sample: Annotated[int | None, typer.Option(
        help="Score about this many requests of the range, the same ones on every run")]
    = None,
    traffic: Annotated[bool, typer.Option(
        "--traffic", help="Re-send the archived requests to a running server instead")]
    = False,
    speed: Annotated[float, typer.Option(help="--traffic: recorded pace times this")] = 1.0,
    limit: Annotated[int | None, typer.Option(help="--traffic: send at most this many")]
    = None,
    json_out: JsonOut = False, home: Home = None, registry: RegistryUrl = None,
    archive: ArchiveUrl = None,
) -> None:
    """Score a range of archived inputs with a candidate model (resumable), and compare it
    with the champion of the time and with feedback labels; or, with --traffic, re-send the
    archived requests to a running deployment at their recorded pace."""
    use_archive(archive)
    url, end = _split_to(to)
    span = _span(start, end)
    root = config.home(home)
    if traffic:
        if url is None:
            raise ConfigError("replay --traffic needs the server: --to URL, e.g. "
                              "--to http://127.0.0.1:8000")
        _traffic(root, deployment, url, span, speed, limit, json_out, registry)
        return
    if url is not None:
        raise ConfigError(f"--to {url} is a server URL; add --traffic to send requests there")
    if model is None:
        raise ConfigError("replay needs --model NAME@V (the candidate to score), or --traffic")
    from rendezvous.analysis.replay import replay as run

    with _bar(f"replay {model}", not json_out) as bar:
        doc = asyncio.run(run(root, deployment, model, span=span, sample=sample,
                              registry_url=registry,
                              progress=lambda d, t: bar.update(bar.task_ids[0], completed=d,
                                                               total=t)))
    if json_out:
        print(json.dumps(doc))
        return
    _print_replay(doc)


def _print_replay(doc: dict[str, Any]) -> None:
    dig = doc["digests"]
    out.print(f"[bold]{doc['deployment']}[/]: replayed {doc['model']} on {doc['range']}: "
              f"{doc['scored_now']} requests scored now ({doc['rows_now']} rows, "
              f"{doc['errors_now']} errors), {doc['already_scored']} already scored; digests "
              f"matched {dig['matched']} of {dig['checked']}; {_fmt(doc['rows_per_s'])} rows/s")
    pair = doc["against_champion"]
    out.print(f"against the champion ({', '.join(doc['champions']) or 'none recorded'}) on "
              f"{pair['requests']} requests: agreement {_fmt(pair.get('agreement'))} "
              f"{_fmt(pair.get('agreement_ci'))}, score diff p5/p50/p95 "
              f"{_fmt([(pair.get('diff') or {}).get(k) for k in ('p5', 'p50', 'p95')])}, "
              f"spearman {_fmt(pair.get('spearman'))}")
    if doc["labels"]:
        table = Table("model", "labels", "accuracy", "95% CI", "log loss", "AUC", "MAE", "RMSE",
                      title=f"against {doc['labelled_requests']} labelled requests")
        for name, s in doc["labels"].items():
            table.add_row(name, str(s["labels"]), _fmt(s.get("accuracy")),
                          _fmt(s.get("accuracy_ci")), _fmt(s.get("log_loss")),
                          _fmt(s.get("auc")), _fmt(s.get("mae")), _fmt(s.get("rmse")))
        out.print(table)
    lat = Table("batch up to", "calls", "rows", "ms p50", "ms p95", "rows/s",
                title=f"{doc['model']} latency per batch size")
    for b in doc["latency_by_batch"]:
        lat.add_row(str(b["batch_up_to"]), str(b["calls"]), str(b["rows"]), _fmt(b["ms_p50"]),
                    _fmt(b["ms_p95"]), _fmt(b["rows_per_s"]))
    if doc["latency_by_batch"]:
        out.print(lat)
    out.print(f"scores written under {doc['output']}")


def _traffic(root: Path, deployment: str, url: str, span: Any, speed: float,
             limit: int | None, json_out: bool, registry: str | None) -> None:
    from rendezvous.analysis.traffic import drive

    with _bar(f"sending to {url}", not json_out) as bar:
        doc = asyncio.run(drive(root, deployment, url, span=span, speed=speed, limit=limit,
                                registry_url=registry,
                                progress=lambda n: bar.update(bar.task_ids[0], completed=n)))
    if json_out:
        print(json.dumps(doc))
        return
    lat = doc["latency_ms"]
    out.print(f"[bold]{deployment}[/]: sent {doc['sent']} archived requests to {url} in "
              f"{doc['seconds']:.1f} s (recorded over {doc['recorded_seconds']:.1f} s, speed "
              f"{doc['speed']:g}); statuses {doc['statuses']}; latency ms p50 {lat['p50']} "
              f"p90 {lat['p90']} p99 {lat['p99']} max {lat['p100']}")


@app.command()
def whatif(
    deployment: str,
    policy: Annotated[Path, typer.Option("--policy", help="TOML policy to evaluate (the "
                                                          "format of `deploy apply`)")],
    start: From = None,
    end: Annotated[str | None, typer.Option("--to", help="End of the range (same forms as "
                                                         "--from) [default: now]")] = None,
    json_out: JsonOut = False, home: Home = None, registry: RegistryUrl = None,
    archive: ArchiveUrl = None,
) -> None:
    """What a policy would have answered for the recorded requests of a range, beside what
    the actual policy did: answer share per model, reasons, SLA misses, response times and
    accuracy on labelled requests."""
    from rendezvous.analysis.whatif import whatif as run
    from rendezvous.deploy import load_spec

    use_archive(archive)
    name, pol = load_spec(policy)
    if name != deployment:
        raise ConfigError(f"{policy} is a policy of deployment {name!r}, not {deployment!r}; "
                          "evaluate it on its own deployment or change its name")
    flags = " ".join(f for f in (f"--from {start}" if start else "",
                                 f"--to {end}" if end else "") if f)
    doc = asyncio.run(run(config.home(home), deployment, pol, span=_span(start, end),
                          registry_url=registry, range_flags=flags))
    if json_out:
        print(json.dumps(doc))
        return
    _print_whatif(doc)


def _print_whatif(doc: dict[str, Any]) -> None:
    a, n = doc["actual"], doc["new"]
    rep = doc["reproduced"]
    table = Table("", "actual", "new policy",
                  title=f"{doc['deployment']}: {doc['requests']} requests, {doc['range']}")
    for model in sorted(set(a["share"]) | set(n["share"])):
        table.add_row(f"share {model}", _fmt(a["share"].get(model, 0.0)),
                      _fmt(n["share"].get(model, 0.0)))
    for reason in sorted(set(a["reasons"]) | set(n["reasons"])):
        table.add_row(f"reason {reason}", str(a["reasons"].get(reason, 0)),
                      str(n["reasons"].get(reason, 0)))
    table.add_row("SLA-miss rate", _fmt(a["sla_miss_rate"]), _fmt(n["sla_miss_rate"]))
    for q in ("p50", "p90", "p99"):
        table.add_row(f"response ms {q}", _fmt(a["response_ms"][q]), _fmt(n["response_ms"][q]))
    for key in ("labels", "accuracy", "accuracy_ci", "log_loss", "auc", "mae", "rmse"):
        if key in a["labels"] or key in n["labels"]:
            table.add_row(key, _fmt(a["labels"].get(key)), _fmt(n["labels"].get(key)))
    out.print(table)
    out.print(f"{doc['changed_answers']} answers change; the record reproduces "
              f"{rep['matched']} of {rep['of']} actual decisions ({rep['exact_record']} "
              "with exact filing times). Response times: actual as served; new policy on an "
              "ideal server (timers on time)")
