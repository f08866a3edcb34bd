"""The scorekeeper: archives every model's score and every decision, as the decoy archives inputs.

Two Parquet datasets beside the decoy's, partitioned by day like it:

- ``<home>/archive/<deployment>/scores/date=YYYY-MM-DD/part-*.parquet``: one row per model per
  request: ``request_id``, ``model``, ``outputs`` (msgpack, as the worker encoded them),
  ``error``, ``started_ns``, ``finished_ns``, ``worker``;
- ``…/results/date=…``: one row per request: ``request_id``, ``chosen``, ``reason``,
  ``policy_version``, ``received_ns``, ``responded_ns`` and ``models`` (JSON: status and
  latency of every model).

Files are written atomically (temp file, then rename) and batches acknowledged only after their
file is on disk, so a crash re-archives at worst; readers drop such duplicates.
``export_scores`` joins the two into one row per (request, model) with its outputs as JSON,
its score and prediction, status, latency and policy version: what late labels, comparisons
and replay need after the stream log's retention has passed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rendezvous.core import messages
from rendezvous.core.compare import Scored, reduce
from rendezvous.core.reference import score_series
from rendezvous.errors import NotFoundError, RendezvousError
from rendezvous.roles.decoy import archive_dir, write_atomic
from rendezvous.streams.base import Batch, Stream

log = logging.getLogger(__name__)

__all__ = ["GROUP", "Scorekeeper", "export_scores", "lookup_scores", "read_scores"]

GROUP = "scorekeeper"
_json = msgspec.json.Encoder()

SCORES_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("model", pa.string()), ("outputs", pa.binary()),
    ("error", pa.string()), ("started_ns", pa.int64()), ("finished_ns", pa.int64()),
    ("worker", pa.string()),
])


class _ScoreRaw(msgspec.Struct, gc=False):
    """A ``Score`` whose outputs stay as the worker encoded them (msgpack): archived as they
    are, decoded only when read back."""

    request_id: str
    model: str
    outputs: msgspec.Raw = msgspec.Raw(b"\x80")
    started_ns: int = 0
    finished_ns: int = 0
    error: str | None = None
    worker: str = ""


_scores_raw = msgspec.msgpack.Decoder(list[_ScoreRaw])
_unpack = msgspec.msgpack.Decoder()
RESULTS_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("chosen", pa.string()), ("reason", pa.string()),
    ("policy_version", pa.int64()), ("received_ns", pa.int64()), ("responded_ns", pa.int64()),
    ("models", pa.string()),
])


def score_rows(data: bytes) -> list[dict[str, Any]]:
    """Archive rows from one scores record (a worker's batch of ``Score``)."""
    return [{"request_id": s.request_id, "model": s.model, "outputs": bytes(s.outputs),
             "error": s.error, "started_ns": s.started_ns, "finished_ns": s.finished_ns,
             "worker": s.worker} for s in _scores_raw.decode(data)]


def result_rows(data: bytes) -> list[dict[str, Any]]:
    """The archive row of one result record."""
    r = messages.result_summary_decoder.decode(data)
    return [{"request_id": r.request_id, "chosen": r.model, "reason": r.reason.value,
             "policy_version": r.policy_version, "received_ns": r.received_ns,
             "responded_ns": r.responded_ns,
             "models": _json.encode(r.models).decode()}]


class _Archiver:
    """One topic into one dataset: accumulate rows, write a file, then acknowledge."""

    def __init__(self, stream: Stream, topic: str, root: Path, schema: pa.Schema,
                 to_rows: Callable[[bytes], list[dict[str, Any]]], time_field: str, *,
                 flush_rows: int, flush_s: float) -> None:
        self.stream, self.topic, self.root, self.schema = stream, topic, root, schema
        self.to_rows, self.time_field = to_rows, time_field
        self.flush_rows, self.flush_s = flush_rows, flush_s
        self.rows: list[dict[str, Any]] = []
        self.batches: list[Batch] = []
        self.offsets = (0, 0)
        self.consumer: Any = None
        self.lock = asyncio.Lock()

    async def run(self) -> None:
        self.consumer = self.stream.consume(self.topic, GROUP, start="latest", max_batch=2048)
        ticker = asyncio.ensure_future(self._tick())
        try:
            async for batch in self.consumer:
                for rec in batch.records:
                    try:
                        self.rows.extend(self.to_rows(rec.data))
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        log.error("scorekeeper: undecodable record %s of %s", rec.offset,
                                  self.topic)
                        continue
                    self.offsets = (self.offsets[0] or rec.offset, rec.offset)
                self.batches.append(batch)
                if len(self.rows) >= self.flush_rows:
                    await self.flush()
        finally:
            ticker.cancel()
            await self.flush()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except RendezvousError as exc:  # unacknowledged batches come back; keep going
                log.warning("scorekeeper %s: flush failed (%s); retrying", self.topic, exc)

    async def flush(self) -> None:
        async with self.lock:
            if not self.batches:
                return
            rows, batches, (lo, hi) = self.rows, self.batches, self.offsets
            self.rows, self.batches, self.offsets = [], [], (0, 0)
            if rows:
                stamp = rows[0][self.time_field] or time.time_ns()
                day = dt.datetime.fromtimestamp(stamp / 1e9, dt.UTC)
                path = (self.root / f"date={day:%Y-%m-%d}" /
                        f"part-{lo:012d}-{hi:012d}-{os.getpid()}-{time.time_ns()}.parquet")
                table = pa.Table.from_pylist(rows, schema=self.schema)
                await asyncio.to_thread(write_atomic, table, path)
            for b in batches:
                await b.ack()

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.close()


class Scorekeeper:
    """Archives one deployment's scores and results (see the module docstring)."""

    def __init__(self, stream: Stream, home: Path, deployment: str, *,
                 flush_rows: int = 20_000, flush_s: float = 1.0) -> None:
        root = archive_dir(home, deployment)
        topic = messages.topic
        self.parts = [
            _Archiver(stream, topic(deployment, "scores"), root / "scores", SCORES_SCHEMA,
                      score_rows, "finished_ns", flush_rows=flush_rows, flush_s=flush_s),
            _Archiver(stream, topic(deployment, "results"), root / "results", RESULTS_SCHEMA,
                      result_rows, "received_ns", flush_rows=flush_rows, flush_s=flush_s),
        ]

    async def run(self) -> None:
        await asyncio.gather(*(p.run() for p in self.parts))

    async def flush(self) -> None:
        for p in self.parts:
            await p.flush()

    async def stop(self) -> None:
        for p in self.parts:
            await p.stop()


def _files(home: Path, deployment: str, kind: str, days: Iterable[str] | None = None) -> list[Path]:
    root = archive_dir(home, deployment) / kind
    if not root.exists():
        return []
    if days is None:
        return sorted(root.glob("date=*/part-*.parquet"))
    return sorted(f for d in sorted(set(days)) for f in root.glob(f"date={d}/part-*.parquet"))


def _dedupe(table: pa.Table, keys: list[str]) -> pa.Table:
    """Drop rows re-archived after a crash (same keys)."""
    if table.num_rows < 2:
        return table
    table = table.sort_by([(k, "ascending") for k in keys])
    same = None
    for k in keys:
        col = table[k]
        eq = pc.fill_null(pc.equal(col[1:], col[:-1]), True)
        same = eq if same is None else pc.and_(same, eq)
    assert same is not None
    keep = pa.concat_arrays([pa.array([True]), pc.invert(same).combine_chunks()])
    return table.filter(keep)


def read_scores(home: Path, deployment: str) -> pa.Table:
    """Every archived score of a deployment, one row per (request, model), with its status,
    latency, policy version and whether it was chosen (from the archived results)."""
    files = _files(home, deployment, "scores")
    if not files:
        raise NotFoundError(
            "score archive", deployment,
            f"nothing archived under {archive_dir(home, deployment) / 'scores'}; serve the "
            "deployment (the scorekeeper runs with the monitor) first")
    scores = _dedupe(pa.concat_tables([pq.read_table(f) for f in files]),
                     ["request_id", "model"])
    outcome: dict[tuple[str, str], tuple[str, float | None, int, bool]] = {}
    rfiles = _files(home, deployment, "results")
    if rfiles:
        results = _dedupe(pa.concat_tables([pq.read_table(f) for f in rfiles]), ["request_id"])
        for r in results.to_pylist():
            for model, o in msgspec.json.decode(r["models"]).items():
                outcome[(r["request_id"], model)] = (o["status"], o.get("latency_ms"),
                                                     r["policy_version"], r["chosen"] == model)
    outputs = [_unpack.decode(b) for b in scores["outputs"].to_pylist()]
    series = [score_series(o) for o in outputs]
    scores = scores.set_column(scores.schema.get_field_index("outputs"), "outputs", pa.array(
        [_json.encode(o).decode() for o in outputs], type=pa.string()))
    scores = scores.append_column("score", pa.array(
        [x["score"][0] if len(x.get("score") or ()) == 1 else None for x in series],
        type=pa.float64()))
    scores = scores.append_column("prediction", pa.array(
        [str(x["prediction"][0]) if len(x["prediction"]) == 1 else None for x in series],
        type=pa.string()))
    keys = zip(scores["request_id"].to_pylist(), scores["model"].to_pylist(), strict=True)
    joined = [outcome.get(k, (None, None, None, None)) for k in keys]
    for i, (name, typ) in enumerate([("status", pa.string()), ("latency_ms", pa.float64()),
                                     ("policy_version", pa.int64()), ("chosen", pa.bool_())]):
        scores = scores.append_column(name, pa.array([j[i] for j in joined], type=typ))
    return scores.sort_by([("started_ns", "ascending"), ("model", "ascending")])


def export_scores(home: Path, deployment: str, out: Path) -> int:
    """Write the deployment's score archive as one Parquet file; returns the number of rows."""
    table = read_scores(home, deployment)
    write_atomic(table, out)
    return table.num_rows


def _day_of(request_id: str) -> str | None:
    """The UTC day a ULID request id was made, None for client-supplied ids."""
    from ulid import ULID

    try:
        ts = ULID.from_str(request_id).timestamp
    except ValueError:
        return None
    return f"{dt.datetime.fromtimestamp(ts, dt.UTC):%Y-%m-%d}"


def lookup_scores(home: Path, deployment: str,
                  request_ids: Iterable[str]) -> dict[str, dict[str, Scored]]:
    """The archived scores of these requests, reduced as comparisons and accuracy use them.
    Only the days their (ULID) ids name are read, unless an id is not a ULID."""
    ids = sorted(set(request_ids))
    if not ids:
        return {}
    days = [_day_of(i) for i in ids]
    files = _files(home, deployment, "scores",
                   None if any(d is None for d in days) else [d for d in days if d])
    found: dict[str, dict[str, Scored]] = {}
    wanted = pa.array(ids)
    for f in files:
        t = pq.read_table(f, columns=["request_id", "model", "outputs", "error"])
        t = t.filter(pc.is_in(t["request_id"], value_set=wanted))
        for row in t.to_pylist():
            found.setdefault(row["request_id"], {})[row["model"]] = reduce(
                _unpack.decode(row["outputs"]), error=row["error"] is not None)
    return found
