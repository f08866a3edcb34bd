"""HTTP handlers of meta-analytics: feedback in; compare, drift, accuracy, alarms, windows and
the dashboard out. Shared by the serving proxy (``http.app``) and the monitor's own app
(``http.monitor_app``), each adding one route line per endpoint.

- ``POST /v1/deployments/{d}/feedback``: one ``{"request_id", "label"}`` (or ``"labels"``, one
  per row) or ``{"feedback": [...]}``; answers 202 with what was accepted and why the rest was
  not. Labels are appended to ``<d>.feedback`` (message id = request id, so a resent label is
  dropped by the engine) and joined by the monitor.
- ``GET /v1/deployments/{d}/compare|drift|accuracy|alarms|windows``: JSON documents.
- ``GET /dashboard`` and ``/dashboard/{asset}``: the static page and its vendored library.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

import msgspec

from rendezvous.core import messages
from rendezvous.core.messages import Feedback
from rendezvous.errors import (
    BadRequestError,
    NotFoundError,
    StreamError,
    UnavailableError,
    ValidationError,
)
from rendezvous.hosting.analytics_protocol import DOCUMENTS

if TYPE_CHECKING:
    from rendezvous.hosting.analytics_host import AnalyticsHost
    from rendezvous.hosting.runtime import Server

__all__ = ["DOCUMENTS", "AnalyticsHandlers", "parse_feedback"]

MAX_FEEDBACK = 10_000  # labels per request body
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_JSON = [(b"content-type", b"application/json")]
_ASSETS = {"uPlot.iife.min.js": "text/javascript", "uPlot.min.css": "text/css",
           "dashboard.js": "text/javascript", "uPlot.LICENSE": "text/plain"}
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder()


def parse_feedback(body: bytes, deployment: str,
                   now_ns: int) -> tuple[list[Feedback], list[dict[str, Any]], int]:
    """(labels to append, rejected items with the reason, duplicates within the body).

    >>> fb, bad, dup = parse_feedback(b'{"feedback": [{"request_id": "a", "label": 1},'
    ...     b'{"request_id": "a", "label": 0}, {"label": 2}]}', "d", 0)
    >>> [f.labels for f in fb], bad[0]["index"], dup
    ([[1]], 2, 1)
    """
    try:
        doc = _decode.decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequestError(f"malformed JSON: {exc}") from None
    if isinstance(doc, dict) and "feedback" in doc:
        items = doc["feedback"]
        if not isinstance(items, list):
            raise BadRequestError('"feedback" must be a list of {"request_id", "label"} objects')
    elif isinstance(doc, dict):
        items = [doc]
    else:
        raise BadRequestError('send {"request_id": ID, "label": VALUE} or {"feedback": '
                              '[{"request_id": ID, "label": VALUE}, ...]}')
    if len(items) > MAX_FEEDBACK:
        raise BadRequestError(f"{len(items)} labels in one body; send at most {MAX_FEEDBACK}")
    accepted: list[Feedback] = []
    rejected: list[dict[str, Any]] = []
    seen: set[str] = set()
    duplicates = 0
    for i, item in enumerate(items):
        problem = _check_item(item)
        if problem:
            rejected.append({"index": i, "error": problem})
            continue
        rid = item["request_id"]
        if rid in seen:
            duplicates += 1
            continue
        seen.add(rid)
        labels = item["labels"] if "labels" in item else [item["label"]]
        accepted.append(Feedback(request_id=rid, deployment=deployment, labels=labels,
                                 at_ns=now_ns))
    return accepted, rejected, duplicates


def _scalar(v: Any) -> bool:
    return isinstance(v, str | int | float | bool) and v == v  # NaN is not a label


def _check_item(item: Any) -> str:
    if not isinstance(item, dict):
        return 'not an object; use {"request_id": ID, "label": VALUE}'
    rid = item.get("request_id")
    if not isinstance(rid, str) or not _ID.match(rid):
        return (f"request_id {str(rid)[:80]!r} is missing or invalid; use the id the "
                "prediction answered with (x-request-id)")
    if "labels" in item:
        labels = item["labels"]
        if not isinstance(labels, list) or not labels or not all(map(_scalar, labels)):
            return '"labels" must be a non-empty list of numbers, strings or booleans'
    elif "label" not in item or not _scalar(item["label"]):
        return 'needs "label": a number, string or boolean'
    return ""


class AnalyticsHandlers:
    """The analytics endpoints over a ``Server``; ``reply(status, body, headers)`` builds the
    app's reply object."""

    def __init__(self, server: Server, reply: Callable[[int, bytes, list[Any]], Any]) -> None:
        self.server = server
        self.reply = reply

    def analytics(self, name: str) -> AnalyticsHost:
        rt = self.server.runtimes.get(name)
        if rt is None:
            known = ", ".join(sorted(self.server.runtimes)) or "none"
            raise NotFoundError("deployment", name, f"this server serves: {known}")
        if rt.monitor is None:
            raise NotFoundError(
                "monitor of deployment", name,
                f"this process runs only {self.server.roles.label}; ask the `serve --role "
                f"monitor` process on its --port")
        if not rt.monitor.analytics:
            raise NotFoundError("analytics of deployment", name,
                                "the monitor runs with analytics off")
        return rt.monitor

    async def gate_documents(self, name: str) -> dict[str, Any]:
        """The documents the promotion gates read (``compare``, ``accuracy``, ``windows``):
        from this process's monitor, or from the ``serve --role monitor`` process that
        advertised itself under the data directory."""
        rt = self.server.runtimes.get(name)
        if rt is not None and rt.monitor is not None and rt.monitor.analytics:
            host = rt.monitor
            docs = {kind: _decode.decode(await host.ask(kind))
                    for kind in ("compare", "accuracy", "windows")}
            docs["windows"] = docs["windows"]["windows"]
            return docs
        import json

        import httpx

        from rendezvous.hosting.serving import monitor_run_file

        try:
            url = json.loads(monitor_run_file(self.server.home, name).read_text())["url"]
            async with httpx.AsyncClient(timeout=30) as client:
                docs = {}
                for kind in ("compare", "accuracy", "windows"):
                    r = await client.get(f"{url}/v1/deployments/{name}/{kind}")
                    r.raise_for_status()
                    docs[kind] = r.json()
        except (OSError, KeyError, ValueError, httpx.HTTPError) as exc:
            raise UnavailableError(
                f"deployment {name!r}: cannot read the monitor's analytics for the promotion "
                f"gates ({exc}); start the monitor role, or promote with force") from None
        docs["windows"] = docs["windows"].get("windows", [])
        return docs

    async def document(self, name: str, kind: str) -> bytes:
        return await self.analytics(name).ask(kind)

    async def get(self, params: dict[str, str], *_: Any) -> Any:
        return self.reply(200, await self.document(params["d"], params["doc"]), list(_JSON))

    async def feedback(self, params: dict[str, str], body: bytes, *_: Any) -> Any:
        name = params["d"]
        rt = self.server.runtimes.get(name)
        if rt is None:
            known = ", ".join(sorted(self.server.runtimes)) or "none"
            raise NotFoundError("deployment", name, f"this server serves: {known}")
        accepted, rejected, duplicates = parse_feedback(body, name, time.time_ns())
        if not accepted and rejected:
            raise ValidationError("no label accepted",
                                  [f"[{r['index']}] {r['error']}" for r in rejected[:20]])
        if accepted:
            try:
                await rt.stream.append(messages.topic(name, "feedback"),
                                       [messages.encode(f) for f in accepted],
                                       [f"fb-{f.request_id}" for f in accepted])
            except (StreamError, UnavailableError) as exc:
                raise UnavailableError(f"the feedback stream is unavailable ({exc}); nothing "
                                       "was recorded, send the labels again") from exc
        return self.reply(202, _encode({"accepted": len(accepted), "rejected": rejected,
                                        "duplicates": duplicates}), list(_JSON))

    async def answer_get(self, path: str) -> tuple[int, bytes, list[Any]] | None:
        """A GET ``path`` answered (for the monitor's app), None when it is not an analytics
        path."""
        for method, pattern, name in ROUTES:
            match = re.fullmatch(pattern, path)
            if method == "GET" and match is not None:
                if name == "dashboard":
                    status, body, ctype = dashboard_asset(match.groupdict().get("asset"))
                    return status, body, [(b"content-type", ctype.encode())]
                return 200, await self.document(match["d"], match["doc"]), list(_JSON)
        return None

    async def dashboard(self, params: dict[str, str], *_: Any) -> Any:
        status, body, ctype = dashboard_asset(params.get("asset"))
        return self.reply(status, body, [(b"content-type", ctype.encode()),
                                         (b"cache-control", b"no-cache")])


