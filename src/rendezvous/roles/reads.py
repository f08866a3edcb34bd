"""What the monitor role reads, in which groups, and how results are counted.

Apart from ``roles.monitor`` and ``roles.scorekeeper`` so that a serving process, which reads
these topics only to count results and relay every record to its analytics host
(``hosting.analytics_host``), does not load the statistics libraries (SciPy) the analytics
need: they live in the analytics host.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import msgspec

from rendezvous import config
from rendezvous.core import messages
from rendezvous.core.messages import ResultSummary
from rendezvous.core.stats import DeploymentStats
from rendezvous.streams.base import Record

__all__ = ["GROUP", "READ_PAUSE_S", "SCOREKEEPER_GROUP", "SCOREKEEPER_TOPICS", "TOPICS",
           "count_results", "groups"]

log = logging.getLogger(__name__)

GROUP = "monitor"
TOPICS = ("results", "scores", "input", "feedback")  # what the monitor reads, in its group
SCOREKEEPER_GROUP = "scorekeeper"
SCOREKEEPER_TOPICS = ("scores", "results", "feedback")  # what it archives, in its group
# The least time between two deliveries of a topic the monitor (or the scorekeeper beside it)
# takes: read as soon as records come, each delivery would hold one or two of them, and a
# delivery's cost (wake-up, handler call, acknowledgement committed to the stream) is mostly
# per delivery, not per record. The documents lag by as much at most.
READ_PAUSE_S = 0.05


def groups(deployment: str) -> list[tuple[str, str]]:
    """The (topic, group) pairs the monitor role reads: its own, and the scorekeeper's that
    runs beside it, unless analytics are off (``RENDEZVOUS_ANALYTICS=0``).

    >>> groups("d")[:2]
    [('d.results', 'monitor'), ('d.scores', 'monitor')]
    """
    topic = messages.topic
    if not config.ANALYTICS.get():
        return [(topic(deployment, "results"), GROUP)]
    return ([(topic(deployment, t), GROUP) for t in TOPICS]
            + [(topic(deployment, t), SCOREKEEPER_GROUP) for t in SCOREKEEPER_TOPICS])


def count_results(stats: DeploymentStats, records: Sequence[Record]) -> list[ResultSummary]:
    """Count result records in ``stats``; returns them decoded (undecodable ones are logged
    and skipped)."""
    results = []
    for rec in records:
        try:
            result = messages.result_summary_decoder.decode(rec.data)
        except msgspec.DecodeError:
            log.error("monitor %s: undecodable result %s", stats.deployment, rec.offset)
            continue
        stats.add(result)
        results.append(result)
    return results
