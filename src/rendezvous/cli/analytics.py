"""`rendezvous compare|drift|alarms|feedback DEP`, and the analytics columns of `status`.

Each asks the running server (its monitor's port in NATS mode) when there is one, and
otherwise rebuilds the analytics from the deployment's streams and archive.
"""

from __future__ import annotations

import asyncio
import csv
import json
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from rendezvous import config
from rendezvous.cli.common import Home, app, open_registry, out
from rendezvous.errors import ConfigError, RendezvousError, UnavailableError

Streams = Annotated[str, typer.Option(help="Where the streams are when no server runs: "
                                           "embedded (under --home) or nats://HOST:PORT")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the JSON document")]
FEEDBACK_CHUNK = 5000


def _server_url(home: Path, deployment: str) -> str | None:
    from rendezvous.hosting.serving import monitor_run_file, read_run_file

    try:
        info = json.loads(monitor_run_file(home, deployment).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        info = read_run_file(home, deployment)
    return None if info is None else str(info["url"])


def document(deployment: str, kind: str, *, home: Path | None,
             streams: str = "embedded") -> dict[str, Any]:
    """One analytics document (compare, drift, accuracy, alarms) of DEPLOYMENT: from the
    running server when it answers, else rebuilt from the streams."""
    root = config.home(home)
    url = _server_url(root, deployment)
    if url is not None:
        try:
            r = httpx.get(f"{url}/v1/deployments/{deployment}/{kind}", timeout=30)
            if r.status_code == 200:
                doc: dict[str, Any] = r.json()
                return doc
        except httpx.HTTPError:
            pass  # not running any more: read the streams instead
    from rendezvous.roles.monitor import analytics_from_log

    with open_registry(home) as reg:
        a = asyncio.run(analytics_from_log(root, deployment, reg, streams=streams))
    return {"compare": a.compare, "drift": a.drift, "accuracy": a.accuracy,
            "alarms": a.alarms_doc}[kind]()


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


@app.command()
def compare(deployment: str, json_out: JsonOut = False, streams: Streams = "embedded",
            home: Home = None) -> None:
    """Every model against the champion on the same requests: agreement, score differences,
    rank correlation."""
    doc = document(deployment, "compare", home=home, streams=streams)
    if json_out:
        print(json.dumps({k: v for k, v in doc.items() if k != "windows"}))
        return
    table = Table("model", "requests", "rows", "errors", "agreement", "95% CI", "diff p5",
                  "diff p50", "diff p95", "mean |diff|", "spearman",
                  title=f"{deployment}: against champion {doc['champion']}")
    for model, s in doc["models"].items():
        diff = s.get("diff") or {}
        ci = s.get("agreement_ci")
        table.add_row(model, str(s["requests"]), str(s["rows"]), str(s["errors"]),
                      _fmt(s["agreement"]), f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "-",
                      _fmt(diff.get("p5")), _fmt(diff.get("p50")), _fmt(diff.get("p95")),
                      _fmt(s.get("mean_abs_diff")), _fmt(s.get("spearman")))
    out.print(table if doc["models"] else f"{deployment}: no paired scores yet")


@app.command()
def drift(deployment: str, json_out: JsonOut = False, streams: Streams = "embedded",
          home: Home = None) -> None:
    """Canary score drift and input column drift against the training reference."""
    doc = document(deployment, "drift", home=home, streams=streams)
    if json_out:
        print(json.dumps({k: v for k, v in doc.items() if k != "windows"}))
        return
    out.print(f"[bold]{deployment}[/]: designed false alarms "
              f"{doc['designed_false_alarms_per_million_rows']:g} per million rows")
    table = Table("detector", "column", "test", "rows", "effect", "p-value", "alpha",
                  "drifted")
    for kind in ("canary_drift", "column_drift"):
        det = doc.get(kind)
        if det is None:
            table.add_row(kind, "-", "no reference", "-", "-", "-", "-", "-")
            continue
        last = det.get("last")
        if last is None:
            table.add_row(kind, "-", f"{det['rows_seen']} rows, no block closed yet",
                          "-", "-", "-", "-", "-")
            continue
        for col, t in last["columns"].items():
            table.add_row(kind, col, t["test"], str(t["rows"]), _fmt(t["effect"]),
                          f"{t['p_value']:.2e}", f"{last['alpha']:.1e}",
                          "[red]yes[/]" if t["drifted"] else "no")
    out.print(table)


@app.command()
def alarms(deployment: str, json_out: JsonOut = False, streams: Streams = "embedded",
           home: Home = None) -> None:
    """Alarm states (ok, firing, resolved) with since and evidence."""
    doc = document(deployment, "alarms", home=home, streams=streams)
    if json_out:
        print(json.dumps(doc))
        return
    table = Table("alarm", "state", "since", "fired", "evidence")
    for a in doc["alarms"]:
        style = {"firing": "red", "resolved": "green"}.get(a["state"], "dim")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a["since_ns"] / 1e9))
        table.add_row(a["name"], f"[{style}]{a['state']}[/]", since, str(a["fired"]),
                      json.dumps(a["evidence"])[:100])
    out.print(table if doc["alarms"] else f"{deployment}: no alarm checked yet")


