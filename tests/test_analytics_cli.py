"""`rendezvous compare|drift|alarms|feedback|status|archive export --scores`, with a running
server and without one (rebuilt from the streams and the archive)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rendezvous import Registry
from tests.test_analytics_e2e import classifiers, send, training, until
from tests.test_cli import run

Serve = Any


@pytest.fixture(autouse=True)
def short_feedback_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENDEZVOUS_FEEDBACK_WAIT_S", "0.5")


async def test_analytics_commands_online_and_offline(
        registry: Registry, serve: Serve, home: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    async def cli(*args: str) -> tuple[int, str]:
        # In a thread: the CLI runs its own event loop, and calls this server synchronously.
        return await asyncio.to_thread(run, capsys, monkeypatch, home, *args)

    refs = classifiers(registry)
    x, y = training(seed=4, n=60)
    async with serve("dep") as client:
        ids = await send(client, x)
        labels = [{"request_id": r, "label": int(v)} for r, v in zip(ids, y, strict=True)]
        csv_file = tmp_path / "labels.csv"
        csv_file.write_text("request_id,label\n" + "".join(
            f"{row['request_id']},{row['label']}\n" for row in labels[:20]))
        code, text = await cli("feedback", "dep", str(csv_file))
        assert code == 0 and "20 labels accepted" in text, text

        async def joined() -> bool:
            doc = (await client.get("/v1/deployments/dep/accuracy")).json()
            return bool(doc["feedback"]["joined"] == 20)

        await until(joined)

        async def every_score_compared() -> bool:  # the documents lag the stream a little
            doc = (await client.get("/v1/deployments/dep/compare")).json()
            return bool(doc["models"][refs["challenger"]]["rows"] == 60)

        await until(every_score_compared)
        code, text = await cli("compare", "dep", "--json")
        online: dict[str, Any] = json.loads(text)
        http = (await client.get("/v1/deployments/dep/compare")).json()
        assert code == 0 and online["models"] == http["models"]
    # Offline: the same numbers from the streams and the archive.
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in labels[20:40]))
    code, text = await cli("feedback", "dep", str(jsonl))
    assert code == 0 and "20 labels accepted" in text, text
    parquet = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": ["x"], "label": [1]}), parquet)
    code, text = await cli("feedback", "dep", str(parquet))
    assert code == 1 and "request_id" in text
    code, text = await cli("compare", "dep", "--json")
    offline = json.loads(text)
    assert offline["models"][refs["challenger"]]["rows"] == 60
    assert offline["models"][refs["challenger"]]["agreement"] == pytest.approx(
        online["models"][refs["challenger"]]["agreement"])
    code, text = await cli("status", "dep", "--json")
    status = json.loads(text)
    assert code == 0 and status["feedback"]["joined"] == 40
    assert 0.5 < status["models"][refs["champion"]]["accuracy"] <= 1
    for cmd in ("compare", "drift", "alarms", "status"):
        code, text = await cli(cmd, "dep")
        assert code == 0, text
    code, text = await cli("status", "dep")
    assert "accuracy" in text and "agreement" in text
    code, text = await cli("drift", "dep", "--json")
    assert json.loads(text)["column_drift"]["rows_seen"] == 60
    code, text = await cli("archive", "export", "dep", "--scores",
                     "--out", str(tmp_path / "s.parquet"))
    assert code == 0 and "wrote 180 rows" in text
    code, text = await cli("compare", "nope")
    assert code == 1 and "nope" in text


async def test_feedback_through_httpx_client_is_rejected_cleanly(registry: Registry,
                                                                  serve: Serve) -> None:
    classifiers(registry)
    async with serve("dep") as client:
        for body in (b"[1, 2]", b'{"feedback": 3}', b"\xff"):
            r = await client.post("/v1/deployments/dep/feedback", content=body)
            assert r.status_code == 400, r.text
        r = await client.get("/dashboard/nope.js")
        assert r.status_code == 404
        r = await client.get("/dashboard")
        assert r.status_code == 200 and b"uPlot" in r.content
        assert isinstance(client, httpx.AsyncClient)
