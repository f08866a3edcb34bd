"""The evidence archive's location: local by default, any fsspec URL (S3 on a real local S3
server, moto's, through the ``s3`` fixture); labels archived beside inputs and scores."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rendezvous import ModelSpec, Policy, Registry, Role
from rendezvous.archive import LocalArchive, ObjectArchive, open_archive
from rendezvous.core import messages
from rendezvous.core.policy import Isolation
from rendezvous.errors import ConfigError, MissingDependencyError, UnavailableError
from rendezvous.hosting.serving import running
from rendezvous.roles.monitor import analytics_from_log
from rendezvous.roles.scorekeeper import (
    LABELS_SCHEMA,
    archived_feedback,
    read_labels,
    read_scores,
)
from rendezvous.streams import open_stream
from tests.conftest import register_callable
from tests.test_cli import run as _cli

Serve = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
DAY1, DAY2 = 1_700_000_000 * 10**9, 1_700_090_000 * 10**9  # 2023-11-14 and 2023-11-15


def _table(n: int) -> pa.Table:
    return pa.table({"request_id": [f"r{i}" for i in range(n)], "v": list(range(n))})


# -- the storage --------------------------------------------------------------------------


def test_local_parts_by_day_and_temp_files_never_read(tmp_path: Path) -> None:
    arc = open_archive(tmp_path, None)
    assert isinstance(arc, LocalArchive) and arc.url == str(tmp_path.resolve() / "archive")
    first = arc.write(_table(2), "dep", DAY1)
    arc.write(_table(3), "dep", DAY2)
    arc.write(_table(1), "dep/scores", DAY1)  # another dataset: not among the inputs
    # A writer that died between writing its temp file and renaming it.
    (Path(first).parent / ".tmp-part-x.parquet").write_bytes(b"half a file")
    parts = arc.parts("dep")
    assert len(parts) == 2 and "date=2023-11-14" in parts[0] and "date=2023-11-15" in parts[1]
    assert arc.parts("dep", ["2023-11-15"]) == parts[1:]
    assert arc.read_all(parts, ["v"]).column("v").to_pylist() == [0, 1, 0, 1, 2]
    assert arc.parts("nothing-here") == []


def test_object_store_parts_round_trip(s3: str) -> None:
    arc = open_archive(None, f"{s3}/archive/")
    assert isinstance(arc, ObjectArchive) and arc.url == f"{s3}/archive"
    arc.check()
    arc.write(_table(4), "dep/labels", DAY2)
    arc.write(_table(2), "dep/labels", DAY1)
    parts = arc.parts("dep/labels")
    assert [p.rsplit("/", 1)[1].startswith("part-") for p in parts] == [True, True]
    assert arc.read_all(parts).num_rows == 6
    assert arc.parts("dep/labels", ["2023-11-14"]) == parts[:1]
    assert arc.fs.ls(arc.root) == [f"{arc.root}/dep"]  # the start-up probe is gone


def test_explicit_location_beats_the_environment(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENDEZVOUS_ARCHIVE", str(tmp_path / "from-env"))
    assert open_archive(tmp_path).url == str(tmp_path / "from-env")
    assert open_archive(tmp_path, tmp_path / "given").url == str(tmp_path / "given")


def test_bad_archive_urls_are_one_clear_error(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"archive 'nope://x'.*s3://bucket/prefix"):
        open_archive(tmp_path, "nope://x")
    # As without the extra installed: fsspec finds no s3fs to import.
    monkeypatch.delitem(sys.modules["fsspec.registry"]._registry, "s3", raising=False)
    monkeypatch.setitem(sys.modules, "s3fs", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'rendezvous-ml\[s3\]'"):
        open_archive(tmp_path, "s3://bucket/prefix")


def test_an_unreachable_endpoint_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("s3fs")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
        monkeypatch.setenv(key, value)
    arc = open_archive(None, "s3://models/x")
    with pytest.raises(ConfigError, match=r"'s3://models/x' is not writable .*reachable"):
        arc.check()
    with pytest.raises(UnavailableError, match="cannot list the archive s3://models/x/dep"):
        arc.parts("dep")


def test_archive_parts_hold_every_field_of_their_records() -> None:
    """The scorekeeper's parts, built column by column, against the rows written out one
    by one: every field, an error's null outputs, a result without a chosen model, any
    label type."""
    from rendezvous.roles.scorekeeper import KINDS, RESULTS_SCHEMA, SCORES_SCHEMA

    scores = [messages.Score(request_id=f"r{i}", deployment="d", model=f"m{i % 2}@1",
                             outputs={"predictions": [i], "probabilities": [[0.5, 0.5]]}
                             if i % 3 else {}, started_ns=i, finished_ns=i + 5,
                             error="boom" if i % 3 == 0 else None, worker=f"w{i}",
                             held_ns=i * 1000)
              for i in range(7)]
    results = [messages.Result(request_id=f"r{i}", deployment="d", model="m0@1" if i else None,
                               reason=messages.Reason.PREFERRED if i else messages.Reason.SLA_MISS,
                               policy_version=3, received_ns=i, responded_ns=i + 9,
                               models={"m0@1": messages.ModelOutcome(
                                   status=messages.Status.ON_TIME, latency_ms=1.5)})
               for i in range(3)]
    labels = [messages.Feedback(request_id=f"r{i}", deployment="d", labels=label, at_ns=i)
              for i, label in enumerate([[1], ["cat", None], [0.5, True]])]
    records = {"scores": [messages.encode(scores[:4]), messages.encode(scores[4:])],
               "results": [messages.encode(r) for r in results],
               "feedback": [messages.encode(fb) for fb in labels]}
    expected = {
        "scores": pa.Table.from_pylist([
            {"request_id": x.request_id, "model": x.model,
             "outputs": messages.encode(x.outputs), "error": x.error,
             "started_ns": x.started_ns, "finished_ns": x.finished_ns, "worker": x.worker,
             "held_ns": x.held_ns}
            for x in scores], schema=SCORES_SCHEMA),
        "results": pa.Table.from_pylist([
            {"request_id": r.request_id, "chosen": r.model, "reason": r.reason.value,
             "policy_version": r.policy_version, "received_ns": r.received_ns,
             "responded_ns": r.responded_ns,
             "models": json.dumps({"m0@1": {"status": "on_time", "latency_ms": 1.5}},
                                  separators=(",", ":"))}
            for r in results], schema=RESULTS_SCHEMA),
        "feedback": pa.Table.from_pylist([
            {"request_id": fb.request_id, "label": json.dumps(fb.labels, separators=(",", ":")),
             "at_ns": fb.at_ns} for fb in labels], schema=LABELS_SCHEMA),
    }
    for topic, kind in KINDS.items():
        items = [item for data in records[topic] for item in kind.items(data)]
        assert kind.table(items).equals(expected[topic]), topic


def test_the_first_label_of_each_request_wins(tmp_path: Path) -> None:
    arc = open_archive(tmp_path)

    def labels(*rows: tuple[str, Any, int]) -> pa.Table:
        return pa.table({"request_id": [r[0] for r in rows],
                         "label": [json.dumps(r[1]) for r in rows],
                         "at_ns": [r[2] for r in rows]}, schema=LABELS_SCHEMA)

    arc.write(labels(("a", ["late"], DAY2), ("b", [2.5], DAY2)), "dep/labels", DAY2)
    # Re-archived after a crash (same rows twice), in a part of the day before.
    arc.write(labels(("a", ["first"], DAY1), ("a", ["first"], DAY1), ("c", [True], DAY1)),
              "dep/labels", DAY1)
    assert read_labels(tmp_path, "dep") == {"a": ["first"], "b": [2.5], "c": [True]}
    assert read_labels(tmp_path, "dep", ["c", "zz"]) == {"c": [True]}
    assert read_labels(tmp_path, "other") == {}
    older = archived_feedback(tmp_path, "dep", skip={"b"})
    assert [(f.request_id, f.labels, f.at_ns) for f in older] == [
        ("a", ["first"], DAY1), ("c", [True], DAY1)]


def _policy(registry: Registry) -> dict[str, str]:
    refs = {"champion": register_callable(registry, "champ", "tests.models:make_constant",
                                          value=1.0),
            "challenger": register_callable(registry, "chal", "tests.models:doubler")}
    registry.apply_policy("dep", Policy(deadline_ms=400, models=[
        ModelSpec(refs["champion"], Role.CHAMPION, wait_ms=50, isolation=Isolation.THREAD),
        ModelSpec(refs["challenger"], Role.CHALLENGER, isolation=Isolation.THREAD)]))
    return refs


async def test_a_bucket_that_cannot_be_written_stops_start_up(
        registry: Registry, s3: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _policy(registry)
    with pytest.raises(ConfigError, match=r"'s3://no-such-bucket/x' is not writable.*bucket"):
        async with running(["dep"], home=registry.home, port=0,
                           archive="s3://no-such-bucket/x"):
            pytest.fail("served with an archive it cannot write")
    # `serve --archive` hands the location to its child processes through the environment:
    # restore it after this test.
    monkeypatch.setenv("RENDEZVOUS_ARCHIVE", "")
    code, text = await asyncio.to_thread(
        _cli, capsys, monkeypatch, registry.home, "serve", "dep", "--port", "0",
        "--archive", "s3://no-such-bucket/x")
    assert code == 1 and "not writable" in text and "Traceback" not in text


# -- end to end on S3 ---------------------------------------------------------------------


async def _read_topic(home: Path, topic: str) -> list[bytes]:
    stream = await open_stream("embedded", home=home, read_only=True)
    try:
        return [r.data for r in await stream.read(topic, from_offset=1, limit=100_000)]
    finally:
        await stream.close()


async def _until(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, "the archive did not catch up"
        await asyncio.sleep(0.2)


async def test_serving_with_the_archive_on_s3_then_exporting_it(
        registry: Registry, serve: Serve, s3: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    refs = _policy(registry)
    url = f"{s3}/evidence"
    sent: dict[str, list[tuple[float, float]]] = {}
    labels: dict[str, Any] = {}
    async with serve("dep", archive=url) as client:
        for i in range(12):
            rows = [(float(i), j / 3) for j in range(1 + i % 2)]
            r = await client.post("/v1/deployments/dep/predict",
                                  json=[{"x": x, "y": y} for x, y in rows])
            assert r.status_code == 200, r.text
            sent[r.json()["request_id"]] = rows
        ids = list(sent)
        # Labels of any JSON type survive; the first label of a request wins.
        kinds: list[Any] = [1, "cat", 2.5, True]
        labels = {rid: [kinds[i % 4]] * len(sent[rid]) for i, rid in enumerate(ids[:8])}
        r = await client.post("/v1/deployments/dep/feedback", json={"feedback": [
            {"request_id": rid, "labels": lab} for rid, lab in labels.items()]})
        assert r.status_code == 202 and r.json()["accepted"] == 8, r.text
        r = await client.post("/v1/deployments/dep/feedback",
                              json={"request_id": ids[0], "labels": [99]})
        assert r.status_code == 202, r.text

        def archived() -> bool:
            return (len(read_labels(None, "dep", archive=url)) == 8
                    and read_scores(None, "dep", archive=url).num_rows == 24)

        await _until(archived)
    assert not (registry.home / "archive").exists(), "wrote to the local archive"

    assert read_labels(registry.home, "dep", ids[:2], archive=url) == {
        ids[0]: labels[ids[0]], ids[1]: labels[ids[1]]}
    monkeypatch.setenv("RENDEZVOUS_ARCHIVE", url)  # the setting, as the CLI reads it
    assert read_labels(registry.home, "dep") == labels
    monkeypatch.delenv("RENDEZVOUS_ARCHIVE")

    digests: dict[str, set[str]] = defaultdict(set)
    for b in await _read_topic(registry.home, "dep.scores"):
        for s in messages.scores_decoder.decode(b):
            digests[s.request_id].add(s.input_digest)
    assert {rid: len(d) for rid, d in digests.items()} == dict.fromkeys(sent, 1)

    exports = {kind: tmp_path / f"{kind}.parquet" for kind in ("inputs", "scores", "labels")}
    for kind, out in exports.items():
        flag = [] if kind == "inputs" else [f"--{kind}"]
        code, text = await asyncio.to_thread(
            _cli, capsys, monkeypatch, registry.home, "archive", "export", "dep", "--out",
            str(out), "--archive", url, *flag)
        assert code == 0, text
    inputs = pq.read_table(exports["inputs"]).to_pylist()
    assert len(inputs) == sum(len(rows) for rows in sent.values())
    for row in inputs:
        assert (row["x"], row["y"]) == sent[row["request_id"]][row["row"]]
        assert {row["input_digest"]} == digests[row["request_id"]]
    scores = pq.read_table(exports["scores"]).to_pylist()
    assert {(s["request_id"], s["model"]) for s in scores} == {
        (rid, ref) for rid in sent for ref in refs.values()}
    assert sum(s["chosen"] for s in scores) == len(sent)
    exported = pq.read_table(exports["labels"]).to_pylist()
    assert {r["request_id"]: json.loads(r["label"]) for r in exported} == labels

    # Analytics rebuilt with none of the stream log replayed: labels and scores from S3.
    a = await analytics_from_log(registry.home, "dep", registry, limit=0, archive=url)
    assert a.feedback["joined"] + a.feedback["invalid"] == 8  # "cat" is no regression label
    assert a.feedback["joined"] >= 6 and a.feedback["unknown"] == a.feedback["duplicate"] == 0

    code, text = await asyncio.to_thread(
        _cli, capsys, monkeypatch, registry.home, "archive", "export", "dep", "--out",
        str(tmp_path / "x.parquet"), "--scores", "--labels")
    assert code == 1 and "give one" in text

    # Replay reads the inputs back from S3 and writes its scores beside them, resumably.
    # (--archive sets RENDEZVOUS_ARCHIVE for the processes it starts: undone after the test.)
    monkeypatch.setenv("RENDEZVOUS_ARCHIVE", "")
    code, text = await asyncio.to_thread(
        _cli, capsys, monkeypatch, registry.home, "replay", "dep", "--model",
        refs["challenger"], "--archive", url, "--json")
    assert code == 0, text
    doc = json.loads(text.strip().splitlines()[-1])
    assert doc["scored_now"] == len(sent) and doc["errors_now"] == 0, doc
    assert doc["digests"] == {"checked": len(sent), "matched": len(sent)}, doc
    assert doc["output"].startswith(f"{url}/dep/replays/"), doc
    code, text = await asyncio.to_thread(
        _cli, capsys, monkeypatch, registry.home, "replay", "dep", "--model",
        refs["challenger"], "--archive", url, "--json")
    again = json.loads(text.strip().splitlines()[-1])
    assert code == 0 and again["scored_now"] == 0 and again["already_scored"] == len(sent)