def dashboard_asset(asset: str | None) -> tuple[int, bytes, str]:
    """(status, body, content type) of the dashboard page or one of its files."""
    name = asset or "index.html"
    ctype = "text/html; charset=utf-8" if name == "index.html" else _ASSETS.get(name)
    if ctype is None:
        raise NotFoundError("dashboard file", name, f"known: {', '.join(sorted(_ASSETS))}")
    return 200, resources.files("rendezvous").joinpath("dashboard", name).read_bytes(), ctype


# (method, full-match path pattern, handler name); one route per document, as /openapi.json
# lists them.
ROUTES: list[tuple[str, str, str]] = [
    *(("GET", rf"/v1/deployments/(?P<d>[^/]+)/(?P<doc>{doc})", "get") for doc in DOCUMENTS),
    ("POST", r"/v1/deployments/(?P<d>[^/]+)/feedback", "feedback"),
    ("GET", r"/dashboard", "dashboard"),
    ("GET", r"/dashboard/(?P<asset>[A-Za-z0-9_.-]+)", "dashboard"),
]


class AnalyticsCollector:
    """Prometheus gauges of every deployment's analytics, as their analytics hosts last
    answered ``refresh`` (the scrape handler refreshes them first)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.latest: dict[str, dict[str, Any]] = {}

    async def refresh(self) -> None:
        """Ask every deployment's analytics host for its gauges; one that cannot answer
        (starting, restarting) shows none this time."""
        latest = {}
        for name, rt in self.server.runtimes.items():
            if rt.monitor is not None and rt.monitor.analytics:
                with contextlib.suppress(UnavailableError):
                    latest[name] = await rt.monitor.gauges()
        self.latest = latest

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        firing = GaugeMetricFamily("rendezvous_alarm_firing", "1 while the alarm fires",
                                   labels=["deployment", "alarm"])
        agreement = GaugeMetricFamily("rendezvous_agreement",
                                      "Share of rows where the model agrees with the champion",
                                      labels=["deployment", "model"])
        quality = GaugeMetricFamily("rendezvous_live_quality",
                                    "Live accuracy, AUC, log loss, MAE or RMSE from feedback",
                                    labels=["deployment", "model", "metric"])
        drift = GaugeMetricFamily("rendezvous_drift_effect",
                                  "KS or total-variation distance at the last drift check",
                                  labels=["deployment", "detector", "column"])
        labels = GaugeMetricFamily("rendezvous_feedback_labels", "Feedback labels by outcome",
                                   labels=["deployment", "outcome"])
        for name, g in self.latest.items():
            for alarm, state in g["alarms"].items():
                firing.add_metric([name, alarm], float(state == "firing"))
            for model, share in g["agreement"].items():
                agreement.add_metric([name, model], share)
            for model, q in g["quality"].items():
                for metric, v in q.items():
                    if metric in ("accuracy", "auc", "log_loss", "mae", "rmse") and v is not None:
                        quality.add_metric([name, model, metric], v)
            for kind, columns in g["drift"].items():
                for col, effect in columns.items():
                    drift.add_metric([name, kind, col], effect)
            for outcome, n in g["feedback"].items():
                labels.add_metric([name, outcome], n)
        yield from (firing, agreement, quality, drift, labels)
