"""The scorekeeper: archives every model's score, every decision and every feedback label, as
the decoy archives inputs.

Three Parquet datasets beside the decoy's, in the same archive (``rendezvous.archive``: a local
directory or any fsspec URL), partitioned by day like it:

- ``<archive>/<deployment>/scores/date=YYYY-MM-DD/part-*.parquet``: one row per model per
  request: ``request_id``, ``model``, ``outputs`` (msgpack, as the worker encoded them),
  ``error``, ``started_ns``, ``finished_ns``, ``worker``;
- ``…/results/date=…``: one row per request: ``request_id``, ``chosen``, ``reason``,
  ``policy_version``, ``received_ns``, ``responded_ns`` and ``models`` (JSON: status and
  latency of every model);
- ``…/labels/date=…`` (day of arrival): one row per feedback label: ``request_id``, ``label``
  (JSON, so any label type survives), ``at_ns``.

Parts are written whole or not at all and batches acknowledged only after their part is
written, so a crash re-archives at worst; readers drop such duplicates.
``export_scores`` joins the two into one row per (request, model) with its outputs as JSON,
its score and prediction, status, latency and policy version: what late labels, comparisons
and replay need after the stream log's retention has passed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import operator
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from rendezvous.archive import Archive, dataset, day_of, open_archive, write_atomic
from rendezvous.core import messages
from rendezvous.core.compare import Scored, reduce
from rendezvous.core.reference import score_series
from rendezvous.errors import NotFoundError
from rendezvous.ids import ulid_ms
from rendezvous.roles.archiving import ArchiveWriter
from rendezvous.roles.reads import READ_PAUSE_S, SCOREKEEPER_GROUP, SCOREKEEPER_TOPICS
from rendezvous.streams.base import Source

log = logging.getLogger(__name__)

__all__ = ["GROUP", "KINDS", "TOPICS", "Kind", "Scorekeeper", "archived_feedback",
           "export_labels", "export_scores", "lookup_scores", "read_labels", "read_scores",
           "score_items", "scores_table"]

GROUP = SCOREKEEPER_GROUP
_json = msgspec.json.Encoder()

SCORES_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("model", pa.string()), ("outputs", pa.binary()),
    ("error", pa.string()), ("started_ns", pa.int64()), ("finished_ns", pa.int64()),
    ("worker", pa.string()), ("held_ns", pa.int64()),  # held_ns: null in older parts
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
    held_ns: int = 0


_scores_raw = msgspec.msgpack.Decoder(list[_ScoreRaw])
_unpack = msgspec.msgpack.Decoder()
RESULTS_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("chosen", pa.string()), ("reason", pa.string()),
    ("policy_version", pa.int64()), ("received_ns", pa.int64()), ("responded_ns", pa.int64()),
    ("models", pa.string()),
])
LABELS_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("label", pa.string()), ("at_ns", pa.int64()),
])


def score_items(data: bytes) -> list[Any]:
    """The scores of one scores record (a worker's batch of ``Score``), their outputs still
    as the worker encoded them."""
    return _scores_raw.decode(data)


def _column(items: Sequence[Any], name: str) -> list[Any]:
    return list(map(operator.attrgetter(name), items))


def scores_table(scores: Sequence[Any]) -> pa.Table:
    """The archive rows of ``score_items``, built column by column: a part holds thousands,
    and a list per column costs one builtin call per column, not a dict per row."""
    return pa.table([_column(scores, "request_id"), _column(scores, "model"),
                     list(map(bytes, _column(scores, "outputs"))), _column(scores, "error"),
                     _column(scores, "started_ns"), _column(scores, "finished_ns"),
                     _column(scores, "worker"), _column(scores, "held_ns")],
                    schema=SCORES_SCHEMA)


def result_items(data: bytes) -> list[Any]:
    """The result of one results record, as the statistics read it."""
    return [messages.result_summary_decoder.decode(data)]


def results_table(results: Sequence[Any]) -> pa.Table:
    """The archive rows of ``result_items``: ``models`` (status and latency of every model)
    as JSON."""
    return pa.table([_column(results, "request_id"), _column(results, "model"),
                     list(map(str, _column(results, "reason"))),  # a StrEnum's str: its value
                     _column(results, "policy_version"), _column(results, "received_ns"),
                     _column(results, "responded_ns"),
                     list(map(bytes.decode, map(_json.encode, _column(results, "models"))))],
                    schema=RESULTS_SCHEMA)


def label_items(data: bytes) -> list[Any]:
    """The feedback of one feedback record."""
    return [messages.feedback_decoder.decode(data)]


def labels_table(feedback: Sequence[Any]) -> pa.Table:
    """The archive rows of ``label_items``: the labels as JSON, so any label type survives."""
    return pa.table([_column(feedback, "request_id"),
                     list(map(bytes.decode, map(_json.encode, _column(feedback, "labels")))),
                     _column(feedback, "at_ns")], schema=LABELS_SCHEMA)


class Kind(NamedTuple):
    """How one topic is archived: the items of a record, the part of many items, and the
    time of an item (which names the part's day)."""

    dataset: str
    items: Callable[[bytes], list[Any]]
    table: Callable[[Sequence[Any]], pa.Table]
    time_field: str


# topic -> how it is archived
KINDS = {"scores": Kind("scores", score_items, scores_table, "finished_ns"),
         "results": Kind("results", result_items, results_table, "received_ns"),
         "feedback": Kind("labels", label_items, labels_table, "at_ns")}
TOPICS = SCOREKEEPER_TOPICS  # what the scorekeeper reads, in its group: KINDS' topics


class Items:
    """The pending rows of one ``Kind``, as the items its records decode to."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.items: list[Any] = []

    def __len__(self) -> int:
        return len(self.items)

    def add_record(self, data: bytes) -> None:
        self.items += self.kind.items(data)

    def extend(self, other: Items) -> None:
        self.items += other.items

    def table(self) -> pa.Table:
        return self.kind.table(self.items)

    def first_ns(self) -> int:
        return getattr(self.items[0], self.kind.time_field) or time.time_ns()


class Scorekeeper:
    """Archives one deployment's scores, results and labels (see the module docstring) in
    ``archive`` (default: the one ``home`` and the settings name)."""

    def __init__(self, stream: Source, home: Path, deployment: str, *,
                 archive: Archive | str | None = None,
                 flush_rows: int = 20_000, flush_s: float = 1.0,
                 pause_s: float = READ_PAUSE_S) -> None:
        arc = open_archive(home, archive)
        self.parts = [
            ArchiveWriter(stream, messages.topic(deployment, topic), GROUP, arc,
                          dataset(deployment, kind.dataset), functools.partial(Items, kind),
                          name=f"scorekeeper {deployment}.{topic}", flush_rows=flush_rows,
                          flush_s=flush_s, pause_s=pause_s)
            for topic, kind in KINDS.items()]

    async def run(self) -> None:
        await asyncio.gather(*(p.run() for p in self.parts))

    async def flush(self) -> None:
        for p in self.parts:
            await p.flush()

    async def stop(self) -> None:
        for p in self.parts:
            await p.stop()


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


ArchiveAt = Archive | str | None


def _read_kind(arc: Archive, deployment: str, kind: str, what: str) -> pa.Table:
    name = dataset(deployment, kind)
    files = arc.parts(name)
    if not files:
        raise NotFoundError(
            what, deployment,
            f"nothing archived under {arc.where(name)}; serve the deployment (the scorekeeper "
            "runs with the monitor) first, or name the archive it wrote to with --archive / "
            "RENDEZVOUS_ARCHIVE")
    return arc.read_all(files)


def read_scores(home: Path | None, deployment: str, *, archive: ArchiveAt = None) -> pa.Table:
    """Every archived score of a deployment, one row per (request, model), with its status,
    latency, policy version and whether it was chosen (from the archived results).
    ``archive``: its location (default ``RENDEZVOUS_ARCHIVE``, else ``<home>/archive``)."""
    arc = open_archive(home, archive)
    scores = _dedupe(_read_kind(arc, deployment, "scores", "score archive"),
                     ["request_id", "model"])
    outcome: dict[tuple[str, str], tuple[str, float | None, int, bool]] = {}
    rfiles = arc.parts(dataset(deployment, "results"))
    if rfiles:
        results = _dedupe(arc.read_all(rfiles), ["request_id"])
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


def export_scores(home: Path | None, deployment: str, out: Path, *,
                  archive: ArchiveAt = None) -> int:
    """Write the deployment's score archive as one Parquet file; returns the number of rows."""
    table = read_scores(home, deployment, archive=archive)
    write_atomic(table, out)
    return table.num_rows


def read_label_table(home: Path | None, deployment: str, *,
                     archive: ArchiveAt = None) -> pa.Table:
    """The first archived label of each request (``request_id``, ``label`` as JSON,
    ``at_ns``), in order of arrival: later labels for the same request, and copies
    re-archived after a crash, are dropped, as the monitor never counts a label twice."""
    table = _read_kind(open_archive(home, archive), deployment, "labels", "label archive")
    table = table.append_column("_i", pa.array(range(table.num_rows), type=pa.int64()))
    table = table.sort_by([("request_id", "ascending"), ("at_ns", "ascending"),
                           ("_i", "ascending")])
    if table.num_rows > 1:
        ids = table["request_id"]
        first = pc.not_equal(ids[1:], ids[:-1]).combine_chunks()
        table = table.filter(pa.concat_arrays([pa.array([True]), first]))
    return table.sort_by([("at_ns", "ascending"), ("_i", "ascending")]).drop_columns(["_i"])


def read_labels(home: Path | None, deployment: str, ids: Iterable[str] | None = None, *,
                archive: ArchiveAt = None) -> dict[str, Any]:
    """request id -> its first archived label (the list of per-row labels it was sent
    with), for every labelled request or only ``ids``; empty when nothing is archived.

    >>> read_labels(home, "fraud", ["01J9…"])  # doctest: +SKIP
    {'01J9…': [1]}
    """
    try:
        table = read_label_table(home, deployment, archive=archive)
    except NotFoundError:
        return {}
    if ids is not None:
        table = table.filter(pc.is_in(table["request_id"], value_set=pa.array(sorted(set(ids)),
                                                                              pa.string())))
    return {i: msgspec.json.decode(label) for i, label in
            zip(table["request_id"].to_pylist(), table["label"].to_pylist(), strict=True)}


def archived_feedback(home: Path | None, deployment: str, *, skip: Iterable[str] = (),
                      archive: ArchiveAt = None) -> list[messages.Feedback]:
    """The first archived label of each request not in ``skip``, as ``Feedback`` in order of
    arrival: the labels that have left the stream log, for rebuilding analytics."""
    try:
        table = read_label_table(home, deployment, archive=archive)
    except NotFoundError:
        return []
    known = set(skip)
    return [messages.Feedback(request_id=r["request_id"], deployment=deployment,
                              labels=msgspec.json.decode(r["label"]), at_ns=r["at_ns"])
            for r in table.to_pylist() if r["request_id"] not in known]


def export_labels(home: Path | None, deployment: str, out: Path, *,
                  archive: ArchiveAt = None) -> int:
    """Write the first label of each labelled request as one Parquet file; returns the
    number of rows."""
    table = read_label_table(home, deployment, archive=archive)
    write_atomic(table, out)
    return table.num_rows


def _day_of(request_id: str) -> str | None:
    """The UTC day a ULID request id was made, None for client-supplied ids."""
    ms = ulid_ms(request_id)
    return None if ms is None else day_of(ms * 1_000_000)


def lookup_scores(home: Path | None, deployment: str, request_ids: Iterable[str], *,
                  archive: ArchiveAt = None) -> dict[str, dict[str, Scored]]:
    """The archived scores of these requests, reduced as comparisons and accuracy use them.
    Only the days their (ULID) ids name are read, unless an id is not a ULID."""
    ids = sorted(set(request_ids))
    if not ids:
        return {}
    arc = open_archive(home, archive)
    days = [_day_of(i) for i in ids]
    files = arc.parts(dataset(deployment, "scores"),
                      None if any(d is None for d in days) else [d for d in days if d])
    found: dict[str, dict[str, Scored]] = {}
    wanted = pa.array(ids)
    for f in files:
        t = arc.read(f, columns=["request_id", "model", "outputs", "error"])
        t = t.filter(pc.is_in(t["request_id"], value_set=wanted))
        for row in t.to_pylist():
            found.setdefault(row["request_id"], {})[row["model"]] = reduce(
                _unpack.decode(row["outputs"]), error=row["error"] is not None)
    return found
