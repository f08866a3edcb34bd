"""Meta-analytics: consumes a deployment's results and keeps live statistics."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgspec

from rendezvous.core import messages
from rendezvous.core.stats import DeploymentStats
from rendezvous.streams.base import Stream, open_stream, partitions

log = logging.getLogger(__name__)

__all__ = ["DeploymentStats", "Monitor", "stats_from_log"]

GROUP = "monitor"


class Monitor:
    """Keeps ``DeploymentStats`` current from the results stream."""

    def __init__(self, stream: Stream, deployment: str) -> None:
        self.stream = stream
        self.deployment = deployment
        self.stats = DeploymentStats(deployment)
        self._consumer: Any = None

    async def run(self) -> None:
        self._consumer = self.stream.consume(messages.topic(self.deployment, "results"), GROUP,
                                             start="latest", max_batch=2048)
        async for batch in self._consumer:
            for rec in batch.records:
                try:
                    self.stats.add(messages.result_summary_decoder.decode(rec.data))
                except msgspec.DecodeError:
                    log.error("monitor %s: undecodable result %s", self.deployment, rec.offset)
            await batch.ack()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.close()


async def stats_from_log(home: Path, deployment: str, *, streams: str = "embedded",
                         since_ns: int | None = None) -> DeploymentStats:
    """Statistics over every recorded result of a deployment (or those since ``since_ns``),
    read straight from the results stream; works whether or not a server is running. With
    the embedded engine, the logs of every partition (``serve --processes N``) are merged."""

    stats = DeploymentStats(deployment)
    urls = partitions(streams, home=home)
    topic = messages.topic(deployment, "results")
    for url in urls:
        stream = await open_stream(url, home=home, read_only=True)
        try:
            records = await stream.read(topic, from_time_ns=since_ns, limit=50_000) \
                if since_ns else await stream.read(topic, from_offset=1, limit=50_000)
            while records:
                for rec in records:
                    stats.add(messages.result_summary_decoder.decode(rec.data))
                records = await stream.read(topic, from_offset=records[-1].offset + 1,
                                            limit=50_000)
        finally:
            await stream.close()
    return stats
