"""Reading the input archive back as requests: exact bytes, requests cut by scan batches,
crash duplicates, and files written before the request head was archived."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rendezvous.analysis import evidence
from rendezvous.analysis.times import Span
from rendezvous.core import messages
from rendezvous.core.messages import Request
from rendezvous.core.schema import Column, Datatype, Signature
from rendezvous.errors import NotFoundError
from rendezvous.ids import new_request_id
from rendezvous.roles.decoy import HEAD_COLUMNS, Rows, archive_dir, write_atomic
from rendezvous.roles.worker import input_digest

SIG = Signature((Column("x", Datatype.FP64), Column("k", Datatype.BYTES)))
T0 = 1_795_737_600 * 10**9  # 2026-11-27


def request(i: int, n_rows: int) -> Request:
    return Request(request_id=new_request_id(), deployment="dep", received_ns=T0 + i * 10**6,
                   deadline_ns=T0 + i * 10**6 + 50_000_000, n_rows=n_rows,
                   inputs={"x": [i + r / 10 for r in range(n_rows)],
                           "k": [f"k{i}"] * n_rows},
                   return_to="proxy-1", policy_version=3, meta={"user": f"u{i % 3}"} if i % 2
                   else {})


def archive(home: Path, reqs: list[Request], name: str) -> Path:
    rows = Rows(SIG)
    for r in reqs:
        rows.add(r, input_digest(messages.encode(r)))
    path = archive_dir(home, "dep") / "date=2026-11-27" / name
    write_atomic(rows.table(), path)
    return path


def test_requests_come_back_as_the_bytes_the_models_scored(tmp_path: Path) -> None:
    reqs = [request(i, 1 + i % 4) for i in range(40)]
    archive(tmp_path, reqs[:25], "part-1.parquet")
    archive(tmp_path, reqs[20:], "part-2.parquet")  # 20-24 again: re-archived after a crash
    got = [a for group in evidence.requests(tmp_path, "dep", Span(), SIG, batch=7,
                                            scan_rows=5)  # requests cut across scan batches
           for a in group]
    assert [a.request for a in got] == reqs
    assert all(a.digest_matches for a in got)
    assert max(len(g) for g in evidence.requests(tmp_path, "dep", Span(), SIG, batch=7)) == 7
    assert len(evidence.request_ids(tmp_path, "dep", Span(), SIG)) == 40
    skip = {r.request_id for r in reqs[:30]}
    rest = [a.request for g in evidence.requests(tmp_path, "dep", Span(), SIG, skip=skip)
            for a in g]
    assert rest == reqs[30:]
    late = Span(T0 + 35 * 10**6, T0 + 10**12)
    assert [a.request for g in evidence.requests(tmp_path, "dep", late, SIG) for a in g] == \
        reqs[35:]


def test_files_from_before_the_head_was_archived_read_back_unverified(tmp_path: Path) -> None:
    reqs = [request(i, 2) for i in range(3)]
    path = archive(tmp_path, reqs, "part-1.parquet")
    old = pq.read_table(path).drop_columns(list(HEAD_COLUMNS))
    write_atomic(old, path)
    got = [a for g in evidence.requests(tmp_path, "dep", Span(), SIG) for a in g]
    assert [a.request.inputs for a in got] == [r.inputs for r in reqs]
    assert not any(a.digest_matches for a in got)  # counted as mismatches, never guessed


def test_nothing_archived_says_how_to_get_an_archive(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="serve the deployment with the decoy"):
        evidence.request_ids(tmp_path, "dep", Span(), SIG)
    archive(tmp_path, [request(0, 1)], "part-1.parquet")
    with pytest.raises(NotFoundError, match="widen --from/--to"):
        evidence.request_ids(tmp_path, "dep", Span(0, 10**9), SIG)