def read_labels(path: Path) -> list[dict[str, Any]]:
    """``request_id,label`` rows from a CSV, JSON Lines or Parquet file."""
    suffix = path.suffix.lower()
    if not path.exists():
        raise ConfigError(f"feedback file {path} does not exist")
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    elif suffix in (".jsonl", ".ndjson", ".json"):
        rows = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{path}:{i} is not JSON: {exc}") from None
    elif suffix in (".csv", ".tsv"):
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        for row in rows:  # CSV has no types: numbers become numbers again
            for cast in (int, float):
                try:
                    row["label"] = cast(row.get("label") or "")
                    break
                except (TypeError, ValueError):
                    continue
    else:
        raise ConfigError(f"{path}: use a .csv, .jsonl or .parquet file of request_id,label")
    if rows and not {"request_id", "label"} <= set(rows[0]):
        raise ConfigError(f"{path} has columns {sorted(rows[0])}; it needs request_id and label")
    return [{"request_id": r.get("request_id"), "label": r.get("label")} for r in rows]


def send_labels(deployment: str, rows: list[dict[str, Any]], *,
                home: Path | None) -> dict[str, int]:
    """Send labels to the running server, or append them to the deployment's feedback
    stream when none runs (the monitor joins them when it next runs)."""
    from rendezvous.http.analytics import parse_feedback

    root = config.home(home)
    url = _server_url(root, deployment)
    totals = {"accepted": 0, "rejected": 0, "duplicates": 0}
    chunks = [rows[i:i + FEEDBACK_CHUNK] for i in range(0, len(rows), FEEDBACK_CHUNK)]
    for chunk in chunks:
        body = json.dumps({"feedback": chunk}).encode()
        if url is not None:
            try:
                r = httpx.post(f"{url}/v1/deployments/{deployment}/feedback", content=body,
                               headers={"content-type": "application/json"}, timeout=60)
            except httpx.HTTPError as exc:
                raise UnavailableError(f"the server at {url} did not answer ({exc}); retry, "
                                       "or stop it and send the labels offline") from exc
            if r.status_code not in (202, 422):
                raise RendezvousError(f"the server refused the labels: {r.text}")
            answer: dict[str, Any] = r.json() if r.status_code == 202 else {
                "accepted": 0, "rejected": chunk, "duplicates": 0}
        else:
            accepted, rejected, dup = parse_feedback(body, deployment, time.time_ns())
            asyncio.run(_append(root, deployment, accepted))
            answer = {"accepted": len(accepted), "rejected": rejected, "duplicates": dup}
        totals["accepted"] += answer["accepted"]
        totals["rejected"] += len(answer["rejected"])
        totals["duplicates"] += answer["duplicates"]
    return totals


async def _append(home: Path, deployment: str, labels: list[Any]) -> None:
    from rendezvous.core import messages
    from rendezvous.streams.base import open_stream

    if not labels:
        return
    with open_registry(home) as reg:
        reg.policy(deployment)  # an unknown deployment fails here, naming the known ones
    stream = await open_stream("embedded", home=home)
    try:
        topic = messages.topic(deployment, "feedback")
        await stream.ensure_topic(topic)
        await stream.append(topic, [messages.encode(f) for f in labels],
                            [f"fb-{f.request_id}" for f in labels])
    finally:
        await stream.close()


@app.command()
def feedback(deployment: str,
             file: Annotated[Path, typer.Argument(help="CSV, JSONL or Parquet with columns "
                                                        "request_id,label")],
             home: Home = None) -> None:
    """Send ground-truth labels for past requests; they are joined with every model's score."""
    totals = send_labels(deployment, read_labels(file), home=home)
    out.print(f"{deployment}: {totals['accepted']} labels accepted, {totals['rejected']} "
              f"rejected, {totals['duplicates']} duplicates in the file; `rendezvous status` "
              "shows accuracy, and how many labels named unknown or already labelled "
              "requests")
