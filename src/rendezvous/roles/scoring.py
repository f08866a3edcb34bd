"""Scoring one batch of input records with one model: the part of a worker that touches the model.

``BatchScorer`` turns the exact bytes of input records into the encoded ``Score`` list the
worker appends to the scores stream. It runs wherever the model lives: in a model host process
(``rendezvous.hosting.host_main``, the default) or on a model thread of the serving process
(``isolation = "thread"``). Nothing here does I/O; ``score`` is synchronous and blocking.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np

from rendezvous.core import messages
from rendezvous.core.messages import Request, Score
from rendezvous.core.schema import Signature
from rendezvous.flavors.base import Outputs, Predictor

__all__ = ["BatchScorer", "DecodedRequests", "error_scores", "input_digest", "one_thread_each",
           "warmup_columns"]

WARMUP_CALLS = 3  # first calls pay for lazy initialisation (allocators, caches, JIT)


def input_digest(data: bytes) -> str:
    """Digest of the exact request bytes a model scored (the decoy archives the same)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class DecodedRequests:
    """Decoded requests shared by the thread-hosted workers of one process.

    With in-process fan-out every worker is handed the very same ``bytes`` object for a
    record, so the first worker decodes and digests it and the others reuse the result. A hit
    requires the identical bytes object (not just the same offset), so sharing can never mix up
    inputs. Workers read the same records within milliseconds of each other, so a small
    capacity suffices (and keeps the objects the garbage collector must scan few).
    """

    def __init__(self, capacity: int = 512) -> None:
        self.capacity = capacity
        self._items: OrderedDict[int, tuple[bytes, Request, str]] = OrderedDict()

    def get(self, key: int, data: bytes) -> tuple[Request, str]:
        hit = self._items.get(key)
        if hit is not None and hit[0] is data:
            return hit[1], hit[2]
        req = messages.request_decoder.decode(data)
        digest = input_digest(data)
        self._items[key] = (data, req, digest)
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return req, digest


def one_thread_each() -> None:
    """Unless OMP_NUM_THREADS says otherwise, a model computes on the calling thread alone.
    Every model of a deployment scores every request at once, so a model that also fans out
    over all cores (OpenMP, BLAS) only makes them fight for the same cores."""
    if os.environ.get("OMP_NUM_THREADS"):
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)  # OpenMP's thread count is per calling thread


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


def warmup_columns(sig: Signature, example: dict[str, list[Any]] | None) -> tuple[
        dict[str, np.ndarray], int]:
    """Columns to warm a model up on: the example rows recorded at registration, or one row
    of zeros (empty strings for text) shaped by the signature when none were recorded."""
    if example and all(c.name in example for c in sig.inputs):
        n = len(example[sig.inputs[0].name])
        return {c.name: np.asarray(example[c.name], dtype=sig.numpy_dtype(c.name))
                for c in sig.inputs}, n
    return {c.name: np.zeros(1, dtype=sig.numpy_dtype(c.name)) for c in sig.inputs}, 1


def error_scores(datas: Sequence[bytes], *, deployment: str, model: str, worker: str,
                 error: str, started_ns: int, finished_ns: int,
                 held_ns: Sequence[int] = ()) -> list[Score]:
    """One ``Score`` with ``error`` per request (for a batch the model could not finish)."""
    out = []
    for i, data in enumerate(datas):
        try:
            rid = messages.request_head_decoder.decode(data).request_id
        except msgspec.DecodeError:
            continue  # not a request at all: nothing to name
        out.append(Score(request_id=rid, deployment=deployment, model=model, outputs={},
                         started_ns=started_ns, finished_ns=finished_ns, error=error,
                         worker=worker, input_digest=input_digest(data),
                         held_ns=held_ns[i] if held_ns else 0))
    return out


class BatchScorer:
    """Decodes requests, calls the model once per batch, makes one ``Score`` per request."""

    def __init__(self, predictor: Predictor, signature: Signature, *, deployment: str,
                 model: str, worker: str, decoded: DecodedRequests | None = None) -> None:
        self.predictor = predictor
        self.signature = signature
        self.deployment = deployment
        self.model = model
        self.worker = worker
        self.decoded = decoded or DecodedRequests(capacity=1)

    def warm_up(self, example: dict[str, list[Any]] | None) -> None:
        """Predict on ``example`` rows a few times; raises what the model raises."""
        cols, n = warmup_columns(self.signature, example)
        for _ in range(WARMUP_CALLS):
            self.predictor.predict(cols, n)

    def score(self, datas: Sequence[bytes], keys: Sequence[int] | None = None, *,
              held_ns: Sequence[int] = ()) -> list[Score]:
        """Scores for the input records ``datas`` (undecodable records are skipped: the proxy
        only appends valid requests, so such a record comes from a foreign writer).
        ``held_ns``: how long each record waited only because its worker paused (empty: none
        did), kept in its score."""
        requests: list[Request] = []
        digests: list[str] = []
        held: list[int] = []
        for i, data in enumerate(datas):
            try:
                req, digest = self.decoded.get(keys[i] if keys is not None else i, data)
            except msgspec.DecodeError:
                continue
            requests.append(req)
            digests.append(digest)
            held.append(held_ns[i] if held_ns else 0)
        return self._score(requests, digests, held) if requests else []

    def _score(self, requests: list[Request], digests: list[str],
               held: list[int]) -> list[Score]:
        started = time.time_ns()
        try:
            cols = merge_columns(requests, self.signature)
            sizes = [r.n_rows for r in requests]
            outputs = split_outputs(self.predictor.predict(cols, sum(sizes)), sizes)
        except Exception as exc:  # a model error becomes a Score with an error, never a crash
            if len(requests) > 1:
                # Score one by one so that a single bad request does not fail its batch mates.
                out: list[Score] = []
                for r, d, h in zip(requests, digests, held, strict=True):
                    out.extend(self._score([r], [d], [h]))
                return out
            return [self._make(requests[0], digests[0], {}, started, time.time_ns(),
                               f"{type(exc).__name__}: {exc}", held[0])]
        finished = time.time_ns()
        return [self._make(r, d, o, started, finished, None, h)
                for r, d, o, h in zip(requests, digests, outputs, held, strict=True)]

    def _make(self, req: Request, digest: str, outputs: dict[str, list[Any]], started: int,
              finished: int, error: str | None, held_ns: int) -> Score:
        return Score(request_id=req.request_id, deployment=self.deployment, model=self.model,
                     outputs=outputs, started_ns=started, finished_ns=finished, error=error,
                     worker=self.worker, input_digest=digest, held_ns=held_ns)
