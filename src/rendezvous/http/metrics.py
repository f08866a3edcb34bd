"""Prometheus metrics for one server, in its own registry (no module-level global state)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from rendezvous.core.messages import Result
from rendezvous.http.analytics import AnalyticsCollector

if TYPE_CHECKING:
    from rendezvous.hosting.runtime import DeploymentRuntime, Server

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _MonitorCollector:
    """Exposes each deployment's monitor statistics at scrape time."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        status = CounterMetricFamily("rendezvous_model_scores",
                                     "Scores per model by status", labels=["deployment", "model",
                                                                          "status"])
        chosen = CounterMetricFamily("rendezvous_model_chosen",
                                     "Times each model's answer was returned",
                                     labels=["deployment", "model"])
        latency = GaugeMetricFamily("rendezvous_model_latency_ms",
                                    "Model latency quantiles from received to scored",
                                    labels=["deployment", "model", "quantile"])
        policy = GaugeMetricFamily("rendezvous_policy_version", "Current policy version",
                                   labels=["deployment"])
        up = GaugeMetricFamily("rendezvous_model_up",
                               "1 while a model's host is ready to score, else 0",
                               labels=["deployment", "model", "state"])
        restarts = CounterMetricFamily("rendezvous_model_restarts",
                                       "Times a model's host was restarted (exit, crash, memory "
                                       "or predict-time limit)", labels=["deployment", "model"])
        for name, rt in self.server.runtimes.items():
            policy.add_metric([name], rt.policy_version)
            for model, host in rt.model_states().items():
                up.add_metric([name, model, host["state"]], host["state"] == "ready")
                restarts.add_metric([name, model], host["restarts"])
            if rt.monitor is None:
                continue
            for model, ms in rt.monitor.stats.models.items():
                d = ms.to_dict()
                for s in ("on_time", "late", "missing", "error"):
                    status.add_metric([name, model, s], d[s])
                chosen.add_metric([name, model], ms.chosen)
                for q, v in d["latency_ms"].items():
                    if v is not None:
                        latency.add_metric([name, model, q], v)
        yield from (status, chosen, latency, policy, up, restarts)


def backlog(server: Server, rt: DeploymentRuntime) -> dict[str, Any]:
    """Writes that failed and are being retried: the engine's, the decoy's, the results'."""
    stream = getattr(server, "stream", None)
    health = stream.health() if stream is not None else None
    return {
        "stream_writable": health.writable if health else False,
        "stream_backlog": health.backlog if health else 0,
        "stream_error": health.error if health else "",
        "decoy_rows": rt.decoy.backlog if rt.decoy is not None else 0,
        "results": rt.rendezvous.backlog if rt.rendezvous is not None else 0,
    }



class _BacklogCollector:
    """Writes that failed and are being retried, and whether the log can be written."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pending = GaugeMetricFamily("rendezvous_write_backlog",
                                    "Writes that failed and are being retried, by kind",
                                    labels=["deployment", "kind"])
        writable = GaugeMetricFamily("rendezvous_stream_writable",
                                     "1 while the stream log can be written, else 0")
        ok = True
        for name, rt in self.server.runtimes.items():
            b = backlog(self.server, rt)
            ok = ok and b["stream_writable"]
            for kind in ("stream_backlog", "decoy_rows", "results"):
                pending.add_metric([name, kind], b[kind])
        writable.add_metric([], 1.0 if ok else 0.0)
        yield from (pending, writable)


class ProxyMetrics:
    def __init__(self, server: Server) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.responses = Counter("rendezvous_responses", "Answered requests by reason",
                                 ["deployment", "reason"], registry=self.registry)
        self.latency = Histogram("rendezvous_response_seconds",
                                 "Time from arrival to answer", ["deployment"],
                                 buckets=BUCKETS, registry=self.registry)
        self.registry.register(_MonitorCollector(server))
        self.registry.register(_BacklogCollector(server))
        self.analytics = AnalyticsCollector(server)  # alarms, agreement, accuracy, drift
        self.registry.register(self.analytics)
        self._counters: dict[tuple[str, str], Any] = {}
        self._histograms: dict[str, Any] = {}

    def observe(self, deployment: str, result: Result) -> None:
        # Label lookups are the costly part of an update; keep the children once made.
        key = (deployment, result.reason.value)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.responses.labels(*key)
        counter.inc()
        if result.responded_ns and result.received_ns:
            hist = self._histograms.get(deployment)
            if hist is None:
                hist = self._histograms[deployment] = self.latency.labels(deployment)
            hist.observe((result.responded_ns - result.received_ns) / 1e9)

    async def render(self) -> tuple[bytes, str]:
        await self.analytics.refresh()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
