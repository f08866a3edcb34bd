"""Reading the evidence archive of one deployment: inputs, scores, results, replays, labels.

Layout (``roles.decoy``, ``roles.scorekeeper``), all under ``<archive>/<deployment>/``, where
the archive is ``<home>/archive`` or any fsspec URL (``rendezvous.archive``):

- ``date=YYYY-MM-DD/part-*.parquet``: the inputs, one row per input row, with the request's
  head (read back as ``Request`` objects, re-encoded to the exact bytes the models scored);
- ``scores/date=…``: one row per (request, model); ``results/date=…``: one row per request;
- ``replays/<model>/date=…``: scores of a model replayed on archived inputs (``replay``), in
  the schema of ``scores/`` so that the same readers work.

Files are named by day of their first row, so a range reads the days it touches plus the day
before (a file started before midnight holds rows after it). Inputs are scanned in bounded
batches; scores and results of a range are read whole (one small row per request and model).
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from rendezvous.analysis.times import Span
from rendezvous.archive import Archive, open_archive
from rendezvous.archive import dataset as archive_dataset
from rendezvous.core import messages
from rendezvous.core.messages import Request
from rendezvous.core.schema import Signature
from rendezvous.errors import NotFoundError
from rendezvous.roles.decoy import arrow_schema
from rendezvous.roles.scorekeeper import RESULTS_SCHEMA, SCORES_SCHEMA, read_labels
from rendezvous.roles.worker import input_digest

__all__ = ["Archived", "decode_outputs", "files", "labels", "replay_dataset",
           "request_ids", "requests", "results", "scores", "split_keys"]

_meta = msgspec.json.Decoder(dict[str, str])
_unpack = msgspec.msgpack.Decoder()


def replay_dataset(deployment: str, model: str) -> str:
    """The dataset ``replay`` writes the scores of ``model`` (``name@version``) to."""
    return f"{archive_dataset(deployment, 'replays')}/{model}"


def files(archive: Archive, dataset: str, span: Span = Span()) -> list[str]:
    """The Parquet parts of one dataset whose day may hold rows of ``span``."""
    first, last = span.days()
    before = (dt.date.fromisoformat(first) - dt.timedelta(days=1)).isoformat()
    return [p for p in archive.parts(dataset)
            if before <= p.rsplit("/date=", 1)[-1].split("/", 1)[0] <= last]


def _input_files(archive: Archive, deployment: str, span: Span) -> list[str]:
    where = archive_dataset(deployment)
    found = files(archive, where, span)
    if not found:
        raise NotFoundError(
            "archive", deployment,
            f"no archived inputs under {archive.where(where)} for {span.describe()}; serve the "
            "deployment with the decoy on (policy decoy = true), or widen --from/--to")
    return found


@dataclass(frozen=True, slots=True)
class Archived:
    """One archived request: the request rebuilt from the archive, its bytes re-encoded, and
    the digest the decoy recorded of the bytes the models scored."""

    request: Request
    data: bytes
    recorded_digest: str

    @property
    def digest_matches(self) -> bool:
        return input_digest(self.data) == self.recorded_digest


def _scan(home: Path, deployment: str, span: Span, sig: Signature,
          columns: list[str] | None = None, batch_rows: int = 8192) -> Iterator[pa.RecordBatch]:
    schema = arrow_schema(sig)
    archive = open_archive(home)
    dataset = ds.dataset(_input_files(archive, deployment, span), format="parquet",
                         schema=schema, filesystem=archive.fs)
    received = ds.field("received_ns")
    return iter(dataset.to_batches(
        columns=columns, batch_size=batch_rows,
        filter=(received >= span.start_ns) & (received < span.end_ns)))


def request_ids(home: Path, deployment: str, span: Span, sig: Signature) -> set[str]:
    """The ids of the requests the range holds (reading two columns of the archive)."""
    seen: set[str] = set()
    for batch in _scan(home, deployment, span, sig, ["request_id", "row"]):
        first = batch.filter(pc.equal(batch["row"], 0))
        seen.update(first["request_id"].to_pylist())
    return seen


def requests(home: Path, deployment: str, span: Span, sig: Signature, *,
             batch: int = 256, skip: Iterable[str] = (),
             scan_rows: int = 8192) -> Iterator[list[Archived]]:
    """The archived requests of ``span`` in archive order (arrival order within a file), in
    lists of at most ``batch``; ids in ``skip`` (and repeats) are left out. Memory: one scan
    batch of ``scan_rows`` rows plus the ids seen."""
    names = [c.name for c in sig.inputs]
    seen = set(skip)
    out: list[Archived] = []
    carry: dict[str, list[Any]] | None = None  # rows of a request cut by the scan batch
    for rb in _scan(home, deployment, span, sig, batch_rows=scan_rows):
        cols = rb.to_pydict()
        if carry is not None:
            cols = {k: carry[k] + v for k, v in cols.items()}
            carry = None
        ids, row = cols["request_id"], cols["row"]
        n = len(ids)
        starts = [i for i in range(n) if row[i] == 0 or i == 0 or ids[i] != ids[i - 1]]
        # The last request may go on in the next scan batch: hold it back.
        last = starts[-1] if starts else 0
        carry = {k: v[last:] for k, v in cols.items()}
        for lo, hi in itertools.pairwise(starts):
            got = _archived(deployment, cols, names, lo, hi, seen)
            if got is not None:
                out.append(got)
                if len(out) >= batch:
                    yield out
                    out = []
    if carry is not None and carry["request_id"]:
        got = _archived(deployment, carry, names, 0, len(carry["request_id"]), seen)
        if got is not None:
            out.append(got)
    if out:
        yield out


def _archived(deployment: str, cols: dict[str, list[Any]], names: list[str], lo: int,
              hi: int, seen: set[str]) -> Archived | None:
    """The request of rows ``lo:hi`` of the scanned columns; None when seen already."""
    rid = cols["request_id"][lo]
    if rid in seen:
        return None
    seen.add(rid)
    meta = cols["meta"][lo]
    req = Request(
        request_id=rid, deployment=deployment, received_ns=cols["received_ns"][lo],
        deadline_ns=cols["deadline_ns"][lo] or 0,
        inputs={n: cols[n][lo:hi] for n in names}, n_rows=hi - lo,
        return_to=cols["return_to"][lo] or "", policy_version=cols["policy_version"][lo] or 0,
        meta=_meta.decode(meta) if meta else {})
    return Archived(req, messages.encode(req), cols["input_digest"][lo] or "")


def _read(archive: Archive, paths: list[str], schema: pa.Schema, span: Span | None,
          ids: pa.Array | None, models: Iterable[str] | None, columns: list[str] | None,
          time_field: str | None) -> pa.Table:
    if not paths:
        return schema.empty_table() if columns is None else \
            pa.schema([schema.field(c) for c in columns]).empty_table()
    dataset = ds.dataset(paths, format="parquet", schema=schema, filesystem=archive.fs)
    cond = None

    def both(a: Any, b: Any) -> Any:
        return b if a is None else a & b

    if span is not None and time_field is not None:
        t = ds.field(time_field)
        cond = both(cond, (t >= span.start_ns) & (t < span.end_ns))
    if ids is not None:
        cond = both(cond, ds.field("request_id").isin(ids))
    if models is not None:
        cond = both(cond, ds.field("model").isin(pa.array(sorted(set(models)), pa.string())))
    return dataset.to_table(columns=columns, filter=cond)


def _dedupe(table: pa.Table, keys: list[str]) -> pa.Table:
    """Drop rows archived twice after a crash (same keys), keeping the first."""
    if table.num_rows < 2:
        return table
    marked = table.append_column("_i", pa.array(range(table.num_rows), pa.int64()))
    firsts = marked.group_by(keys, use_threads=False).aggregate([("_i", "min")])
    return table.take(pc.sort_indices(firsts["_i_min"]))


def results(home: Path, deployment: str, span: Span) -> pa.Table:
    """The archived decisions of requests received in ``span``, one row per request, in
    arrival order."""
    archive = open_archive(home)
    where = archive_dataset(deployment, "results")
    paths = files(archive, where, span)
    if not paths:
        raise NotFoundError(
            "results archive", deployment,
            f"nothing archived under {archive.where(where)} for {span.describe()}; serve the "
            "deployment (the scorekeeper runs with the monitor), or widen --from/--to")
    table = _dedupe(_read(archive, paths, RESULTS_SCHEMA, span, None, None, None,
                          "received_ns"), ["request_id"])
    return table.sort_by([("received_ns", "ascending"), ("request_id", "ascending")])


def scores(home: Path, deployment: str, span: Span, *, ids: Iterable[str] | None = None,
           models: Iterable[str] | None = None, replay_of: str | None = None,
           columns: list[str] | None = None) -> pa.Table:
    """Archived scores (``replay_of``: a replay's scores of that model) of the requests
    ``ids`` (all in the days of ``span`` when None), one row per (request, model), outputs
    msgpack as the worker encoded them."""
    archive = open_archive(home)
    where = replay_dataset(deployment, replay_of) if replay_of else \
        archive_dataset(deployment, "scores")
    id_array = None if ids is None else pa.array(sorted(set(ids)), pa.string())
    table = _read(archive, files(archive, where, span), SCORES_SCHEMA, None, id_array, models,
                  columns, None)
    keys = [k for k in ("request_id", "model") if columns is None or k in columns]
    return _dedupe(table, keys)


def decode_outputs(data: bytes) -> Any:
    """A score's outputs as the worker encoded them (msgpack), decoded."""
    return _unpack.decode(data)


async def labels(home: Path, deployment: str,
                 ids: Iterable[str] | None = None) -> dict[str, list[Any]]:
    """Feedback labels by request id (the first label of an id counts, as in the monitor):
    from the label archive (kept beyond the stream log's retention), then from the
    deployment's feedback stream topic for labels not archived yet; only ``ids`` when given."""
    from rendezvous.streams.base import open_stream, partitions

    wanted = None if ids is None else set(ids)
    found: dict[str, list[Any]] = read_labels(home, deployment, wanted)
    topic = messages.topic(deployment, "feedback")
    for url in partitions("embedded", home=home):
        stream = await open_stream(url, home=home, read_only=True)  # no log yet: empty
        try:
            last = await stream.last_offset(topic)
            start = 1
            while last and start <= last:
                records = await stream.read(topic, from_offset=start, limit=10_000)
                if not records:
                    break
                for rec in records:
                    fb = messages.feedback_decoder.decode(rec.data)
                    if (wanted is None or fb.request_id in wanted) and \
                            fb.request_id not in found:
                        found[fb.request_id] = fb.labels
                start = records[-1].offset + 1
        finally:
            await stream.close()
    return found




def split_keys(home: Path, deployment: str, span: Span, sig: Signature,
               key: str) -> dict[str, str]:
    """The value of the request meta tag ``key`` by request id (requests without it, or
    archived before meta was kept, are left out: their split key is their id)."""
    found: dict[str, str] = {}
    for rb in _scan(home, deployment, span, sig, ["request_id", "row", "meta"]):
        first = rb.filter(pc.equal(rb["row"], 0))
        for rid, meta in zip(first["request_id"].to_pylist(), first["meta"].to_pylist(),
                             strict=True):
            value = _meta.decode(meta).get(key) if meta else None
            if value is not None:
                found[rid] = value
    return found
