"""Model states across processes: worker processes on a shared engine report the states of
their model hosts on the deployment's control topic; proxies and the monitor follow them, so
``status``, ``/v2/models/{d}`` and ``/metrics`` show every model wherever it runs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

from rendezvous.core import messages
from rendezvous.core.messages import Control, ControlKind
from rendezvous.errors import RendezvousError
from rendezvous.hosting.protocol import HostState
from rendezvous.streams.base import Stream

__all__ = ["HostReports", "follow_hosts", "report_hosts"]

log = logging.getLogger(__name__)

HOSTS_CHECK_S = 0.5  # how often model states are checked for changes / reports read
HOSTS_REPORT_S = 5.0  # a worker process reports its model states at least this often
HOSTS_FORGET_S = 15.0  # a process that stopped reporting is forgotten after this
HOSTS_BACKLOG = 200  # control records read back at start for the latest reports


class HostReports:
    """Model states reported by worker processes, merged per model: ``ready`` while any of a
    model's processes is ready, restarts summed. A process silent for ``HOSTS_FORGET_S`` is
    forgotten (stopped or gone)."""

    def __init__(self) -> None:
        self._by_process: dict[str, tuple[float, dict[str, dict[str, Any]]]] = {}

    def add(self, body: dict[str, Any], at: float) -> None:
        process, models = body.get("process"), body.get("models")
        if isinstance(process, str) and isinstance(models, dict):
            self._by_process[process] = (at, models)

    def merged(self, now: float) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for process, (at, models) in list(self._by_process.items()):
            if now - at > HOSTS_FORGET_S:
                del self._by_process[process]
                continue
            for model, info in models.items():
                have = out.get(model)
                if have is None:
                    out[model] = {**info, "processes": 1}
                    continue
                best = info if info.get("state") == HostState.READY.value else have
                out[model] = {**best, "restarts": have["restarts"] + info.get("restarts", 0),
                              "processes": have["processes"] + 1}
        return out


async def report_hosts(stream: Stream, deployment: str, process: str,
                       states: Callable[[], dict[str, dict[str, Any]]]) -> None:
    """Append this process's model states to the control topic on every change, and at
    least every ``HOSTS_REPORT_S`` (a heartbeat: reports that stop mean a gone process)."""
    topic = messages.topic(deployment, "control")
    last: dict[str, Any] = {}
    sent_at = 0.0
    while True:
        await asyncio.sleep(HOSTS_CHECK_S)
        current = states()
        changed = {m: (s["state"], s["restarts"]) for m, s in current.items()} != last
        if not changed and time.monotonic() - sent_at < HOSTS_REPORT_S:
            continue
        ctl = Control(deployment=deployment, kind=ControlKind.HOSTS, policy_version=0,
                      body={"process": process, "models": current})
        try:
            await stream.append(topic, [messages.encode(ctl)])
        except RendezvousError as exc:
            log.debug("%s: cannot report model states (%s); retrying", deployment, exc)
            continue
        last = {m: (s["state"], s["restarts"]) for m, s in current.items()}
        sent_at = time.monotonic()


async def follow_hosts(stream: Stream, deployment: str, reports: HostReports) -> None:
    """Keep the model states worker processes report (see ``report_hosts``)."""
    topic = messages.topic(deployment, "control")
    try:
        # Start a little before the end: the latest heartbeat of every process is there.
        cursor = max(0, await stream.last_offset(topic) - HOSTS_BACKLOG)
    except RendezvousError:
        cursor = 0
    while True:
        try:
            records = await stream.read(topic, from_offset=cursor + 1, limit=500)
        except RendezvousError as exc:
            log.debug("%s: cannot read model states (%s); retrying", deployment, exc)
            records = []
        for rec in records:
            cursor = rec.offset
            try:
                ctl = messages.control_decoder.decode(rec.data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if ctl.kind is ControlKind.HOSTS:
                reports.add(ctl.body, time.monotonic())
        if not records:
            await asyncio.sleep(HOSTS_CHECK_S)
