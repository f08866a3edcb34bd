"""A worker scores every request of its deployment with one model version.

It reads the whole input stream in its own consumer group, takes everything waiting as one
micro-batch, calls the model once for the batch (in a thread, so the event loop keeps moving),
and appends one ``Score`` per request. It knows nothing about roles or deadlines.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import numpy as np

from rendezvous.core import messages
from rendezvous.core.messages import Request, Score
from rendezvous.core.schema import Signature
from rendezvous.flavors.base import Outputs, Predictor
from rendezvous.streams.base import Batch, Start, Stream

log = logging.getLogger(__name__)


def input_digest(data: bytes) -> str:
    """Digest of the exact request bytes a model scored (the decoy archives the same)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class DecodedRequests:
    """Decoded requests shared by the workers of one process.

    With in-process fan-out every worker is handed the very same ``bytes`` object for a
    record, so the first worker decodes and digests it and the others reuse the result. A hit
    requires the identical bytes object (not just the same offset), so sharing can never mix up
    inputs; with engines that hand each consumer its own copy it simply never hits. Workers
    read the same records within milliseconds of each other, so a small capacity suffices
    (and keeps the objects the garbage collector must scan few).
    """

    def __init__(self, capacity: int = 512) -> None:
        self.capacity = capacity
        self._items: OrderedDict[int, tuple[bytes, Request, str]] = OrderedDict()

    def get(self, offset: int, data: bytes) -> tuple[Request, str]:
        hit = self._items.get(offset)
        if hit is not None and hit[0] is data:
            return hit[1], hit[2]
        req = messages.request_decoder.decode(data)
        digest = input_digest(data)
        self._items[offset] = (data, req, digest)
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return req, digest


def _one_thread_each() -> None:
    """Runs in each model thread: unless OMP_NUM_THREADS says otherwise, a model computes on
    this thread alone. Every model of a deployment scores every request at once, so a model
    that also fans out over all cores (OpenMP, BLAS) only makes them fight: measured in the
    demo, the gradient-boosting champion took 51 ms p50 with OpenMP's default threads."""
    if os.environ.get("OMP_NUM_THREADS"):
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)  # OpenMP's thread count is per calling thread


def group_name(model: str) -> str:
    return f"model-{model}"


def merge_columns(requests: list[Request], sig: Signature) -> dict[str, np.ndarray]:
    """One array per column holding every request's rows, in request order."""
    if len(requests) == 1:
        cols = requests[0].inputs
        return {c.name: np.asarray(cols[c.name], dtype=sig.numpy_dtype(c.name))
                for c in sig.inputs}
    out: dict[str, np.ndarray] = {}
    for c in sig.inputs:
        values: list[Any] = []
        for r in requests:
            values.extend(r.inputs[c.name])
        out[c.name] = np.asarray(values, dtype=sig.numpy_dtype(c.name))
    return out


def split_outputs(outputs: Outputs, sizes: list[int]) -> list[dict[str, list[Any]]]:
    """Cut batch outputs back into one mapping per request."""
    per: list[dict[str, list[Any]]] = [{} for _ in sizes]
    for name, arr in outputs.items():
        rows = arr.tolist()
        start = 0
        for i, n in enumerate(sizes):
            per[i][name] = rows[start:start + n]
            start += n
    return per


class Worker:
    """Scores one deployment's input stream with one model version."""

    def __init__(
        self, stream: Stream, deployment: str, model: str, predictor: Predictor,
        signature: Signature, *, worker_id: str = "", max_batch: int = 256,
        start: Start = "latest", decoded: DecodedRequests | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.stream = stream
        self.deployment = deployment
        self.model = model
        self.predictor = predictor
        self.signature = signature
        self.worker_id = worker_id or f"{model}/{id(self):x}"
        self.max_batch = max_batch
        self.start = start
        self.decoded = decoded or DecodedRequests(capacity=1)
        # Each worker owns a model thread unless given one to share (tried: one thread for
        # every model of a process measured no better here, within noise).
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"model-{model}", initializer=_one_thread_each)
        self._consumer: Any = None
        self._scores_topic = messages.topic(deployment, "scores")

    async def run(self) -> None:
        self._consumer = self.stream.consume(
            messages.topic(self.deployment, "input"), group_name(self.model),
            start=self.start, max_batch=self.max_batch,
        )
        try:
            async for batch in self._consumer:
                await self._handle(batch)
        finally:
            if self._own_executor:
                self._executor.shutdown(wait=False)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.close()

    async def _handle(self, batch: Batch) -> None:
        requests: list[Request] = []
        digests: list[str] = []
        for rec in batch.records:
            try:
                req, digest = self.decoded.get(rec.offset, rec.data)
            except msgspec.DecodeError:
                # Not a request we can even name; nothing to score. The proxy only appends
                # valid requests, so this is a foreign writer: log and move on.
                log.error("worker %s: skipping undecodable record %s", self.model, rec.offset)
                continue
            requests.append(req)
            digests.append(digest)
        scores = await self._score(requests, digests) if requests else []
        if scores:
            await self.stream.append(
                self._scores_topic, [messages.encode(scores)],
                [f"{self.model}:{scores[0].request_id}:{len(scores)}"],
            )
        await batch.ack()

    async def _score(self, requests: list[Request], digests: list[str]) -> list[Score]:
        loop = asyncio.get_running_loop()
        started = time.time_ns()
        try:
            outputs = await loop.run_in_executor(self._executor, self._predict, requests)
        except Exception as exc:  # a model error becomes a Score with an error, never a crash
            if len(requests) > 1:
                # Score one by one so that a single bad request does not fail its batch mates.
                out: list[Score] = []
                for r, d in zip(requests, digests, strict=True):
                    out.extend(await self._score([r], [d]))
                return out
            finished = time.time_ns()
            return [self._make(requests[0], digests[0], {}, started, finished,
                               f"{type(exc).__name__}: {exc}")]
        finished = time.time_ns()
        return [self._make(r, d, o, started, finished, None)
                for r, d, o in zip(requests, digests, outputs, strict=True)]

    def _predict(self, requests: list[Request]) -> list[dict[str, list[Any]]]:
        cols = merge_columns(requests, self.signature)
        sizes = [r.n_rows for r in requests]
        return split_outputs(self.predictor.predict(cols, sum(sizes)), sizes)

    def _make(self, req: Request, digest: str, outputs: dict[str, list[Any]], started: int,
              finished: int, error: str | None) -> Score:
        return Score(request_id=req.request_id, deployment=self.deployment, model=self.model,
                     outputs=outputs, started_ns=started, finished_ns=finished, error=error,
                     worker=self.worker_id, input_digest=digest)
