"""``isolation = "thread"``: a model loaded into the serving process, computing on its own thread.

The opt-in for trusted, light models: no hop between processes, but the model shares the
serving process. One that holds the GIL while it computes slows the proxy and the rendezvous
server; one that hangs cannot be killed (its worker stops scoring); one that crashes the
interpreter takes every role of the process with it. ``ThreadHost`` reports the same states as
a ``ModelHost`` (a load failure is ``failed`` with its reason, never a crash of the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from rendezvous.hosting.protocol import HostState
from rendezvous.registry import Registry
from rendezvous.roles.scoring import BatchScorer, DecodedRequests
from rendezvous.roles.worker import ThreadScoring
from rendezvous.streams.base import Record

__all__ = ["ThreadHost"]

log = logging.getLogger(__name__)


class ThreadHost:
    """One model version on a thread of this process."""

    isolation = "thread"

    def __init__(self, *, registry: Registry, deployment: str, model: str, worker: str,
                 decoded: DecodedRequests | None = None) -> None:
        self.registry = registry
        self.deployment = deployment
        self.model = model
        self.worker = worker
        self.decoded = decoded
        self.state = HostState.LOADING
        self.detail = ""
        self.since = time.time()
        self._scoring: ThreadScoring | None = None
        self._settled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def info(self) -> dict[str, Any]:
        return {"state": self.state.value, "detail": self.detail, "restarts": 0,
                "last_exit": "", "pid": 0, "isolation": self.isolation, "since": self.since}

    def _set(self, state: HostState, detail: str = "") -> None:
        self.state, self.detail, self.since = state, detail, time.time()
        if state in (HostState.READY, HostState.FAILED):
            self._settled.set()

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._load())

    async def _load(self) -> None:
        try:
            predictor = await asyncio.to_thread(self.registry.load, self.model)
            signature = await asyncio.to_thread(self.registry.deployment_signature,
                                                self.deployment)
            mv = await asyncio.to_thread(self.registry.get, self.model)
        except Exception as exc:  # whatever loading raises is this model's failure
            log.warning("%s %s: failed to load: %s", self.deployment, self.model, exc)
            self._set(HostState.FAILED, f"{type(exc).__name__}: {exc}")
            return
        self._scoring = ThreadScoring(BatchScorer(
            predictor, signature, deployment=self.deployment, model=self.model,
            worker=self.worker, decoded=self.decoded))
        self._set(HostState.WARMING)
        try:
            await self._scoring.warm_up(mv.data_summary.get("example_rows"))
        except Exception as exc:  # a model that cannot predict its own example rows is broken
            self._set(HostState.FAILED, "warm-up predict on the registration's example rows "
                                        f"failed: {type(exc).__name__}: {exc}")
            return
        self._set(HostState.READY)

    async def settled(self, *, timeout_s: float) -> HostState:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout_s)
        return self.state

    async def score(self, records: Sequence[Record], held_ns: Sequence[int] = ()) -> bytes | None:
        if self.state is not HostState.READY or self._scoring is None:
            return None
        return await self._scoring.score(records, held_ns)

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._scoring is not None:
            self._scoring.close()
        self._set(HostState.STOPPED)
