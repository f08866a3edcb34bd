"""The decoy: reads the input stream like a model, but only archives what it sees.

Rows go to Parquet parts under ``<archive>/<deployment>/date=YYYY-MM-DD/``, one part per flush,
in the archive's location (``<home>/archive`` or any fsspec URL; see ``rendezvous.archive``).
Besides the inputs, each row carries its request's head (deadline, policy version, return
address, meta as JSON), so that replay can re-encode the exact bytes the models scored
(``analysis.evidence``); parts written before those columns existed read back with them null.
Batches are acknowledged only after their part is written (``roles.archiving``), so a crash
re-archives at worst, never loses; ``export`` drops such duplicates.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from rendezvous.archive import Archive, dataset, open_archive, write_atomic
from rendezvous.core import messages
from rendezvous.core.messages import Request
from rendezvous.core.schema import Datatype, Signature
from rendezvous.errors import NotFoundError
from rendezvous.ids import check_name
from rendezvous.roles.archiving import ArchiveWriter
from rendezvous.roles.worker import input_digest
from rendezvous.streams.base import Stream

GROUP = "decoy"
_ARROW = {
    Datatype.FP64: pa.float64(), Datatype.FP32: pa.float32(), Datatype.INT64: pa.int64(),
    Datatype.INT32: pa.int32(), Datatype.BOOL: pa.bool_(), Datatype.BYTES: pa.string(),
}


def archive_dir(home: Path, deployment: str) -> Path:
    """The deployment's input archive in the default, local location."""
    return home / "archive" / check_name(deployment, "deployment name")


HEAD_COLUMNS = ("deadline_ns", "policy_version", "return_to", "meta")


def arrow_schema(sig: Signature) -> pa.Schema:
    return pa.schema(
        [("request_id", pa.string()), ("received_ns", pa.int64()), ("row", pa.int32()),
         ("input_digest", pa.string())]
        + [(c.name, _ARROW[c.datatype]) for c in sig.inputs]
        + [("deadline_ns", pa.int64()), ("policy_version", pa.int64()),
           ("return_to", pa.string()), ("meta", pa.string())]
    )


_meta_json = msgspec.json.Encoder()


class Rows:
    """Archive rows accumulated column by column: one Parquet row per input row (request id,
    arrival time, row index, digest, inputs). Columns grow in place so that the pending rows
    cost a few long lists, not a few objects per request."""

    def __init__(self, sig: Signature) -> None:
        self.sig = sig
        self.ids: list[str] = []
        self.received: list[int] = []
        self.row_idx: list[int] = []
        self.digests: list[str] = []
        self.cols: dict[str, list[Any]] = {c.name: [] for c in sig.inputs}
        self.heads: dict[str, list[Any]] = {name: [] for name in HEAD_COLUMNS}

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, req: Request, digest: str) -> None:
        n = req.n_rows
        self.ids.extend([req.request_id] * n)
        self.received.extend([req.received_ns] * n)
        self.row_idx.extend(range(n))
        self.digests.extend([digest] * n)
        for name, values in self.cols.items():
            values.extend(req.inputs.get(name, [None] * n))
        meta = _meta_json.encode(req.meta).decode() if req.meta else None
        for name, value in zip(HEAD_COLUMNS, (req.deadline_ns, req.policy_version,
                                              req.return_to, meta), strict=True):
            self.heads[name].extend([value] * n)

    def add_record(self, data: bytes) -> None:
        """The rows of one input record, with the digest of its bytes (the workers')."""
        self.add(messages.request_decoder.decode(data), input_digest(data))

    def first_ns(self) -> int:
        return self.received[0]

    def extend(self, other: Rows) -> None:
        self.ids.extend(other.ids)
        self.received.extend(other.received)
        self.row_idx.extend(other.row_idx)
        self.digests.extend(other.digests)
        for name, values in self.cols.items():
            values.extend(other.cols[name])
        for name, values in self.heads.items():
            values.extend(other.heads[name])

    def table(self) -> pa.Table:
        return pa.table([self.ids, self.received, self.row_idx, self.digests,
                         *self.cols.values(), *self.heads.values()],
                        schema=arrow_schema(self.sig))


class Decoy(ArchiveWriter[Rows]):
    """Archives one deployment's inputs (in ``archive``, default: the one ``home`` and the
    settings name)."""

    def __init__(self, stream: Stream, home: Path, deployment: str, signature: Signature, *,
                 archive: Archive | str | None = None,
                 flush_rows: int = 20_000, flush_s: float = 1.0) -> None:
        super().__init__(stream, messages.topic(deployment, "input"), GROUP,
                         open_archive(home, archive), dataset(deployment),
                         functools.partial(Rows, signature), name=f"decoy {deployment}",
                         flush_rows=flush_rows, flush_s=flush_s,
                         # It reads like a model, always pulling: a restarted decoy is seen
                         # to be back (``Stream.unread``) even under load.
                         pause_s=0.0)


def read_archive(home: Path | None, deployment: str, *,
                 archive: Archive | str | None = None) -> pa.Table:
    """Every archived row of a deployment, duplicates (from crash re-delivery) removed,
    ordered by arrival. ``archive``: its location (default ``RENDEZVOUS_ARCHIVE``, else
    ``<home>/archive``)."""
    arc = open_archive(home, archive)
    name = dataset(deployment)
    files = arc.parts(name)
    if not files:
        raise NotFoundError(
            "archive", deployment,
            f"nothing archived under {arc.where(name)}; serve the deployment with the decoy on "
            "first (or name the archive it wrote to with --archive / RENDEZVOUS_ARCHIVE)",
        )
    table = arc.read_all(files)
    table = table.sort_by([("request_id", "ascending"), ("row", "ascending")])
    if table.num_rows > 1:
        ids, rows = table["request_id"], table["row"]
        same = pc.and_(pc.equal(ids[1:], ids[:-1]), pc.equal(rows[1:], rows[:-1]))
        keep = pa.concat_arrays([pa.array([True]), pc.invert(same).combine_chunks()])
        table = table.filter(keep)
    return table.sort_by([("received_ns", "ascending"), ("row", "ascending")])


def export(home: Path | None, deployment: str, out: Path, *,
           archive: Archive | str | None = None) -> int:
    """Write the deployment's archive as one Parquet file; returns the number of rows."""
    table = read_archive(home, deployment, archive=archive)
    write_atomic(table, out)
    return table.num_rows
